//! A deterministic simulation of one shard's pipelined write path: the shard loop's own
//! decisions (`driver::ShardDriver`, as `node` runs it) over the real `ShardCore` (peer, Raft,
//! log, paged store) on the simulated disk, with a simulated clock. A seeded scheduler
//! interleaves arriving requests from several connections, passes of the loop, group writes
//! landing in any order and reported in log order, reads from the disk finishing late, ticks
//! (with the reopen of a failed shard), checkpoints when the checkpoint policy says so,
//! failed writes and power losses that tear unsynced blocks. Every seed is replayable: a
//! failure names it.
//!
//! Checked on every run:
//! - a connection's read sees its own earlier writes and none of its later ones (it may see
//!   other connections' writes);
//! - replies to one key's writes come in version order;
//! - after a power loss, every acknowledged write is still there (its version or a later one).

use std::collections::{HashMap, VecDeque};

use futures_lite::future::block_on;
use kvs_core::command::Command;
use kvs_core::log::sim::{FaultOn, SimDisk, SimRng};
use kvs_core::log::{GroupWrite, GroupWritten};
use kvs_core::state::CommandResult;
use kvs_core::store::StoreConfig;
use kvs_shards::driver::{CheckpointPolicy, ShardDriver};
use kvs_shards::shard::{Origin, ShardCore, ShardOp, ShardReply, ShardRequest};

const CONFIG: StoreConfig = StoreConfig {
    cache_pages: 24,
    hot_cache_bytes: 4 * 1024,
};
/// Keys the connections work on, spread over a tree of `TREE_KEYS` keys many times the
/// cache, so their leaves come and go and reads need the disk.
const KEYS: u64 = 40;
const TREE_KEYS: u64 = 600;
const ORIGINS: u64 = 4;
/// The origin of reads of the rest of the tree (they keep evicting pages).
const BACKGROUND: Origin = 99;

/// A reply's address: the connection and the request's number on it.
type Tag = (Origin, u64);

type Disk = SimDisk;

/// The puts a connection sent to one key: (request number, value), in the order sent.
type PutsSent = Vec<(u64, Vec<u8>)>;

/// What the scheduler keeps between steps.
struct World {
    rng: SimRng,
    disk: Disk,
    driver: ShardDriver<Disk, Tag>,
    /// The simulated clock, and when the last checkpoint was.
    now: std::time::Duration,
    last_checkpoint: std::time::Duration,
    /// Queued requests that start a further group while one is in flight (per seed).
    pipeline_when_queued: usize,
    /// Requests sent and not yet taken by the shard.
    queue: VecDeque<ShardRequest<Tag>>,
    /// Group writes begun and not yet run, and the outcomes of those run, by sequence.
    unrun: Vec<GroupWrite<<Disk as kvs_core::log::LogDisk>::File>>,
    landed: HashMap<u64, GroupWritten>,
    /// Sequences begun, oldest first, not yet reported.
    in_flight: VecDeque<u64>,
    /// Reads handed out to run in tasks of their own.
    deferred: Vec<ShardRequest<Tag>>,
    next_seq: HashMap<Origin, u64>,
    /// What each request was: (key, Some(value) for a put).
    sent: HashMap<Tag, (u64, Option<Vec<u8>>)>,
    /// Per connection and key: the values it put, in the order sent.
    puts_sent: HashMap<(Origin, u64), PutsSent>,
    /// Per key, the highest acknowledged version.
    acked: HashMap<u64, u64>,
    /// Per key, the value each version holds (to check a read against what was written).
    versions: HashMap<(u64, u64), Vec<u8>>,
    /// Puts answered with an error (refused, or outcome unknown).
    failed_puts: std::collections::HashSet<Tag>,
    replies: u64,
}

/// The tree key of working key `k` (spread over the tree: one in every 15).
fn key(k: u64) -> Vec<u8> {
    tree_key(k * (TREE_KEYS / KEYS))
}

fn tree_key(n: u64) -> Vec<u8> {
    format!("key{n:05}").into_bytes()
}

impl World {
    fn new(seed: u64) -> World {
        let disk = SimDisk::new();
        let mut shard: ShardCore<Disk, Tag> =
            block_on(ShardCore::open(disk.clone(), 0, CONFIG)).expect("open");
        // The tree, checkpointed so that its pages can be evicted.
        for chunk in (0..TREE_KEYS).collect::<Vec<_>>().chunks(50) {
            let requests = chunk
                .iter()
                .map(|&n| ShardRequest {
                    op: ShardOp::Write(Command::Put {
                        key: tree_key(n),
                        value: vec![b'.'; 600],
                    }),
                    reply: (BACKGROUND, n),
                    origin: BACKGROUND,
                })
                .collect();
            let mut round = shard.take(requests);
            assert!(round.propose_into_settled(&mut shard));
        }
        block_on(
            shard
                .store()
                .checkpoint(None::<fn(usize) -> std::future::Ready<()>>),
        )
        .expect("checkpoint");
        let mut rng = SimRng::new(seed);
        let pipeline_when_queued = rng.below(6) as usize;
        shard.set_pipeline_when_queued(pipeline_when_queued);
        World {
            rng,
            disk,
            driver: ShardDriver::new(shard),
            now: std::time::Duration::ZERO,
            last_checkpoint: std::time::Duration::ZERO,
            pipeline_when_queued,
            queue: VecDeque::new(),
            unrun: Vec::new(),
            landed: HashMap::new(),
            in_flight: VecDeque::new(),
            deferred: Vec::new(),
            next_seq: HashMap::new(),
            sent: HashMap::new(),
            puts_sent: HashMap::new(),
            acked: HashMap::new(),
            versions: HashMap::new(),
            failed_puts: std::collections::HashSet::new(),
            replies: 0,
        }
    }

    fn send(&mut self) {
        if self.rng.below(3) == 0 {
            // A read somewhere else in the tree: it moves pages in and out of the cache.
            let n = self.rng.below(TREE_KEYS);
            let seq = {
                let next = self.next_seq.entry(BACKGROUND).or_insert(TREE_KEYS);
                *next += 1;
                *next
            };
            self.sent.insert((BACKGROUND, seq), (u64::MAX, None));
            self.queue.push_back(ShardRequest {
                op: ShardOp::Get { key: tree_key(n) },
                reply: (BACKGROUND, seq),
                origin: BACKGROUND,
            });
            self.driver.woken();
            return;
        }
        let origin = 1 + self.rng.below(ORIGINS);
        let seq = {
            let next = self.next_seq.entry(origin).or_insert(0);
            *next += 1;
            *next
        };
        let k = self.rng.below(KEYS);
        let (op, value) = if self.rng.below(2) == 0 {
            // Values large enough that the tree outgrows the cache and reads need the disk.
            let value = format!("{origin}/{seq}/{}", "x".repeat(300)).into_bytes();
            self.puts_sent
                .entry((origin, k))
                .or_default()
                .push((seq, value.clone()));
            let command = Command::Put {
                key: key(k),
                value: value.clone(),
            };
            (ShardOp::Write(command), Some(value))
        } else {
            (ShardOp::Get { key: key(k) }, None)
        };
        self.sent.insert((origin, seq), (k, value));
        self.queue.push_back(ShardRequest {
            op,
            reply: (origin, seq),
            origin,
        });
        // An arrival wakes the loop.
        self.driver.woken();
    }

    /// One pass of the shard loop.
    fn pass(&mut self) {
        let ready = block_on(self.driver.run_ready());
        for write in ready.writes {
            self.in_flight.push_back(write.sequence());
            self.unrun.push(write);
        }
        self.output(ready.output);
        let taken = self.driver.take_requests(&mut self.queue);
        self.output(taken.output);
    }

    fn output(&mut self, output: kvs_shards::shard::Output<Tag>) {
        for (to, reply) in output.replies {
            self.check_reply(to, reply);
        }
        self.deferred.extend(output.deferred);
    }

    /// Runs one begun write, any of them: writes land in any order.
    fn land(&mut self) {
        if self.unrun.is_empty() {
            return;
        }
        let at = self.rng.below(self.unrun.len() as u64) as usize;
        let write = self.unrun.swap_remove(at);
        let written = block_on(write.write());
        self.landed.insert(written.sequence, written);
    }

    /// Reports the oldest group if it landed (reports are in log order).
    fn report(&mut self) {
        let Some(&oldest) = self.in_flight.front() else {
            return;
        };
        let Some(written) = self.landed.remove(&oldest) else {
            return;
        };
        self.in_flight.pop_front();
        // A completed write wakes the loop.
        self.driver.woken();
        let output = self.driver.written(written);
        self.output(output);
    }

    fn read_one(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let at = self.rng.below(self.deferred.len() as u64) as usize;
        let read = self.deferred.remove(at);
        let reply = block_on(self.driver.shard().read(&read.op));
        self.driver.shard().disk_reads().finish(read.origin);
        // A finished disk read wakes the loop (a write of its connection may wait for it).
        self.driver.woken();
        self.check_reply(read.reply, reply);
    }

    fn check_reply(&mut self, to: Tag, reply: ShardReply) {
        self.replies += 1;
        let (origin, seq) = to;
        let (k, value) = self.sent.remove(&to).expect("one reply per request");
        if k == u64::MAX {
            assert!(matches!(reply, ShardReply::Value(Some(_))), "{reply:?}");
            return;
        }
        match (value, reply) {
            (Some(value), ShardReply::Written(CommandResult::Written { version })) => {
                let acked = self.acked.entry(k).or_insert(0);
                assert!(
                    version > *acked,
                    "key {k}: version {version} acknowledged after {acked}"
                );
                *acked = version;
                self.versions.insert((k, version), value);
            }
            (Some(_), ShardReply::Error(..)) => {
                // Refused, or outcome unknown: a later read need not see it.
                self.failed_puts.insert(to);
            }
            (None, ShardReply::Value(found)) => {
                let puts = self
                    .puts_sent
                    .get(&(origin, k))
                    .cloned()
                    .unwrap_or_default();
                let earlier = puts
                    .iter()
                    .rev()
                    .find(|(s, _)| *s < seq && !self.failed_puts.contains(&(origin, *s)));
                let later: Vec<&Vec<u8>> = puts
                    .iter()
                    .filter(|(s, _)| *s > seq)
                    .map(|(_, v)| v)
                    .collect();
                if let Some(found) = &found {
                    assert!(
                        !later.contains(&&found.value),
                        "connection {origin}'s read {seq} of key {k} saw its own later write"
                    );
                }
                if let Some((put_seq, _)) = earlier {
                    let found = found.unwrap_or_else(|| {
                        panic!(
                            "connection {origin}'s read {seq} of key {k} missed its write {put_seq}"
                        )
                    });
                    let own_prefix = format!("{origin}/");
                    if found.value.starts_with(own_prefix.as_bytes()) {
                        // One of its own writes: the newest before the read, or a newer one
                        // whose outcome was unknown (it may have become durable).
                        let text = String::from_utf8_lossy(&found.value);
                        let found_seq: u64 = text.split('/').nth(1).unwrap().parse().unwrap();
                        assert!(
                            found_seq == *put_seq
                                || found_seq > *put_seq
                                    && self.failed_puts.contains(&(origin, found_seq)),
                            "connection {origin}'s read {seq} of key {k} saw its older write \
                             {found_seq}, not {put_seq}"
                        );
                    } else {
                        assert!(
                            found.value[0] != b'.',
                            "connection {origin}'s read {seq} of key {k} missed its write \
                             {put_seq} (saw the value from before any)"
                        );
                        // Another connection's write: a later one than its own.
                        let own = format!("{origin}/{put_seq}/");
                        let own_version = self
                            .versions
                            .iter()
                            .find(|((kk, _), v)| *kk == k && v.starts_with(own.as_bytes()))
                            .map(|((_, version), _)| *version);
                        if let Some(own) = own_version {
                            assert!(
                                found.version > own,
                                "connection {origin}'s read {seq} of key {k}: version {} is \
                                 older than its own write's {own}",
                                found.version
                            );
                        }
                    }
                }
            }
            (None, ShardReply::Error(..)) => {}
            (value, reply) => panic!("unexpected reply {reply:?} to {to:?} ({value:?})"),
        }
    }

    /// A power loss: unreported groups may or may not survive; acknowledged writes must.
    fn crash_and_reopen(&mut self) {
        // The old shard goes first (a stand-in on a disk of its own takes its place).
        let stand_in = block_on(ShardCore::open(SimDisk::new(), 0, CONFIG)).expect("open");
        drop(std::mem::replace(
            &mut self.driver,
            ShardDriver::new(stand_in),
        ));
        self.unrun.clear();
        self.landed.clear();
        self.in_flight.clear();
        self.disk.crash(Some(&mut self.rng));
        let mut shard = block_on(ShardCore::open(self.disk.clone(), 0, CONFIG))
            .unwrap_or_else(|e| panic!("reopening after a power loss: {e}"));
        shard.set_pipeline_when_queued(self.pipeline_when_queued);
        self.driver = ShardDriver::new(shard);
        // Requests in flight are lost with their connections.
        self.queue.clear();
        self.deferred.clear();
        self.sent.clear();
        self.puts_sent.clear();
        for k in 0..KEYS {
            let Some(&acked) = self.acked.get(&k) else {
                continue;
            };
            let reply = block_on(self.driver.shard().read(&ShardOp::Get { key: key(k) }));
            let ShardReply::Value(Some(found)) = reply else {
                panic!("key {k}: acknowledged version {acked} lost: {reply:?}");
            };
            assert!(
                found.version >= acked,
                "key {k}: acknowledged version {acked}, found {}",
                found.version
            );
        }
    }

    fn fail_a_write(&mut self) {
        self.disk.fail_after(FaultOn::Write, 1, 5);
    }

    /// Time passes; the loop ticks (a failed shard retries reopening after a second).
    fn tick(&mut self) {
        self.now += std::time::Duration::from_millis(100 + self.rng.below(400));
        block_on(self.driver.tick(self.now));
    }

    /// The checkpoint task looks at its triggers, with the clock as it is.
    fn maybe_checkpoint(&mut self) {
        let policy = CheckpointPolicy {
            interval: std::time::Duration::from_secs(5),
            log_size: 256 * 1024,
            rate: u64::MAX,
        };
        if self.driver.shard().failed() {
            return;
        }
        let store = std::rc::Rc::clone(self.driver.shard().store());
        if policy.due(&store, self.now.saturating_sub(self.last_checkpoint)) {
            let _ = block_on(store.checkpoint(None::<fn(usize) -> std::future::Ready<()>>));
            self.last_checkpoint = self.now;
        }
    }

    /// A failed shard's writes run to the end (their outcome no longer matters), as the
    /// shard loop waits for them before the shard may reopen.
    fn drain_if_failed(&mut self) {
        if !self.driver.shard().failed() {
            return;
        }
        let mut unrun: Vec<_> = self.unrun.drain(..).collect();
        unrun.sort_by_key(|w| w.sequence());
        for write in unrun {
            self.landed
                .insert(write.sequence(), block_on(write.write()));
        }
        while let Some(oldest) = self.in_flight.pop_front() {
            let written = self.landed.remove(&oldest).expect("every write ran");
            let output = self.driver.written(written);
            self.output(output);
        }
    }
}

trait SettleRound {
    /// Proposes the round's batch and drives the shard until it is applied.
    fn propose_into_settled(&mut self, shard: &mut ShardCore<Disk, Tag>) -> bool;
}

impl SettleRound for kvs_shards::shard::Round<Tag> {
    fn propose_into_settled(&mut self, shard: &mut ShardCore<Disk, Tag>) -> bool {
        let Some(batch) = self.batch.take() else {
            return false;
        };
        let refused = shard.propose(batch);
        let settled = block_on(shard.settle());
        refused.is_empty()
            && settled
                .replies
                .iter()
                .all(|(_, r)| matches!(r, ShardReply::Written(_)))
    }
}

fn run(seed: u64, steps: u32) -> u64 {
    let mut world = World::new(seed);
    for _ in 0..steps {
        match world.rng.below(100) {
            0..=29 => world.send(),
            30..=59 => world.pass(),
            60..=72 => world.land(),
            73..=85 => world.report(),
            86..=93 => world.read_one(),
            94 => world.tick(),
            95 => world.maybe_checkpoint(),
            96 if world.rng.below(4) == 0 => world.fail_a_write(),
            97 => world.drain_if_failed(),
            98 if world.rng.below(3) == 0 => world.crash_and_reopen(),
            _ => {}
        }
    }
    world.replies
}

#[test]
fn the_pipelined_write_path_keeps_order_and_durability_under_every_schedule() {
    let seeds: u64 = std::env::var("KVS_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let mut replies = 0;
    for seed in 0..seeds {
        let result = std::panic::catch_unwind(|| run(seed, 600));
        match result {
            Ok(n) => replies += n,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("seed {seed} failed (replay: run({seed}, 600)): {message}");
            }
        }
    }
    assert!(
        replies > seeds * 50,
        "the schedules did little: {replies} replies"
    );
}
