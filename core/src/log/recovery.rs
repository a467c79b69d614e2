//! Recovery: opening the log checks its manifest against the segments found, reads every
//! segment's commit groups, cuts a torn tail and removes leftovers (the rules are in the
//! module above); `verify` runs the same code without changing anything.

use super::format::{decode_group_header, decode_records, decode_segment_header};
use super::*;

impl<D: LogDisk> Log<D> {
    /// Opens the log in `disk`, recovering every intact record. A torn tail is truncated;
    /// corruption anywhere else is an error.
    pub async fn open(disk: D, shard: u32) -> Result<(Log<D>, Recovered), LogError> {
        Log::open_with_segment_size(disk, shard, SEGMENT_SIZE_TARGET).await
    }

    /// Like [`Log::open`], with segments of `segment_size_target` bytes.
    pub async fn open_with_segment_size(
        disk: D,
        shard: u32,
        segment_size_target: u64,
    ) -> Result<(Log<D>, Recovered), LogError> {
        Log::recover(disk, shard, segment_size_target, false).await
    }

    /// Checks the log as [`Log::open`] would recover it, changing nothing: an error is what
    /// would stop start-up; `truncated` and `removed` in what it returns are what start-up
    /// would cut off or delete.
    pub async fn verify(disk: D, shard: u32) -> Result<Recovered, LogError> {
        let (_, recovered) = Log::recover(disk, shard, SEGMENT_SIZE_TARGET, true).await?;
        Ok(recovered)
    }

    async fn recover(
        disk: D,
        shard: u32,
        segment_size_target: u64,
        dry_run: bool,
    ) -> Result<(Log<D>, Recovered), LogError> {
        assert!(
            segment_size_target.is_multiple_of(LOG_BLOCK_SIZE as u64) && segment_size_target > 0
        );
        let listing = disk
            .list()
            .await
            .map_err(|e| LogError::io("list", disk.path_of(""), e))?;
        let has_manifest = listing.iter().any(|name| name == MANIFEST_NAME);
        let mut names: Vec<(u64, String)> = listing
            .into_iter()
            .filter_map(|name| parse_segment_name(&name).map(|seq| (seq, name)))
            .collect();
        names.sort();
        let mut log = Log {
            disk,
            shard,
            segments: Vec::new(),
            active: None,
            next_sequence: 1,
            stats: LogStats::default(),
            segment_size_target,
            in_flight: VecDeque::new(),
            synced_at_open: None,
            manifest: None,
            manifest_file: None,
            dry_run,
            read_cursor: None,
            archive: None,
        };
        let mut recovered = Recovered::default();
        if has_manifest {
            log.read_manifest().await?;
        }
        let listed: Vec<Listed> = log
            .manifest
            .as_ref()
            .map_or_else(Vec::new, |m| m.segments.clone());
        if log.manifest.is_some() {
            names = log
                .check_against_manifest(names, &listed, &mut recovered)
                .await?;
        } else if !names.is_empty() {
            recovered.manifest_created = true;
        }
        let count = names.len();
        for (i, (first_sequence, name)) in names.into_iter().enumerate() {
            let last = i + 1 == count;
            let made = listed
                .iter()
                .find(|l| l.first_sequence == first_sequence)
                .map(|l| l.size);
            log.recover_segment(&name, first_sequence, last, made, &mut recovered)
                .await?;
        }
        recovered.segments = log.segments.len();
        recovered.last_index = log.segments.iter().map(|s| s.last_index).max().unwrap_or(0);
        let listing_now: Vec<Listed> = log.listing();
        if !log.dry_run && !log.segments.is_empty() && listing_now != listed {
            log.write_manifest(listing_now).await?;
        }
        log.refresh_size_stats();
        log.synced_at_open = log.disk.synced_writes_completed();
        Ok((log, recovered))
    }

    /// Reads the manifest. A file never written (all zeros: a crash while it was first
    /// created) counts as none; one with no valid slot is damage.
    async fn read_manifest(&mut self) -> Result<(), LogError> {
        let (file, size, path) = self.open_existing(MANIFEST_NAME).await?;
        let bytes = file
            .read_at(0, (size as usize).min(2 * SLOT_SIZE))
            .await
            .map_err(|e| LogError::io("read", path.clone(), e))?;
        if bytes.iter().all(|&b| b == 0) {
            self.manifest_file = Some(file);
            return Ok(());
        }
        let manifest = Manifest::decode_file(&bytes).map_err(|detail| LogError::Damaged {
            path: path.clone(),
            detail: format!(
                "the log's manifest is unreadable ({detail}): which segments the log should \
                 hold is unknown"
            ),
        })?;
        if manifest.shard != self.shard {
            return Err(LogError::Damaged {
                path,
                detail: format!(
                    "the manifest belongs to shard {}, not {}",
                    manifest.shard, self.shard
                ),
            });
        }
        self.manifest = Some(manifest);
        self.manifest_file = Some(file);
        Ok(())
    }

    /// Holds the segment files found against the manifest's list: a listed segment that is
    /// missing is damage; an unlisted one older than the listed ones is a leftover of a trim
    /// (the manifest dropped it before it was deleted), and one newer is a leftover of a
    /// roll-over cut short (created, never listed, so never written to): both are removed.
    /// Returns the segments to recover.
    async fn check_against_manifest(
        &mut self,
        names: Vec<(u64, String)>,
        listed: &[Listed],
        recovered: &mut Recovered,
    ) -> Result<Vec<(u64, String)>, LogError> {
        for l in listed {
            if !names.iter().any(|(seq, _)| *seq == l.first_sequence) {
                let name = segment_name(l.first_sequence);
                return Err(LogError::Damaged {
                    path: self.disk.path_of(&name),
                    detail: format!(
                        "this log segment is missing (log.manifest lists it): the commit groups \
                         from {} on that it held, writes that were acknowledged, would be lost",
                        l.first_sequence
                    ),
                });
            }
        }
        let (first, last) = match (listed.first(), listed.last()) {
            (Some(first), Some(last)) => (first.first_sequence, last.first_sequence),
            _ => (u64::MAX, 0),
        };
        let mut keep = Vec::with_capacity(names.len());
        for (seq, name) in names {
            if listed.iter().any(|l| l.first_sequence == seq) {
                keep.push((seq, name));
                continue;
            }
            let path = self.disk.path_of(&name);
            if listed.is_empty() || seq > last {
                // Never listed, so never given a group: it must hold nothing but its header.
                let (file, size, _) = self.open_existing(&name).await?;
                let bytes = file
                    .read_at(0, size as usize)
                    .await
                    .map_err(|e| LogError::io("read", path.clone(), e))?;
                if !bytes.iter().skip(SEGMENT_HEADER_SIZE).all(|&b| b == 0) {
                    return Err(LogError::Damaged {
                        path,
                        detail: "this segment holds data but log.manifest does not list it".into(),
                    });
                }
            } else if seq > first {
                return Err(LogError::Damaged {
                    path,
                    detail: "this segment lies between segments log.manifest lists, \
                             but is not listed itself"
                        .into(),
                });
            }
            self.remove_file(&name).await?;
            recovered.removed.push(path);
        }
        Ok(keep)
    }

    /// Opens an existing file of the log's directory: the file, its size and its path.
    pub(super) async fn open_existing(
        &self,
        name: &str,
    ) -> Result<(D::File, u64, String), LogError> {
        let path = self.disk.path_of(name);
        let file = self
            .disk
            .open(name, false)
            .await
            .map_err(|e| LogError::io("open", path.clone(), e))?;
        let size = file
            .size()
            .await
            .map_err(|e| LogError::io("stat", path.clone(), e))?;
        Ok((file, size, path))
    }

    /// Removes `name` and makes that durable (when verifying: nothing).
    async fn remove_file(&mut self, name: &str) -> Result<(), LogError> {
        if self.dry_run {
            return Ok(());
        }
        let path = self.disk.path_of(name);
        self.disk
            .remove(name)
            .await
            .map_err(|e| LogError::io("remove", path.clone(), e))?;
        self.disk
            .sync_dir()
            .await
            .map_err(|e| LogError::io("sync dir", path, e))
    }

    /// Recovers one segment; `made`: the size the manifest says it was made to (None: not
    /// listed, as in a log an older kvs wrote).
    async fn recover_segment(
        &mut self,
        name: &str,
        first_sequence: u64,
        last: bool,
        made: Option<u64>,
        recovered: &mut Recovered,
    ) -> Result<(), LogError> {
        let (file, size, path) = self.open_existing(name).await?;
        if let Some(made) = made.filter(|&made| size < made) {
            return Err(LogError::Damaged {
                path,
                detail: format!(
                    "this log segment is {size} bytes, but it was made {made} bytes long: it \
                     has been cut short, and the acknowledged writes in the part cut off would \
                     be lost"
                ),
            });
        }
        let bytes = file
            .read_at(0, size as usize)
            .await
            .map_err(|e| LogError::io("read", path.clone(), e))?;
        let corrupt = |offset: u64, detail: String| LogError::Corrupt {
            path: path.clone(),
            offset,
            detail,
        };

        let header = match decode_segment_header(&bytes[..bytes.len().min(SEGMENT_HEADER_SIZE)]) {
            Ok(header) => header,
            // A crash while creating the newest segment leaves it without a durable header
            // and without any group (groups are written only after the header is synced):
            // nothing acknowledged is in it.
            // (A listed segment had its header synced before it was listed.)
            Err(_)
                if last
                    && made.is_none()
                    && bytes.iter().skip(SEGMENT_HEADER_SIZE).all(|&b| b == 0) =>
            {
                drop(file);
                self.remove_file(name).await?;
                recovered.removed.push(path);
                return Ok(());
            }
            Err(detail) => return Err(corrupt(0, detail)),
        };
        if header.shard != self.shard {
            return Err(corrupt(
                0,
                format!(
                    "segment belongs to shard {}, not {}",
                    header.shard, self.shard
                ),
            ));
        }
        if header.first_sequence != first_sequence
            || !self.segments.is_empty() && first_sequence != self.next_sequence
        {
            return Err(corrupt(
                0,
                format!(
                    "segment starts at group {first_sequence}, expected {}",
                    self.next_sequence
                ),
            ));
        }
        self.next_sequence = first_sequence;

        let mut at = SEGMENT_HEADER_SIZE;
        let mut last_index = 0;
        while at < bytes.len() {
            match self.read_group(&bytes, at) {
                Ok((records, next)) => {
                    last_index = records
                        .iter()
                        .filter(|r| r.kind == RecordKind::Entry)
                        .map(|r| r.index)
                        .fold(last_index, u64::max);
                    recovered.records.extend(records);
                    self.next_sequence += 1;
                    at = next;
                }
                Err(detail) => {
                    // A clean end of the log looks like an all-zero group header.
                    let clean_end = bytes[at..].iter().take(GROUP_HEADER_SIZE).all(|&b| b == 0);
                    if let Some((later, sequence)) =
                        self.find_durable_later_group(&bytes, at, header.window)
                    {
                        return Err(corrupt(
                            at as u64,
                            format!(
                                "{detail}; a valid group {sequence} follows at offset {later}, \
                                 begun after this one was durable (window: {} groups in flight)",
                                header.window
                            ),
                        ));
                    }
                    if !last && !clean_end {
                        return Err(corrupt(at as u64, format!("{detail} in a closed segment")));
                    }
                    // A torn write may also leave blocks after an all-zero header (its first
                    // block never landed while later ones did): zero them too, or a later
                    // group could stop short of them and leave them to look like damage.
                    if last && !bytes[at..].iter().all(|&b| b == 0) {
                        recovered.truncated = Some((path.clone(), at as u64));
                        if self.dry_run {
                            break;
                        }
                        // Cut the torn group off, then restore the zeroed space after it.
                        file.truncate(at as u64)
                            .await
                            .map_err(|e| LogError::io("truncate", path.clone(), e))?;
                        preallocate(&file, at as u64, size.max(self.segment_size_target), &path)
                            .await?;
                        file.sync()
                            .await
                            .map_err(|e| LogError::io("fdatasync", path.clone(), e))?;
                    }
                    break;
                }
            }
        }
        let end = (at as u64).min(size).max(SEGMENT_HEADER_SIZE as u64);
        self.segments.push(Segment {
            name: name.to_string(),
            first_sequence,
            made: made.unwrap_or(size),
            size: end,
            last_index,
        });
        if last {
            self.active = Some(Active {
                file: Rc::new(file),
                name: name.to_string(),
                end,
                window: header.window,
            });
        }
        Ok(())
    }

    /// Reads the group at `at`; returns its records and where the next group starts.
    fn read_group(&self, bytes: &[u8], at: usize) -> Result<(Vec<OwnedRecord>, usize), String> {
        let header =
            decode_group_header(&bytes[at..]).ok_or_else(|| "no valid group header".to_string())?;
        if header.sequence != self.next_sequence {
            return Err(format!(
                "group sequence {} where {} was expected",
                header.sequence, self.next_sequence
            ));
        }
        let records_start = at + GROUP_HEADER_SIZE;
        let records_end = records_start
            .saturating_add(header.records_len)
            .min(bytes.len());
        let records = decode_records(&header, &bytes[records_start..records_end]).map_err(
            |(offset, detail)| format!("{detail} (record at offset {})", records_start + offset),
        )?;
        Ok((records, at + header.size_on_disk()))
    }

    /// The offset and sequence of a checksum-valid group after `at` that must have been
    /// written only after the group expected at `at` (sequence `next_sequence`) was durable:
    /// its sequence is `next_sequence + window` or later (or it repeats `next_sequence`), or
    /// its header says every group up to `next_sequence` was durable when it was begun (an
    /// idle log writes one group at a time, so this catches damage to any of its last
    /// groups). Other valid groups after it were in flight with the damaged one: a torn tail.
    fn find_durable_later_group(
        &self,
        bytes: &[u8],
        at: usize,
        window: u32,
    ) -> Option<(usize, u64)> {
        let mut block = align_up(at + 1);
        while block + GROUP_HEADER_SIZE <= bytes.len() {
            if let Some(header) = decode_group_header(&bytes[block..]) {
                let records_start = block + GROUP_HEADER_SIZE;
                let in_window = header.sequence > self.next_sequence
                    && header.sequence < self.next_sequence + u64::from(window)
                    && header.durable_through() < self.next_sequence;
                if header.sequence >= self.next_sequence
                    && !in_window
                    && records_start + header.records_len <= bytes.len()
                    && decode_records(
                        &header,
                        &bytes[records_start..records_start + header.records_len],
                    )
                    .is_ok()
                {
                    return Some((block, header.sequence));
                }
            }
            block += LOG_BLOCK_SIZE;
        }
        None
    }
}
