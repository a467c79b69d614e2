//! Workloads: the operation mixes (YCSB A–F and simple ones) and the key distributions
//! (uniform, YCSB's scrambled zipfian, latest).

use clap::ValueEnum;

/// The operations a workload issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Read,
    Update,
    Insert,
    Scan,
    /// Read a key, then write it (YCSB's read-modify-write); timed as one operation.
    ReadModifyWrite,
    /// A document query (`find`).
    Find,
}

impl OpKind {
    pub const ALL: [OpKind; 6] = [
        OpKind::Read,
        OpKind::Update,
        OpKind::Insert,
        OpKind::Scan,
        OpKind::ReadModifyWrite,
        OpKind::Find,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::Scan => "scan",
            OpKind::ReadModifyWrite => "read-modify-write",
            OpKind::Find => "find",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// YCSB A: 50% read, 50% update, zipfian.
    YcsbA,
    /// YCSB B: 95% read, 5% update, zipfian.
    YcsbB,
    /// YCSB C: 100% read, zipfian.
    YcsbC,
    /// YCSB D: 95% read, 5% insert, reads favour the latest keys.
    YcsbD,
    /// YCSB E: 95% short scans (1–100 keys), 5% insert, zipfian.
    YcsbE,
    /// YCSB F: 50% read, 50% read-modify-write, zipfian.
    YcsbF,
    /// 100% updates of keys in order (sequential writes).
    Write,
    /// 100% reads of keys in order (sequential reads).
    Read,
    /// 100% reads of random keys.
    RandomRead,
    /// 100% scans of 1–100 keys from random starts.
    Scan,
    /// Documents: 100% inserts of new documents `{"_id": i, "n": i, "m": i, "pad": ...}`
    /// into the collection `bench` (one document per request).
    DocInsert,
    /// Documents: 100% finds of one document by `--field` (`n` or `m`) equal to a random i.
    DocPoint,
    /// Documents: 100% finds of the 10 documents with `--field` in [i, i + 10).
    DocRange,
    /// Transactions: move 1 between two accounts (two reads, two writes), uniform
    /// (`txn_bench`).
    TxnTransfer,
    /// Transactions: four reads or read-modify-writes of zipfian keys each (`txn_bench`).
    TxnYcsb,
}

/// The transactional workloads, which `txn_bench` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnWorkload {
    Transfer,
    Ycsb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    Uniform,
    Zipfian,
    Latest,
}

impl Workload {
    /// (operation, weight in percent).
    pub fn mix(self) -> &'static [(OpKind, u32)] {
        use OpKind::*;
        match self {
            Workload::YcsbA => &[(Read, 50), (Update, 50)],
            Workload::YcsbB => &[(Read, 95), (Update, 5)],
            Workload::YcsbC | Workload::Read | Workload::RandomRead => &[(Read, 100)],
            Workload::YcsbD => &[(Read, 95), (Insert, 5)],
            Workload::YcsbE => &[(Scan, 95), (Insert, 5)],
            Workload::YcsbF => &[(Read, 50), (ReadModifyWrite, 50)],
            Workload::Write => &[(Update, 100)],
            Workload::Scan => &[(Scan, 100)],
            Workload::DocInsert => &[(Insert, 100)],
            Workload::DocPoint | Workload::DocRange => &[(Find, 100)],
            // Run by `txn_bench`, not by the operation mix.
            Workload::TxnTransfer | Workload::TxnYcsb => &[],
        }
    }

    /// The transactional workload this is, if it is one.
    pub fn transactional(self) -> Option<TxnWorkload> {
        match self {
            Workload::TxnTransfer => Some(TxnWorkload::Transfer),
            Workload::TxnYcsb => Some(TxnWorkload::Ycsb),
            _ => None,
        }
    }

    /// Whether the workload works on documents (loaded as documents, native protocol).
    pub fn documents(self) -> bool {
        matches!(
            self,
            Workload::DocInsert | Workload::DocPoint | Workload::DocRange
        )
    }

    /// The key distribution YCSB specifies for this workload.
    pub fn default_distribution(self) -> Distribution {
        match self {
            Workload::YcsbD => Distribution::Latest,
            Workload::RandomRead | Workload::Scan | Workload::DocPoint | Workload::DocRange => {
                Distribution::Uniform
            }
            _ => Distribution::Zipfian,
        }
    }

    /// Whether keys are visited in order rather than drawn from a distribution.
    pub fn sequential(self) -> bool {
        matches!(self, Workload::Write | Workload::Read)
    }

    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

/// SplitMix64: small, fast and good enough to draw keys.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// YCSB's zipfian generator over `[0, items)` with constant 0.99 (Gray et al., "Quickly
/// generating billion-record synthetic databases"), whose shared constants are computed once.
#[derive(Debug, Clone)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

pub const ZIPFIAN_CONSTANT: f64 = 0.99;

fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

impl Zipfian {
    pub fn new(items: u64) -> Zipfian {
        let items = items.max(2);
        let theta = ZIPFIAN_CONSTANT;
        let zetan = zeta(items, theta);
        let zeta2 = zeta(2, theta);
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipfian {
            items,
            theta,
            alpha,
            zetan,
            eta,
        }
    }

    /// A rank: 0 is the most popular item.
    pub fn next_rank(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.items - 1)
    }

    /// A key whose popularity follows the zipfian ranks, scattered over the key space (YCSB's
    /// scrambled zipfian) so that the hot keys are not neighbours.
    pub fn next_scrambled(&self, rng: &mut Rng, items: u64) -> u64 {
        kvs_wire::key_hash(&self.next_rank(rng).to_le_bytes()) % items.max(1)
    }
}

/// The collection the document workloads use.
pub const DOC_COLLECTION: &str = "bench";
/// Documents one range query of `doc-range` selects.
pub const DOC_RANGE: u64 = 10;

/// Document `i` of the document workloads: `n` and `m` both hold `i` (index one of them
/// to compare indexed and unindexed queries), `pad` fills it to about `size` bytes.
pub fn doc_json(i: u64, size: usize) -> String {
    format!(
        r#"{{"_id":{i},"n":{i},"m":{i},"pad":"{}"}}"#,
        "x".repeat(size.saturating_sub(40))
    )
}

/// The JSON command of a document operation on document `i`.
pub fn doc_command(workload: Workload, field: &str, i: u64, size: usize) -> Vec<u8> {
    let c = DOC_COLLECTION;
    match workload {
        Workload::DocPoint => format!(r#"{{"find":"{c}","filter":{{"{field}":{i}}}}}"#),
        Workload::DocRange => format!(
            r#"{{"find":"{c}","filter":{{"{field}":{{"$gte":{i},"$lt":{}}}}}}}"#,
            i + DOC_RANGE
        ),
        _ => format!(r#"{{"insert":"{c}","documents":[{}]}}"#, doc_json(i, size)),
    }
    .into_bytes()
}

/// The key names every workload uses: fixed width, so byte order is numeric order.
pub fn key_name(i: u64) -> Vec<u8> {
    format!("user{i:012}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipfian_is_skewed_and_in_range() {
        let zipf = Zipfian::new(1000);
        let mut rng = Rng::new(1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[zipf.next_rank(&mut rng) as usize] += 1;
        }
        // Rank 0 is by far the most frequent, and every draw is in range.
        assert!(
            counts[0] > counts[10] * 5,
            "{} vs {}",
            counts[0],
            counts[10]
        );
        assert!(counts[0] > 5_000);
        for _ in 0..1000 {
            assert!(zipf.next_scrambled(&mut rng, 1000) < 1000);
        }
    }

    #[test]
    fn mixes_add_up_to_one_hundred() {
        for workload in Workload::value_variants() {
            if workload.transactional().is_some() {
                assert!(workload.mix().is_empty(), "{workload:?} runs in txn_bench");
                continue;
            }
            assert_eq!(
                workload.mix().iter().map(|(_, w)| w).sum::<u32>(),
                100,
                "{workload:?}"
            );
        }
    }
}
