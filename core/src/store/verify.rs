//! The read-only checker behind `kvsd --verify`: walks the newest checkpoint of a page file
//! and reports every problem it finds, changing nothing.
//!
//! It checks each page's checksum, id and type; that keys are ordered within each node and
//! lie between the separators above it; that every leaf is at the tree's height; that every
//! extent is intact and is the one its entry names; that no page is used twice, or both used
//! and free; that no page is lost (neither used nor free); and that the key count matches.
//! For documents, it checks that every document has exactly the index entries its indexed
//! fields imply, and that no index entry lacks its document ([`super::docs`]).

use std::collections::{HashMap, HashSet};

use super::page::{decode_extent, decode_node, Key, Meta, Node, Value, META_PAGES, PAGE_SIZE};
use super::{
    read_free_list, read_meta, StoreError, PAGE_FILE, SPACE_CATALOG, SPACE_CLUSTER, SPACE_DOC,
    SPACE_INDEX, SPACE_KV,
};
use crate::log::{LogDisk, LogFile};

/// What a verification found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub path: String,
    /// The checkpoint verified; None when the file has none yet (nothing to check).
    pub checkpoint: Option<Meta>,
    /// Key-value pairs.
    pub keys: u64,
    pub documents: u64,
    pub index_entries: u64,
    pub leaf_pages: u64,
    pub inner_pages: u64,
    pub extent_pages: u64,
    pub free_pages: u64,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The document-side records of a tree, gathered for checking documents against their
/// indexes once the whole tree has been walked.
#[derive(Default)]
struct DocRecords {
    catalog: Vec<(Vec<u8>, Vec<u8>)>,
    documents: Vec<(Vec<u8>, Vec<u8>)>,
    index_entries: HashMap<Vec<u8>, Vec<u8>>,
}

impl DocRecords {
    fn add(&mut self, space: Option<u8>, key: &[u8], value: Vec<u8>) {
        match space {
            Some(SPACE_DOC) => self.documents.push((key.to_vec(), value)),
            Some(SPACE_INDEX) => {
                self.index_entries.insert(key.to_vec(), value);
            }
            Some(SPACE_CATALOG) => self.catalog.push((key.to_vec(), value)),
            _ => {}
        }
    }
}

struct Visit {
    id: u64,
    depth: u32,
    low: Option<Key>,
    high: Option<Key>,
}

/// Verifies the page file of `shard` in `disk`.
pub async fn verify<D: LogDisk>(disk: &D, shard: u32) -> Result<VerifyReport, StoreError> {
    let path = disk.path_of(PAGE_FILE);
    let mut report = VerifyReport {
        path: path.clone(),
        ..VerifyReport::default()
    };
    let file = match disk.open(PAGE_FILE, false).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(StoreError::io("open", &path, e)),
    };
    let Some(meta) = read_meta(&file, &path).await? else {
        return Ok(report);
    };
    if meta.shard != shard {
        report
            .problems
            .push(format!("meta page names shard {}, not {shard}", meta.shard));
    }
    let mut used: HashSet<u64> = HashSet::new();
    let page_count = meta.page_count;
    let claim = |used: &mut HashSet<u64>, id: u64, what: &str, problems: &mut Vec<String>| {
        if id < META_PAGES || id >= page_count {
            problems.push(format!(
                "{what} page {id} is outside the file's {page_count} pages"
            ));
        } else if !used.insert(id) {
            problems.push(format!("page {id} is used twice (again as {what})"));
        }
    };
    let mut records = DocRecords::default();
    let mut stack = Vec::new();
    if meta.root != 0 {
        stack.push(Visit {
            id: meta.root,
            depth: 1,
            low: None,
            high: None,
        });
    }
    while let Some(visit) = stack.pop() {
        claim(&mut used, visit.id, "tree", &mut report.problems);
        let bytes = match file.read_at(visit.id * PAGE_SIZE as u64, PAGE_SIZE).await {
            Ok(bytes) => bytes,
            Err(e) => {
                report
                    .problems
                    .push(format!("page {}: read failed: {e}", visit.id));
                continue;
            }
        };
        let node = match decode_node(&bytes, visit.id) {
            Ok((node, _)) => node,
            Err(e) => {
                report.problems.push(e.to_string());
                continue;
            }
        };
        let in_range = |key: &[u8]| {
            visit.low.as_deref().is_none_or(|low| key >= low)
                && visit.high.as_deref().is_none_or(|high| key < high)
        };
        match node {
            Node::Leaf(entries) => {
                report.leaf_pages += 1;
                if visit.depth != meta.height {
                    report.problems.push(format!(
                        "leaf page {} at depth {}, tree height {}",
                        visit.id, visit.depth, meta.height
                    ));
                }
                for entry in entries {
                    let space = entry.key.first().copied();
                    if space == Some(SPACE_KV) {
                        report.keys += 1;
                    } else if !matches!(
                        space,
                        Some(SPACE_DOC | SPACE_INDEX | SPACE_CATALOG | SPACE_CLUSTER)
                    ) {
                        report.problems.push(format!(
                            "leaf page {}: key {:?} in no known space",
                            visit.id,
                            String::from_utf8_lossy(&entry.key)
                        ));
                    }
                    if let Value::Inline(value) = &entry.value {
                        records.add(space, &entry.key, value.clone());
                    }
                    if !in_range(&entry.key) {
                        report.problems.push(format!(
                            "leaf page {}: key {:?} outside its parent's range",
                            visit.id,
                            String::from_utf8_lossy(&entry.key)
                        ));
                    }
                    if let Value::Extent {
                        first,
                        pages,
                        len,
                        lsn,
                    } = entry.value
                    {
                        report.extent_pages += u64::from(pages);
                        for id in first..first + u64::from(pages) {
                            claim(&mut used, id, "extent", &mut report.problems);
                        }
                        match file
                            .read_at(first * PAGE_SIZE as u64, pages as usize * PAGE_SIZE)
                            .await
                        {
                            Ok(bytes) => match decode_extent(&bytes, first, len, lsn) {
                                Ok(value) => records.add(space, &entry.key, value),
                                Err(e) => report.problems.push(e.to_string()),
                            },
                            Err(e) => report
                                .problems
                                .push(format!("extent {first}: read failed: {e}")),
                        }
                    }
                }
            }
            Node::Inner { keys, children } => {
                report.inner_pages += 1;
                if visit.depth >= meta.height {
                    report.problems.push(format!(
                        "inner page {} at depth {}, tree height {}",
                        visit.id, visit.depth, meta.height
                    ));
                    continue;
                }
                if let Some(key) = keys.iter().find(|k| !in_range(k)) {
                    report.problems.push(format!(
                        "inner page {}: separator {:?} outside its parent's range",
                        visit.id,
                        String::from_utf8_lossy(key)
                    ));
                }
                for (i, &child) in children.iter().enumerate() {
                    stack.push(Visit {
                        id: child,
                        depth: visit.depth + 1,
                        low: if i == 0 {
                            visit.low.clone()
                        } else {
                            Some(keys[i - 1].clone())
                        },
                        high: keys.get(i).cloned().or_else(|| visit.high.clone()),
                    });
                }
            }
        }
    }
    report.documents = records.documents.len() as u64;
    report.index_entries = records.index_entries.len() as u64;
    super::docs::check_documents(
        records.catalog,
        records.documents,
        records.index_entries,
        &mut report.problems,
    );
    if meta
        .doc_count
        .is_some_and(|count| count != report.documents)
    {
        report.problems.push(format!(
            "the tree holds {} documents, the checkpoint says {:?}",
            report.documents, meta.doc_count
        ));
    }
    if report.keys != meta.key_count {
        report.problems.push(format!(
            "the tree holds {} keys, the checkpoint says {}",
            report.keys, meta.key_count
        ));
    }
    match read_free_list(&file, &path, shard, meta.free_head, meta.page_count).await {
        Ok((free, _chain)) => {
            report.free_pages = free.len() as u64;
            for id in free {
                if used.contains(&id) {
                    report
                        .problems
                        .push(format!("page {id} is both free and in use"));
                } else {
                    claim(&mut used, id, "free", &mut report.problems);
                }
            }
        }
        Err(e) => report.problems.push(e.to_string()),
    }
    let lost = (META_PAGES..meta.page_count)
        .filter(|id| !used.contains(id))
        .count();
    if lost > 0 {
        report
            .problems
            .push(format!("{lost} pages are neither in use nor free"));
    }
    report.checkpoint = Some(meta);
    Ok(report)
}
