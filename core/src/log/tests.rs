//! Tests of the log on the simulated disk: replay, torn tails, corruption, faults, crashes.

use futures_lite::future::block_on;

use super::format::{OwnedRecord, Record, RecordKind};
use super::sim::{FaultOn, SimDisk, SimRng};
use super::{segment_name, Log, LogError};

fn entry(index: u64, payload: &[u8]) -> Record<'_> {
    Record {
        kind: RecordKind::Entry,
        entry_type: 0,
        index,
        term: 1,
        payload,
    }
}

fn payload(index: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (index as usize * 31 + i) as u8).collect()
}

/// Opens with small segments, so tests stay small.
fn open(disk: &SimDisk) -> Result<(Log<SimDisk>, super::Recovered), LogError> {
    block_on(Log::open_with_segment_size(disk.clone(), 0, 256 * 1024))
}

fn indexes(records: &[OwnedRecord]) -> Vec<u64> {
    records.iter().map(|r| r.index).collect()
}

/// Appends groups of `per_group` entries with indexes `first..first + groups * per_group`.
fn append_groups(log: &mut Log<SimDisk>, first: u64, groups: u64, per_group: u64, len: usize) {
    for g in 0..groups {
        let payloads: Vec<_> = (0..per_group)
            .map(|i| payload(first + g * per_group + i, len))
            .collect();
        let records: Vec<_> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| entry(first + g * per_group + i as u64, p))
            .collect();
        block_on(log.append(&records)).unwrap();
    }
}

#[test]
fn append_then_replay() {
    let disk = SimDisk::new();
    let (mut log, recovered) = open(&disk).unwrap();
    assert!(recovered.records.is_empty());
    append_groups(&mut log, 1, 10, 3, 100);
    assert_eq!(log.stats().groups, 10);
    drop(log);
    let (_, recovered) = open(&disk).unwrap();
    assert_eq!(indexes(&recovered.records), (1..=30).collect::<Vec<_>>());
    assert_eq!(recovered.records[4].payload, payload(5, 100));
    assert!(recovered.truncated.is_none());
}

#[test]
fn one_group_is_one_write_and_one_sync() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk).unwrap();
    append_groups(&mut log, 1, 1, 1, 10); // creates the segment too
    let (writes, syncs) = (disk.writes(), disk.syncs());
    append_groups(&mut log, 2, 1, 1000, 50);
    assert_eq!(disk.writes() - writes, 1);
    assert_eq!(disk.syncs() - syncs, 1);
}

#[test]
fn replay_continues_after_reopen_and_across_segments() {
    let disk = SimDisk::new();
    let (mut log, _) = block_on(Log::open_with_segment_size(disk.clone(), 0, 64 * 1024)).unwrap();
    append_groups(&mut log, 1, 40, 2, 3000);
    assert!(
        log.stats().segments > 3,
        "segments: {}",
        log.stats().segments
    );
    drop(log);
    let (mut log, recovered) = open(&disk).unwrap();
    assert_eq!(indexes(&recovered.records), (1..=80).collect::<Vec<_>>());
    append_groups(&mut log, 81, 5, 1, 10);
    drop(log);
    let (_, recovered) = open(&disk).unwrap();
    assert_eq!(recovered.records.len(), 85);
}

#[test]
fn torn_tail_is_truncated_and_reported() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk).unwrap();
    append_groups(&mut log, 1, 5, 1, 5000); // each group spans two blocks
    drop(log);
    let name = segment_name(1);
    let last_group = 4096 + 4 * 8192;
    // The last group's second block never reached the disk.
    disk.with_file(&name, |bytes| {
        bytes[last_group + 4096..last_group + 8192].fill(0)
    });
    let (mut log, recovered) = open(&disk).unwrap();
    assert_eq!(indexes(&recovered.records), vec![1, 2, 3, 4]);
    let (path, offset) = recovered.truncated.expect("the tear is reported");
    assert!(path.ends_with(&name));
    assert_eq!(offset, last_group as u64);
    append_groups(&mut log, 5, 1, 1, 10);
    drop(log);
    let (_, recovered) = open(&disk).unwrap();
    assert_eq!(indexes(&recovered.records), vec![1, 2, 3, 4, 5]);
}

#[test]
fn corruption_before_the_tail_is_an_error_naming_file_and_offset() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk).unwrap();
    append_groups(&mut log, 1, 3, 1, 100);
    drop(log);
    disk.with_file(&segment_name(1), |bytes| bytes[4096 + 40] ^= 0xFF);
    match open(&disk) {
        Err(LogError::Corrupt {
            path,
            offset,
            detail,
        }) => {
            assert!(path.ends_with(&segment_name(1)), "{path}");
            assert_eq!(offset, 4096);
            // Group 2 was begun after group 1 was durable (its header says so).
            assert!(detail.contains("valid group 2 follows"), "{detail}");
        }
        other => panic!(
            "expected corruption, got {:?}",
            other.map(|(_, r)| r.records.len())
        ),
    }
}

/// Groups in flight with a damaged one may have landed without it: they were never
/// acknowledged (acknowledgements follow log order), so they are a torn tail, not corruption.
#[test]
fn valid_groups_within_the_window_after_a_tear_are_a_torn_tail() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk).unwrap();
    append_groups(&mut log, 1, 2, 1, 100);
    // Groups 3, 4 and 5 in flight at once; 4 and 5 land, 3 never does.
    let payloads: Vec<Vec<u8>> = (3..=5).map(|i| payload(i, 100)).collect();
    let writes: Vec<_> = (3..=5u64)
        .map(|i| {
            let records = [entry(i, &payloads[(i - 3) as usize])];
            log.begin_append(&records).unwrap().expect("a group")
        })
        .collect();
    assert!(
        log.has_room_for_group(),
        "a window of 4 has room for a fourth"
    );
    let mut writes = writes.into_iter();
    let third = writes.next().unwrap();
    for write in writes {
        assert!(block_on(write.write()).result.is_ok());
    }
    drop(third);
    drop(log);
    disk.crash(None);
    let (mut log, recovered) = open(&disk).unwrap();
    assert_eq!(indexes(&recovered.records), vec![1, 2]);
    let (_, offset) = recovered.truncated.expect("the tear is reported");
    assert_eq!(offset, 4096 + 2 * 4096);
    // The log goes on from group 3, and the zeroed space after it reads as a clean end.
    append_groups(&mut log, 3, 1, 1, 10);
    drop(log);
    let (_, recovered) = open(&disk).unwrap();
    assert_eq!(indexes(&recovered.records), vec![1, 2, 3]);
    assert!(recovered.truncated.is_none());
}

#[test]
fn groups_are_reported_durable_in_log_order_and_the_window_is_kept() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk).unwrap();
    let payloads: Vec<Vec<u8>> = (1..=4).map(|i| payload(i, 10)).collect();
    let mut writes = Vec::new();
    for i in 1..=4u64 {
        assert!(log.has_room_for_group());
        let records = [entry(i, &payloads[(i - 1) as usize])];
        block_on(log.make_room()).unwrap();
        writes.push(log.begin_append(&records).unwrap().unwrap());
    }
    assert!(
        !log.has_room_for_group(),
        "four groups fill a window of four"
    );
    assert_eq!(log.groups_in_flight(), 4);
    let written: Vec<_> = writes.into_iter().map(|w| block_on(w.write())).collect();
    for w in written {
        log.group_written(w).unwrap();
    }
    assert_eq!(log.groups_in_flight(), 0);
    assert_eq!(log.stats().groups, 4);
    drop(log);
    let (_, recovered) = open(&disk).unwrap();
    assert_eq!(indexes(&recovered.records), vec![1, 2, 3, 4]);
}

#[test]
#[should_panic(expected = "log order")]
fn a_group_reported_out_of_order_is_caught() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk).unwrap();
    block_on(log.make_room()).unwrap();
    let first = log.begin_append(&[entry(1, b"a")]).unwrap().unwrap();
    let second = log.begin_append(&[entry(2, b"b")]).unwrap().unwrap();
    drop(first);
    let _ = log.group_written(block_on(second.write()));
}

#[test]
fn corruption_in_a_closed_segment_is_an_error() {
    let disk = SimDisk::new();
    let (mut log, _) = block_on(Log::open_with_segment_size(disk.clone(), 0, 8192)).unwrap();
    append_groups(&mut log, 1, 6, 1, 100);
    drop(log);
    let names = disk.file_names();
    assert!(names.len() >= 2);
    // Damage the last group of the first segment: nothing follows it in that file.
    disk.with_file(&names[0], |bytes| {
        let at = bytes.len() - 4096 + 40;
        bytes[at] ^= 1;
    });
    assert!(matches!(open(&disk), Err(LogError::Corrupt { .. })));
}

#[test]
fn a_segment_torn_while_being_created_is_removed() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk).unwrap();
    append_groups(&mut log, 1, 3, 1, 100);
    drop(log);
    // The next segment's header never fully landed; its preallocated zeros did.
    let next = segment_name(4);
    block_on(async {
        use super::{LogDisk, LogFile};
        let file = disk.open(&next, true).await.unwrap();
        let mut block = file.alloc(64 * 1024);
        block.fill(0);
        block[0..6].copy_from_slice(b"KVSLOG");
        file.write_at(block, 0).await.unwrap();
        file.sync().await.unwrap();
        disk.sync_dir().await.unwrap();
    });
    let (mut log, recovered) = open(&disk).unwrap();
    assert_eq!(indexes(&recovered.records), vec![1, 2, 3]);
    assert!(!disk.file_names().contains(&next));
    append_groups(&mut log, 4, 1, 1, 10);
    drop(log);
    assert_eq!(indexes(&open(&disk).unwrap().1.records), vec![1, 2, 3, 4]);
}

#[test]
fn disk_full_and_io_errors_are_typed() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk).unwrap();
    append_groups(&mut log, 1, 1, 1, 10);
    disk.fail_after(FaultOn::Write, 1, 28);
    let p = payload(2, 10);
    assert!(matches!(
        block_on(log.append(&[entry(2, &p)])),
        Err(LogError::DiskFull { .. })
    ));
    disk.fail_after(FaultOn::Sync, 1, 5);
    match block_on(log.append(&[entry(2, &p)])) {
        Err(LogError::Io { op, path, source }) => {
            assert_eq!(op, "write and fdatasync", "{path} {source}")
        }
        other => panic!("expected EIO, got {other:?}"),
    }
    drop(log);
    disk.crash(None);
    let (_, recovered) = open(&disk).unwrap();
    assert_eq!(indexes(&recovered.records), vec![1]);
}

/// Crash at every point of a random workload, with torn writes: recovery always yields every
/// acknowledged group, in order, and at most the one unacknowledged group after them.
#[test]
fn crash_recovery_loop_keeps_every_acknowledged_group() {
    for seed in 0..1000u64 {
        let mut rng = SimRng::new(seed);
        let disk = SimDisk::new();
        let mut acked: Vec<u64> = Vec::new();
        let mut next_index = 1u64;
        for _round in 0..4 {
            let (mut log, recovered) =
                block_on(Log::open_with_segment_size(disk.clone(), 0, 16 * 1024))
                    .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let got = indexes(&recovered.records);
            assert!(
                got.starts_with(&acked),
                "seed {seed}: lost acknowledged entries"
            );
            assert!(
                got.len() <= acked.len() + 4,
                "seed {seed}: more than one extra group"
            );
            // Entries that survived without an ack are now part of the log.
            acked = got;
            next_index = acked.last().map_or(1, |i| i + 1);
            let groups = rng.below(6);
            for _ in 0..groups {
                let n = 1 + rng.below(4);
                let payloads: Vec<_> = (0..n)
                    .map(|i| payload(next_index + i, rng.below(6000) as usize))
                    .collect();
                let records: Vec<_> = payloads
                    .iter()
                    .enumerate()
                    .map(|(i, p)| entry(next_index + i as u64, p))
                    .collect();
                block_on(log.append(&records)).unwrap();
                acked.extend(next_index..next_index + n);
                next_index += n;
            }
            // One more group whose sync fails: written, never acknowledged.
            let p = payload(next_index, rng.below(9000) as usize);
            disk.fail_after(FaultOn::Sync, 1, 5);
            assert!(block_on(log.append(&[entry(next_index, &p)])).is_err());
            drop(log);
            disk.crash(Some(&mut rng));
        }
        let _ = next_index;
    }
}

#[test]
fn segments_wholly_before_a_checkpoint_are_removed() {
    let disk = SimDisk::new();
    let (mut log, _) = block_on(Log::open_with_segment_size(disk.clone(), 0, 64 * 1024)).unwrap();
    append_groups(&mut log, 1, 40, 2, 3000);
    let segments = log.stats().segments;
    assert!(segments > 3);
    // Entry 1 is in the first segment, which also holds later ones: nothing goes.
    assert_eq!(block_on(log.remove_through(1)).unwrap(), 0);
    let removed = block_on(log.remove_through(50)).unwrap();
    assert!(removed >= 1);
    assert_eq!(log.stats().segments, segments - removed as u64);
    // Even a checkpoint past the end keeps the active segment.
    block_on(log.remove_through(1000)).unwrap();
    assert_eq!(log.stats().segments, 1);
    append_groups(&mut log, 81, 2, 1, 10);
    drop(log);
    disk.crash(None);
    let (_, recovered) = block_on(Log::open_with_segment_size(disk.clone(), 0, 64 * 1024)).unwrap();
    let first = recovered.records.first().unwrap().index;
    assert!(
        first > 50,
        "entries up to the checkpoint are gone: first is {first}"
    );
    assert_eq!(recovered.records.last().unwrap().index, 82);
}

/// A log written before the window existed (version 1 segments) is recovered with a window
/// of one group, and appended to one group at a time until its next segment.
#[test]
fn a_version_1_segment_is_read_and_kept_to_one_group_in_flight() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk).unwrap();
    append_groups(&mut log, 1, 3, 1, 100);
    drop(log);
    // Rewrite the header as the previous build wrote it: version 1, no window, CRC at 24.
    disk.with_file(&segment_name(1), |bytes| {
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[0..24]);
        bytes[24..28].copy_from_slice(&crc.to_le_bytes());
        bytes[28..32].fill(0);
    });
    let (mut log, recovered) = open(&disk).unwrap();
    assert_eq!(indexes(&recovered.records), vec![1, 2, 3]);
    block_on(log.make_room()).unwrap();
    let payload = payload(4, 10);
    let write = log.begin_append(&[entry(4, &payload)]).unwrap().unwrap();
    assert!(
        !log.has_room_for_group(),
        "a version 1 segment allows one group in flight"
    );
    log.group_written(block_on(write.write())).unwrap();
    assert!(log.has_room_for_group());
    drop(log);
    let (_, recovered) = open(&disk).unwrap();
    assert_eq!(indexes(&recovered.records), vec![1, 2, 3, 4]);
}

/// Groups written one at a time (an idle or lightly loaded shard) say so in their headers:
/// damage to one of the last groups, followed by valid ones within the window, is corruption
/// of acknowledged data, not a torn tail to cut silently.
#[test]
fn damage_to_a_group_a_later_group_knew_durable_is_corruption() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk).unwrap();
    append_groups(&mut log, 1, 3, 1, 100);
    drop(log);
    // Bit rot in group 2's records; group 3 was begun after group 2 was durable.
    disk.with_file(&segment_name(1), |bytes| bytes[4096 + 4096 + 40] ^= 0x10);
    match open(&disk) {
        Err(LogError::Corrupt { offset, detail, .. }) => {
            assert_eq!(offset, 4096 + 4096);
            assert!(detail.contains("valid group 3 follows"), "{detail}");
        }
        other => panic!(
            "expected corruption, got {:?}",
            other.map(|(_, r)| indexes(&r.records))
        ),
    }
}

fn damaged(result: Result<(Log<SimDisk>, super::Recovered), LogError>) -> (String, String) {
    match result {
        Err(LogError::Damaged { path, detail }) => (path, detail),
        Err(other) => panic!("expected damage, got {other}"),
        Ok((_, recovered)) => panic!(
            "expected damage, opened with {} records",
            recovered.records.len()
        ),
    }
}

#[test]
fn a_missing_segment_is_damage_not_an_empty_log() {
    let disk = SimDisk::new();
    let (mut log, _) = block_on(Log::open_with_segment_size(disk.clone(), 0, 64 * 1024)).unwrap();
    append_groups(&mut log, 1, 40, 2, 3000);
    let segments = log.stats().segments;
    assert!(segments >= 3);
    drop(log);
    let names: Vec<String> = disk
        .file_names()
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .collect();
    // The newest segment, then the oldest: each is missed by name.
    for victim in [names.last().unwrap().clone(), names[0].clone()] {
        let copy = disk.clone_files();
        block_on(async {
            use super::LogDisk;
            disk.remove(&victim).await.unwrap();
            disk.sync_dir().await.unwrap();
        });
        let (path, detail) = damaged(open(&disk));
        assert!(path.ends_with(&victim), "{path}");
        assert!(detail.contains("missing"), "{detail}");
        disk.restore_files(copy);
    }
    assert_eq!(open(&disk).unwrap().1.records.len(), 80);
}

#[test]
fn a_segment_cut_short_is_damage_wherever_it_is_cut() {
    for cut in [0usize, 4096, 8192 + 4096, 100_000, 777] {
        let disk = SimDisk::new();
        let (mut log, _) = open(&disk).unwrap();
        append_groups(&mut log, 1, 5, 1, 100);
        drop(log);
        let name = segment_name(1);
        disk.with_file(&name, |bytes| bytes.truncate(cut));
        let (path, detail) = damaged(open(&disk));
        assert!(path.ends_with(&name), "{path}");
        assert!(detail.contains("cut short"), "cut at {cut}: {detail}");
    }
}

#[test]
fn leftovers_of_an_interrupted_trim_are_removed() {
    use super::manifest::{Manifest, MANIFEST_NAME, SLOT_SIZE};
    let disk = SimDisk::new();
    let (mut log, _) = block_on(Log::open_with_segment_size(disk.clone(), 0, 64 * 1024)).unwrap();
    append_groups(&mut log, 1, 40, 2, 3000);
    drop(log);
    // A crash after the manifest dropped the oldest segment, before the file was deleted.
    let oldest = segment_name(1);
    disk.with_file(MANIFEST_NAME, |bytes| {
        let mut manifest = Manifest::decode_file(bytes).unwrap();
        manifest.segments.remove(0);
        let at = manifest.next_slot_offset() as usize;
        manifest.sequence += 1;
        manifest.encode(&mut bytes[at..at + SLOT_SIZE]);
    });
    let (_, recovered) = block_on(Log::open_with_segment_size(disk.clone(), 0, 64 * 1024)).unwrap();
    assert_eq!(recovered.removed.len(), 1);
    assert!(recovered.removed[0].ends_with(&oldest));
    assert!(!disk.file_names().contains(&oldest));
    assert!(recovered.records.first().unwrap().index > 1);
}

#[test]
fn a_log_without_a_manifest_gets_one_and_is_then_guarded() {
    use super::manifest::MANIFEST_NAME;
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk).unwrap();
    append_groups(&mut log, 1, 3, 1, 100);
    drop(log);
    block_on(async {
        use super::LogDisk;
        disk.remove(MANIFEST_NAME).await.unwrap();
    });
    let (_, recovered) = open(&disk).unwrap();
    assert!(recovered.manifest_created, "as a log an older kvs wrote");
    assert_eq!(indexes(&recovered.records), vec![1, 2, 3]);
    let (_, recovered) = open(&disk).unwrap();
    assert!(!recovered.manifest_created);
    disk.with_file(&segment_name(1), |bytes| bytes.truncate(4096));
    damaged(open(&disk));
}

#[test]
fn verify_agrees_with_open_and_changes_nothing() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk).unwrap();
    append_groups(&mut log, 1, 5, 1, 5000);
    drop(log);
    let name = segment_name(1);
    let last_group = 4096 + 4 * 8192;
    disk.with_file(&name, |bytes| {
        bytes[last_group + 4096..last_group + 8192].fill(0)
    });
    let before = disk.with_file(&name, |bytes| bytes.clone()).unwrap();
    let verified = block_on(Log::verify(disk.clone(), 0)).unwrap();
    assert_eq!(indexes(&verified.records), vec![1, 2, 3, 4]);
    assert_eq!(verified.last_index, 4);
    let (_, offset) = verified.truncated.clone().expect("the tear is reported");
    assert_eq!(offset, last_group as u64);
    assert_eq!(
        disk.with_file(&name, |bytes| bytes.clone()).unwrap(),
        before
    );
    let (_, opened) = open(&disk).unwrap();
    assert_eq!(opened.truncated.map(|t| t.1), Some(offset));
    // Corruption fails both.
    disk.with_file(&name, |bytes| bytes[4096 + 40] ^= 0xFF);
    assert!(matches!(
        block_on(Log::verify(disk.clone(), 0)),
        Err(LogError::Corrupt { .. })
    ));
    assert!(matches!(open(&disk), Err(LogError::Corrupt { .. })));
}

/// Trims and roll-overs under crashes (with torn writes, a failed sync, removals a power loss
/// undoes): the manifest never lists less than the log holds, so every open succeeds and
/// keeps every acknowledged entry past the trim point.
#[test]
fn crash_loop_with_trims_keeps_every_acknowledged_entry() {
    let mut leftovers = 0;
    for seed in 0..300u64 {
        let mut rng = SimRng::new(seed);
        let disk = SimDisk::new();
        let mut acked: Vec<u64> = Vec::new();
        let mut trimmed = 0u64;
        for _round in 0..5 {
            let (mut log, recovered) =
                block_on(Log::open_with_segment_size(disk.clone(), 0, 16 * 1024))
                    .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            leftovers += recovered.removed.len();
            let got = indexes(&recovered.records);
            let kept: Vec<u64> = acked.iter().copied().filter(|&i| i > trimmed).collect();
            let got_kept: Vec<u64> = got.iter().copied().filter(|&i| i > trimmed).collect();
            assert!(
                got_kept.starts_with(&kept),
                "seed {seed}: lost acknowledged entries"
            );
            acked = got;
            let mut next = acked.last().map_or(1, |i| i + 1);
            for _ in 0..rng.below(8) {
                let p = payload(next, rng.below(6000) as usize);
                block_on(log.append(&[entry(next, &p)])).unwrap();
                acked.push(next);
                next += 1;
            }
            if rng.below(2) == 0 && next > 1 {
                let through = rng.below(next);
                // A failed sync may stop the trim at any step; what it did must be safe.
                // (Entries up to `through` are in a checkpoint: they need not survive.)
                match rng.below(6) {
                    0 | 1 => disk.fail_after(FaultOn::Sync, 1, 5),
                    // The removals may not be durable: a power loss brings files back.
                    2 => disk.fail_after(FaultOn::SyncDir, 1, 5),
                    _ => {}
                }
                let _ = block_on(log.remove_through(through));
                trimmed = trimmed.max(through);
            }
            drop(log);
            disk.crash(Some(&mut rng));
        }
    }
    assert!(
        leftovers > 0,
        "some runs left segments for recovery to remove"
    );
}

/// Entries read back from the segments: across segments, in steps that continue where the
/// last stopped, and, where a later group overwrote entries (a new leader's), the entries
/// the caller says the log holds now.
#[test]
fn entries_are_read_back_across_segments_and_overwrites() {
    let disk = SimDisk::new();
    let (mut log, _) = block_on(Log::open_with_segment_size(disk.clone(), 0, 64 * 1024)).unwrap();
    append_groups(&mut log, 1, 40, 2, 3000); // entries 1..=80, term 1
                                             // A new leader (term 2) overwrote 61..=80 and went on to 90.
    let payloads: Vec<_> = (61..=90).map(|i| payload(i * 7, 500)).collect();
    let records: Vec<_> = (61..=90)
        .zip(&payloads)
        .map(|(i, p)| Record {
            term: 2,
            ..entry(i, p)
        })
        .collect();
    block_on(log.append(&records)).unwrap();
    assert!(log.stats().segments > 3);
    let keep = |index: u64, term: u64| term == if index <= 60 { 1 } else { 2 };
    let all = block_on(log.read_entries(5, 91, 0, keep)).unwrap();
    assert_eq!(indexes(&all), (5..=90).collect::<Vec<_>>());
    assert_eq!(all[0].payload, payload(5, 3000));
    assert_eq!(all[70].payload, payload(75 * 7, 500));
    assert!(all.iter().all(|r| keep(r.index, r.term)));
    // In steps of about 10 KB, each continuing from the last.
    let mut read = Vec::new();
    let mut next = 1;
    while next <= 90 {
        let step = block_on(log.read_entries(next, 91, 10_000, keep)).unwrap();
        assert!(!step.is_empty(), "stuck at {next}");
        next = step.last().unwrap().index + 1;
        read.extend(step);
    }
    assert_eq!(indexes(&read), (1..=90).collect::<Vec<_>>());
    // A read whose end falls inside a group, and the next one, which starts there (the
    // first read's caller knew entries only up to its end: found by the cluster simulator).
    let known_to_5 = |index: u64, term: u64| index <= 5 && keep(index, term);
    let head = block_on(log.read_entries(1, 6, 0, known_to_5)).unwrap();
    assert_eq!(indexes(&head), (1..=5).collect::<Vec<_>>());
    let rest = block_on(log.read_entries(6, 91, 0, keep)).unwrap();
    assert_eq!(indexes(&rest), (6..=90).collect::<Vec<_>>());
    // What the segments do not hold is not made up.
    assert!(block_on(log.read_entries(91, 95, 0, keep))
        .unwrap()
        .is_empty());
    block_on(log.remove_through(40)).unwrap();
    // Entries a checkpoint covers are gone; those after it are still read.
    assert!(block_on(log.read_entries(1, 91, 0, keep))
        .unwrap()
        .is_empty());
    let after = block_on(log.read_entries(41, 91, 0, keep)).unwrap();
    assert_eq!(indexes(&after), (41..=90).collect::<Vec<_>>());
}
