//! Tests of the shard service on the simulated disk.

use super::*;
use crate::doc_reads::{DocRead, FindMode};
use futures_lite::future::block_on;
use kvs_core::command::Command;
use kvs_core::doc::binary;
use kvs_core::doc::command::DocCommand;
use kvs_core::doc::value::Value;
use kvs_core::log::sim::{FaultOn, SimDisk};
use kvs_core::state::{CommandResult, Versioned};
use kvs_core::store::PagedStore;

const CONFIG: StoreConfig = StoreConfig {
    cache_pages: 64,
    hot_cache_bytes: 64 * 1024,
};

type Replies = Vec<(usize, ShardReply)>;

/// A round, with its deferred reads answered too.
fn round(
    shard: &mut ShardCore<SimDisk, usize>,
    requests: Vec<ShardRequest<usize>>,
) -> (Replies, Vec<ShardRequest<usize>>) {
    let done = block_on(shard.process(requests));
    let mut replies = done.replies;
    for request in done.deferred {
        replies.push((request.reply, block_on(shard.read(&request.op))));
        shard.disk_reads().finish(request.origin);
    }
    (replies, done.leftover)
}

fn put(i: usize) -> ShardRequest<usize> {
    ShardRequest {
        op: ShardOp::Write(Command::Put {
            key: format!("k{i}").into_bytes(),
            value: vec![i as u8; 10],
        }),
        reply: i,
        origin: NO_ORIGIN,
    }
}

fn get(i: usize, reply: usize) -> ShardRequest<usize> {
    ShardRequest {
        op: ShardOp::Get {
            key: format!("k{i}").into_bytes(),
        },
        reply,
        origin: NO_ORIGIN,
    }
}

#[test]
fn a_round_of_writes_is_one_group_and_one_fsync() {
    let disk = SimDisk::new();
    let mut shard = block_on(ShardCore::<_, usize>::open(disk.clone(), 0, CONFIG)).unwrap();
    let syncs = disk.syncs();
    let (replies, leftover) = round(&mut shard, (0..1000).map(put).collect());
    assert!(leftover.is_empty());
    assert_eq!(replies.len(), 1000);
    assert!(replies
        .iter()
        .all(|(_, r)| matches!(r, ShardReply::Written(CommandResult::Written { .. }))));
    assert_eq!(
        disk.syncs() - syncs,
        1,
        "1000 writes in one round share one fdatasync"
    );
    assert_eq!(shard.info().log_groups_written, 2); // the election's group, then this one
}

fn from(origin: Origin, mut request: ShardRequest<usize>) -> ShardRequest<usize> {
    request.origin = origin;
    request
}

impl Round<usize> {
    /// Proposes the round's batch, if any; returns the answers of a refused proposal.
    fn propose_into(&mut self, shard: &mut ShardCore<SimDisk, usize>) -> Output<usize> {
        match self.batch.take() {
            Some(batch) => shard.propose(batch),
            None => Output::default(),
        }
    }
}

fn reply_to(replies: &Replies, id: usize) -> ShardReply {
    replies
        .iter()
        .find(|(r, _)| *r == id)
        .map(|(_, reply)| reply.clone())
        .unwrap_or_else(|| panic!("no reply to {id}"))
}

#[test]
fn a_read_sees_exactly_the_writes_its_connection_sent_before_it() {
    let disk = SimDisk::new();
    let mut shard = block_on(ShardCore::<_, usize>::open(disk, 0, CONFIG)).unwrap();
    // Connection 7 pipelines get, put, get, put, get of one key; connection 8 reads it
    // behind the first put.
    let requests = vec![
        from(7, get(1, 100)),
        from(7, put(1)),
        from(8, get(1, 200)),
        from(7, get(1, 101)),
        from(7, put(1)),
        from(7, get(1, 102)),
    ];
    let mut round1 = shard.take(requests);
    let replies = std::mem::take(&mut round1.replies);
    assert_eq!(reply_to(&replies, 100), ShardReply::Value(None));
    // Another connection's read is answered at once, without the unacknowledged put.
    assert_eq!(reply_to(&replies, 200), ShardReply::Value(None));
    // Connection 7's read after its put waits for the batch; its second put starts the next
    // batch, and the read after that waits for it in turn.
    assert_eq!(replies.len(), 2);
    let waiting: Vec<usize> = round1.leftover.iter().map(|r| r.reply).collect();
    assert_eq!(waiting, [1, 102]);
    assert!(round1.propose_into(&mut shard).is_empty());
    let round2 = shard.take(round1.leftover);
    assert!(round2.leftover.is_empty() && round2.replies.is_empty());
    let mut round2 = round2;
    assert!(round2.propose_into(&mut shard).is_empty());
    // Two entries pending at once; each read is answered right after its entry is applied.
    let settled = block_on(shard.settle());
    let order: Vec<usize> = settled.replies.iter().map(|(to, _)| *to).collect();
    assert_eq!(
        order,
        [1, 101, 1, 102],
        "writers, then the reads attached to them"
    );
    let version_read = |to| match reply_to(&settled.replies, to) {
        ShardReply::Value(Some(Versioned { version, .. })) => version,
        other => panic!("read {to} answered {other:?}"),
    };
    assert!(
        version_read(102) > version_read(101),
        "each read sees its own round's write"
    );
}

#[test]
fn several_groups_are_in_flight_and_writers_are_answered_in_log_order() {
    let disk = SimDisk::new();
    let mut shard = block_on(ShardCore::<_, usize>::open(disk.clone(), 0, CONFIG)).unwrap();
    let mut writes = Vec::new();
    assert!(shard.takes_writes(0));
    for i in 0..4 {
        let more_than_a_batch = BATCH_COMMANDS_MAX + 1;
        assert!(shard.takes_writes(more_than_a_batch), "room for group {i}");
        assert_eq!(
            shard.takes_writes(1),
            i == 0,
            "a small batch waits for the group in flight"
        );
        let mut round = shard.take(vec![put(i)]);
        assert!(round.propose_into(&mut shard).is_empty());
        assert!(shard.can_begin_ready());
        let (write, begun) = block_on(shard.begin_ready());
        assert!(begun.is_empty());
        writes.push(write.expect("a group for the entry"));
        assert!(
            block_on(shard.apply_committed()).is_empty(),
            "nothing is durable yet"
        );
    }
    assert!(
        !shard.takes_writes(BATCH_COMMANDS_MAX + 1),
        "four groups fill the window"
    );
    assert_eq!(shard.info().log_groups_in_flight, 4);
    // A read of another connection is answered meanwhile, without the unacknowledged puts.
    let round = shard.take(vec![get(0, 50)]);
    assert_eq!(round.replies, vec![(50, ShardReply::Value(None))]);
    // The writes complete in any order; they are reported in log order, and each report
    // lets the next entry commit and be applied.
    let mut written: Vec<_> = writes.into_iter().map(|w| block_on(w.write())).collect();
    let mut answered = Vec::new();
    for w in written.drain(..) {
        assert!(shard.group_written(w).is_empty());
        while shard.can_begin_ready() {
            let (write, _) = block_on(shard.begin_ready());
            assert!(write.is_none(), "a commit alone writes no group");
            let out = block_on(shard.apply_committed());
            answered.extend(out.replies.into_iter().map(|(to, _)| to));
        }
    }
    assert_eq!(answered, [0, 1, 2, 3]);
    assert!(shard.is_idle());
    assert_eq!(shard.info().log_groups_in_flight, 0);
}

#[test]
fn reads_taken_while_writes_wait_skip_connections_with_writes_queued() {
    let mut queue: std::collections::VecDeque<ShardRequest<usize>> = [
        from(2, get(1, 20)),         // taken
        from(2, put(2)),             // a write: waits, and so do its connection's reads
        from(2, get(2, 21)),         // waits behind its connection's put
        from(3, get(1, 30)),         // taken
        from(NO_ORIGIN, get(1, 40)), // no order to keep: taken
    ]
    .into_iter()
    .collect();
    let mut meanwhile = ReadsMeanwhile::default();
    let taken = meanwhile.take(&mut queue);
    assert_eq!(
        taken.iter().map(|r| r.reply).collect::<Vec<_>>(),
        [20, 30, 40]
    );
    assert_eq!(queue.iter().map(|r| r.reply).collect::<Vec<_>>(), [2, 21]);
    // Later arrivals: only they are looked at, with what came before still in force.
    queue.push_back(from(2, get(2, 22))); // behind its connection's queued put
    queue.push_back(from(4, get(2, 50)));
    assert!(meanwhile.has_unscanned(&queue));
    let taken = meanwhile.take(&mut queue);
    assert_eq!(taken.iter().map(|r| r.reply).collect::<Vec<_>>(), [50]);
    assert_eq!(
        queue.iter().map(|r| r.reply).collect::<Vec<_>>(),
        [2, 21, 22]
    );
    assert!(!meanwhile.has_unscanned(&queue));
    assert!(meanwhile.take(&mut queue).is_empty());
}

#[test]
fn state_is_rebuilt_from_the_log() {
    let disk = SimDisk::new();
    let mut shard = block_on(ShardCore::<_, usize>::open(disk.clone(), 0, CONFIG)).unwrap();
    for r in 0..5 {
        round(&mut shard, (r * 10..r * 10 + 10).map(put).collect());
    }
    let (before, _) = round(&mut shard, vec![get(42, 0)]);
    let ShardReply::Value(Some(Versioned { version, .. })) = before[0].1 else {
        panic!("key 42 answered {:?}", before[0].1);
    };
    drop(shard);
    disk.crash(None);
    let mut shard = block_on(ShardCore::<_, usize>::open(disk, 0, CONFIG)).unwrap();
    assert_eq!(shard.info().keys, 50);
    let (replies, _) = round(&mut shard, vec![get(42, 0)]);
    assert_eq!(
        replies[0].1,
        ShardReply::Value(Some(Versioned {
            version,
            value: vec![42; 10]
        }))
    );
    // Versions keep counting from where they were.
    let (replies, _) = round(&mut shard, vec![put(7)]);
    assert!(matches!(
        replies[0].1,
        ShardReply::Written(CommandResult::Written { version: v }) if v > version
    ));
}

#[test]
fn a_full_disk_fails_writes_with_disk_full_and_reads_go_on() {
    let disk = SimDisk::new();
    let mut shard = block_on(ShardCore::<_, usize>::open(disk.clone(), 0, CONFIG)).unwrap();
    round(&mut shard, vec![put(1)]);
    disk.fail_after(FaultOn::Write, 1, 28);
    let (replies, _) = round(&mut shard, vec![put(2)]);
    assert!(matches!(
        replies[0].1,
        ShardReply::Error(ErrorCode::DiskFull, _)
    ));
    let (replies, _) = round(&mut shard, vec![put(3), get(1, 9)]);
    assert!(matches!(
        replies[0].1,
        ShardReply::Error(ErrorCode::DiskFull, _)
    ));
    assert!(matches!(replies[1].1, ShardReply::Value(Some(_))));
    drop(shard);
    // Nothing acknowledged is lost, and the failed writes never appear.
    let shard = block_on(ShardCore::<_, usize>::open(disk, 0, CONFIG)).unwrap();
    assert_eq!(shard.info().keys, 1);
}

/// A shard whose tree is many times its 64-page cache (keys k0..k1999, 1000-byte values: a
/// few per leaf), checkpointed so its pages can be evicted.
fn larger_than_the_cache(disk: &SimDisk) -> ShardCore<SimDisk, usize> {
    let mut shard = block_on(ShardCore::<_, usize>::open(disk.clone(), 0, CONFIG)).unwrap();
    let big_put = |i: usize| {
        let mut request = put(i);
        if let ShardOp::Write(Command::Put { value, .. }) = &mut request.op {
            *value = vec![i as u8; 1000];
        }
        request
    };
    for r in 0..20 {
        round(&mut shard, (r * 100..r * 100 + 100).map(big_put).collect());
    }
    block_on(
        shard
            .store()
            .checkpoint(None::<fn(usize) -> std::future::Ready<()>>),
    )
    .unwrap();
    shard
}

/// A key of [`larger_than_the_cache`] whose leaf is not in the cache.
fn cold_key(shard: &ShardCore<SimDisk, usize>) -> usize {
    (0..2000)
        .find(|&i| shard.store().try_get(format!("k{i}").as_bytes()).is_none())
        .expect("some key's leaf is not cached")
}

#[test]
fn an_io_error_while_applying_a_durable_write_is_outcome_unknown() {
    let disk = SimDisk::new();
    let mut shard = larger_than_the_cache(&disk);
    round(&mut shard, (2000..2400).map(put).collect());
    // The next page read fails: applying a put to a key whose leaf left the cache.
    // Puts spread over the old keys: some leaf must be read back.
    let reads_before = shard.info().page_reads;
    disk.fail_after(FaultOn::Read, 1, 5);
    let (replies, _) = round(&mut shard, (0..2000).step_by(40).map(put).collect());
    assert!(shard.info().page_reads >= reads_before, "{replies:?}");
    for (_, reply) in &replies {
        let ShardReply::Error(code, message) = reply else {
            panic!("the batch cannot have succeeded: {reply:?}");
        };
        assert_eq!(*code, ErrorCode::OutcomeUnknown, "{message}");
    }
    assert!(shard.failed());
    // The entry was durable: reopening applies it.
    assert!(block_on(shard.try_reopen()));
    let (replies, _) = round(&mut shard, vec![get(1960, 1)]);
    assert!(
        matches!(&replies[0].1, ShardReply::Value(Some(v)) if v.version > 2400),
        "{replies:?}"
    );
}

#[test]
fn a_full_disk_heals_once_space_is_freed() {
    let disk = SimDisk::new();
    let mut shard = block_on(ShardCore::<_, usize>::open(disk.clone(), 0, CONFIG)).unwrap();
    round(&mut shard, vec![put(1)]);
    disk.fail_after(FaultOn::Write, 1, 28);
    let (replies, _) = round(&mut shard, vec![put(2)]);
    assert!(matches!(
        replies[0].1,
        ShardReply::Error(ErrorCode::DiskFull, _)
    ));
    assert!(shard.failed());
    // The injected ENOSPC was one write: space is back, and the shard reopens in place.
    assert!(block_on(shard.try_reopen()));
    let (replies, _) = round(&mut shard, vec![put(3), get(1, 10), get(2, 11)]);
    assert!(matches!(
        replies.iter().find(|(r, _)| *r == 3).unwrap().1,
        ShardReply::Written(_)
    ));
    assert!(matches!(
        replies.iter().find(|(r, _)| *r == 10).unwrap().1,
        ShardReply::Value(Some(_))
    ));
    // The refused write never appears.
    assert_eq!(
        replies.iter().find(|(r, _)| *r == 11).unwrap().1,
        ShardReply::Value(None)
    );
    assert_eq!(shard.info().keys, 2);
}

#[test]
fn restart_starts_from_the_checkpoint_and_applies_only_the_log_after_it() {
    let disk = SimDisk::new();
    let mut shard = block_on(ShardCore::<_, usize>::open(disk.clone(), 0, CONFIG)).unwrap();
    for r in 0..5 {
        round(&mut shard, (r * 100..r * 100 + 100).map(put).collect());
    }
    let done = block_on(
        shard
            .store()
            .checkpoint(None::<fn(usize) -> std::future::Ready<()>>),
    )
    .unwrap()
    .unwrap();
    round(&mut shard, (500..600).map(put).collect());
    let last_version = shard.store().last_version();
    drop(shard);
    disk.crash(None);
    let mut shard = block_on(ShardCore::<_, usize>::open(disk, 0, CONFIG)).unwrap();
    let info = shard.info();
    assert_eq!(info.keys, 600);
    assert!(
        info.checkpoint_index >= done.applied_index,
        "recovery started from the checkpoint"
    );
    let (replies, _) = round(&mut shard, vec![get(42, 0), get(555, 1)]);
    assert!(replies
        .iter()
        .all(|(_, r)| matches!(r, ShardReply::Value(Some(_)))));
    // Versions keep counting across the checkpoint.
    assert_eq!(shard.store().last_version(), last_version);
    let (replies, _) = round(&mut shard, vec![put(7)]);
    assert!(matches!(
        replies[0].1,
        ShardReply::Written(CommandResult::Written { version }) if version > last_version
    ));
}

#[test]
fn a_write_waits_for_its_connections_read_from_the_disk() {
    let disk = SimDisk::new();
    let mut shard = larger_than_the_cache(&disk);
    let cold = cold_key(&shard);
    // Connection 7 pipelines a read of the cold key, then a write to it.
    let mut taken = shard.take(vec![from(7, get(cold, 100)), from(7, put(cold))]);
    assert_eq!(taken.deferred.len(), 1, "the read needs the disk");
    assert!(taken.batch.is_none(), "the write waits for the read");
    assert_eq!(taken.leftover.len(), 1);
    assert_eq!(taken.blocked_on, Some(7));
    assert!(!shard.takes_writes(0) || shard.take(vec![from(7, put(cold))]).blocked_on.is_some());
    // Another connection's write is not held up.
    let other = shard.take(vec![from(8, put(5000))]);
    assert!(other.batch.is_some());
    // The read, run now, sees the value from before the write; then the write may go.
    let read = taken.deferred.pop().unwrap();
    let reply = block_on(shard.read(&read.op));
    shard.disk_reads().finish(read.origin);
    assert!(
        matches!(&reply, ShardReply::Value(Some(v)) if v.value == vec![cold as u8; 1000]),
        "{reply:?}"
    );
    let mut next = shard.take(taken.leftover);
    assert!(next.batch.is_some() && next.blocked_on.is_none());
    assert!(next.propose_into(&mut shard).is_empty());
}

/// An entry that is durable and committed but not yet applied when the write path fails
/// (a later group's write failed) is not "surely failed": its writers learn the outcome is
/// unknown (reopening applies it), while a proposal no group holds surely failed.
#[test]
fn a_failure_never_calls_a_durable_write_failed() {
    let disk = SimDisk::new();
    let mut shard = block_on(ShardCore::<_, usize>::open(disk.clone(), 0, CONFIG)).unwrap();
    shard.set_pipeline_when_queued(0);
    let begin = |shard: &mut ShardCore<SimDisk, usize>, i: usize| {
        let mut round = shard.take(vec![put(i)]);
        assert!(round.propose_into(shard).is_empty());
        let (write, _) = block_on(shard.begin_ready());
        assert!(block_on(shard.apply_committed()).is_empty());
        write.expect("a group")
    };
    let first = begin(&mut shard, 1);
    let second = begin(&mut shard, 2);
    // A third proposal that no group holds yet.
    let mut third = shard.take(vec![put(3)]);
    assert!(third.propose_into(&mut shard).is_empty());
    let first = block_on(first.write());
    disk.fail_after(FaultOn::Write, 1, 28);
    let second = block_on(second.write());
    assert!(second.result.is_err());
    // The first group is durable and its entry commits; the second failed.
    assert!(shard.group_written(first).is_empty());
    let failed = shard.group_written(second);
    assert_eq!(failed.replies.len(), 3);
    for (to, reply) in &failed.replies {
        let ShardReply::Error(code, _) = reply else {
            panic!("{to}: {reply:?}");
        };
        let expected = match to {
            1 => ErrorCode::OutcomeUnknown, // durable: reopening applies it
            2 => ErrorCode::DiskFull,       // its write failed: recovery cuts it
            _ => ErrorCode::DiskFull,       // never written
        };
        assert_eq!(*code, expected, "writer {to}");
    }
    assert!(block_on(shard.try_reopen()));
    let (replies, _) = round(&mut shard, vec![get(1, 10), get(2, 11), get(3, 12)]);
    assert!(matches!(reply_to(&replies, 10), ShardReply::Value(Some(_))));
    assert_eq!(reply_to(&replies, 11), ShardReply::Value(None));
    assert_eq!(reply_to(&replies, 12), ShardReply::Value(None));
}

/// A write held behind its connection's disk read goes as soon as the read finishes, even
/// if the loop missed the wake-up (the read finished while the loop was busy elsewhere).
#[test]
fn a_write_behind_a_disk_read_goes_once_the_read_finishes_without_a_wake_up() {
    let disk = SimDisk::new();
    let shard = larger_than_the_cache(&disk);
    let cold = cold_key(&shard);
    let mut driver = crate::driver::ShardDriver::new(shard);
    let mut queue: std::collections::VecDeque<_> =
        [from(7, get(cold, 100)), from(7, put(cold))].into();
    let taken = driver.take_requests(&mut queue);
    assert_eq!(taken.output.deferred.len(), 1, "the read needs the disk");
    assert_eq!(queue.len(), 1, "the write waits for it");
    assert!(!driver.has_work(&queue));
    driver.shard().disk_reads().finish(7);
    assert!(
        driver.has_work(&queue),
        "the finished read unblocks the write"
    );
    let taken = driver.take_requests(&mut queue);
    assert!(taken.took && queue.is_empty());
}

/// Asserts an MGET's values are all `new_value` or none is: it saw a command whole.
fn assert_all_new_or_all_old(reply: &ShardReply, new_value: &[u8]) {
    let ShardReply::Values(values) = reply else {
        panic!("{reply:?}");
    };
    let new: Vec<bool> = values
        .iter()
        .map(|v| v.as_ref().is_some_and(|v| v.value == new_value))
        .collect();
    assert!(
        new.iter().all(|&n| n == new[0]),
        "the MGET saw the PutMany half applied (new value per key: {new:?})"
    );
}

/// Polls `future` once with a waker that does nothing.
fn poll_once<F: std::future::Future + ?Sized>(
    future: std::pin::Pin<&mut F>,
) -> std::task::Poll<F::Output> {
    future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

#[test]
fn a_read_from_the_disk_never_answers_from_the_middle_of_a_command() {
    // A PutMany over a hundred leaves, with a 64-page pool: applying it has to wait for pages
    // in the middle of the command. An MGET of its first and last keys, run then, must see
    // both old or both new values, never the first new and the last old.
    let disk = SimDisk::new();
    let shard = larger_than_the_cache(&disk);
    let store = std::rc::Rc::clone(shard.store());
    let keys: Vec<Vec<u8>> = (0..2000)
        .step_by(20)
        .map(|i| format!("k{i}").into_bytes())
        .collect();
    let new_value = vec![0xAB; 10];
    let mut batch = BatchEncoder::new();
    batch.push(&Command::PutMany {
        pairs: keys
            .iter()
            .map(|k| (k.clone(), new_value.clone()))
            .collect(),
    });
    let batch = batch.finish();
    let index = store.applied_index() + 1;
    disk.set_yielding_reads(true);
    let mut apply = Box::pin(store.apply(index, 1, &batch));
    let (first, last) = (&keys[0], &keys[keys.len() - 1]);
    // Drive the apply until it waits for a page with its first key written and its last not.
    let mut midway = false;
    for _ in 0..10_000 {
        assert!(
            poll_once(apply.as_mut()).is_pending(),
            "the command finished first"
        );
        let first_is_new = store
            .try_get(first)
            .flatten()
            .is_some_and(|v| v.value == new_value);
        let last_is_new = store
            .try_get(last)
            .flatten()
            .is_some_and(|v| v.value == new_value);
        if store.is_applying_command() && first_is_new && !last_is_new {
            midway = true;
            break;
        }
    }
    assert!(
        midway,
        "the command never waited for a page between its first and last key"
    );
    let mget = ShardOp::MGet {
        keys: vec![first.clone(), last.clone()],
    };
    let mut read = Box::pin(crate::shard_reads::read_from(&store, 0, &mget));
    // The read is polled first, each time: it runs ahead of the command wherever it can.
    let mut applied = false;
    let reply = loop {
        if let std::task::Poll::Ready(reply) = poll_once(read.as_mut()) {
            break reply;
        }
        assert!(
            !applied,
            "the read waits for nothing once the command is whole"
        );
        applied = poll_once(apply.as_mut()).is_ready();
    };
    assert_all_new_or_all_old(&reply, &new_value);
    while !applied {
        applied = poll_once(apply.as_mut()).is_ready();
    }
}

#[test]
fn an_mget_never_mixes_values_from_before_and_after_a_command() {
    // The MGET reads a cached key at once and waits for the other key's page; meanwhile a
    // PutMany writes both (with its pages in the pool, applying it waits for nothing). The
    // MGET must answer both values from before or both from after.
    let disk = SimDisk::new();
    let shard = larger_than_the_cache(&disk);
    let store = std::rc::Rc::clone(shard.store());
    let cold = format!("k{}", cold_key(&shard)).into_bytes();
    let warm = (0..2000)
        .map(|i| format!("k{i}").into_bytes())
        .find(|k| store.try_get(k).flatten().is_some())
        .expect("some key is cached");
    disk.set_yielding_reads(true);
    let mget = ShardOp::MGet {
        keys: vec![warm.clone(), cold.clone()],
    };
    let mut read = Box::pin(crate::shard_reads::read_from(&store, 0, &mget));
    assert!(
        poll_once(read.as_mut()).is_pending(),
        "the cold key's page is read"
    );
    let new_value = vec![0xCD; 10];
    let mut batch = BatchEncoder::new();
    batch.push(&Command::PutMany {
        pairs: vec![(warm, new_value.clone()), (cold, new_value.clone())],
    });
    let batch = batch.finish();
    let index = store.applied_index() + 1;
    let mut apply = Box::pin(store.apply(index, 1, &batch));
    while poll_once(apply.as_mut()).is_pending() {}
    let reply = loop {
        if let std::task::Poll::Ready(reply) = poll_once(read.as_mut()) {
            break reply;
        }
    };
    assert_all_new_or_all_old(&reply, &new_value);
}

#[test]
fn commands_applied_as_proposed_leave_the_state_a_replay_of_the_log_leaves() {
    // Outside a cluster the shard applies the commands it proposed without decoding them
    // from the entry (`PagedStore::apply_commands`); a restart replays the same entries from
    // the log's bytes. Both must come to the same keys, values and versions.
    let disk = SimDisk::new();
    let mut shard = block_on(ShardCore::<_, usize>::open(disk.clone(), 0, CONFIG)).unwrap();
    let key = |i: usize| format!("c{i}").into_bytes();
    let write = |reply: usize, command: Command| ShardRequest {
        op: ShardOp::Write(command),
        reply,
        origin: NO_ORIGIN,
    };
    for round_number in 0..5usize {
        let mut requests = Vec::new();
        for i in 0..20 {
            let n = round_number * 100 + i;
            requests.push(write(
                n,
                match i % 8 {
                    0 => Command::Put {
                        key: key(i),
                        value: vec![n as u8; i + 1],
                    },
                    1 => Command::PutMany {
                        pairs: vec![(key(i), vec![1; 3]), (key(i + 1), vec![2; 5])],
                    },
                    2 => Command::Cas {
                        key: key(i),
                        expected_version: 0,
                        value: Some(vec![3; 4]),
                    },
                    3 => Command::Increment {
                        key: key(100),
                        delta: n as i64,
                    },
                    4 => Command::Append {
                        key: key(i),
                        value: b"+more".to_vec(),
                    },
                    5 => Command::Delete { key: key(i - 5) },
                    6 => Command::GetAndPut {
                        key: key(i),
                        value: vec![6; 2000],
                    },
                    _ => Command::PutIfExists {
                        key: key(i - 7),
                        value: vec![7; 9],
                    },
                },
            ));
        }
        round(&mut shard, requests);
    }
    let state = |shard: &mut ShardCore<SimDisk, usize>| -> Vec<(usize, ShardReply)> {
        let reads = (0..=101).map(|i| ShardRequest {
            op: ShardOp::Get { key: key(i) },
            reply: i,
            origin: NO_ORIGIN,
        });
        let mut replies = round(shard, reads.collect()).0;
        replies.sort_by_key(|(i, _)| *i);
        replies
    };
    let applied = state(&mut shard);
    assert!(
        applied
            .iter()
            .filter(|(_, r)| matches!(r, ShardReply::Value(Some(_))))
            .count()
            > 10,
        "the rounds wrote keys: {applied:?}"
    );
    drop(shard);
    let mut replayed = block_on(ShardCore::<_, usize>::open(disk, 0, CONFIG)).unwrap();
    assert_eq!(state(&mut replayed), applied);
}

/// A store whose collection "c" holds `count` documents, `_id` 0, 2, 4, ..., each padded by
/// `pad` bytes, far more than the 64-page pool holds: documents of ~200 bytes live in their
/// leaves, ones of ~2 KB in pages of their own (extents) that the leaves point to. `v` is 0
/// in each.
fn documents_larger_than_the_cache(
    disk: &SimDisk,
    count: usize,
    pad: usize,
) -> ShardCore<SimDisk, usize> {
    let shard = block_on(ShardCore::<_, usize>::open(disk.clone(), 0, CONFIG)).unwrap();
    let pad = "x".repeat(pad);
    apply_document(
        shard.store(),
        DocCommand::Insert {
            coll: "c".into(),
            docs: (0..count)
                .map(|i| {
                    let doc = format!(r#"{{"_id": {}, "v": 0, "pad": "{pad}"}}"#, i * 2);
                    Value::from_json(&doc).unwrap()
                })
                .collect(),
        },
    );
    block_on(
        shard
            .store()
            .checkpoint(None::<fn(usize) -> std::future::Ready<()>>),
    )
    .unwrap();
    // A read trims the pool, now clean, back to its budget; the first leaf stays in it.
    block_on(crate::shard_reads::read_from(
        shard.store(),
        0,
        &find_documents(r#"{"_id": 0}"#),
    ));
    shard
}

/// Applies one document command to its end, polling by hand (reads may yield).
fn apply_document(store: &PagedStore<kvs_core::log::sim::SimLogFile>, command: DocCommand) {
    let mut batch = BatchEncoder::new();
    batch.push(&Command::Document {
        body: command.encode(),
    });
    let batch = batch.finish();
    let index = store.applied_index() + 1;
    let mut applying = Box::pin(store.apply(index, 1, &batch));
    let results = loop {
        if let std::task::Poll::Ready(results) = poll_once(applying.as_mut()) {
            break results.unwrap();
        }
    };
    assert!(
        matches!(results[0], CommandResult::Document { .. }),
        "{results:?}"
    );
}

fn find_documents(filter: &str) -> ShardOp {
    let query = Value::from_json(&format!(r#"{{"filter": {filter}}}"#)).unwrap();
    ShardOp::DocRead(DocRead::Find {
        coll: "c".into(),
        query: binary::to_bytes(&query),
        mode: FindMode::Documents,
    })
}

/// The documents a find answered.
fn found_documents(reply: ShardReply) -> Vec<Value> {
    let ShardReply::Doc(bytes) = reply else {
        panic!("{reply:?}");
    };
    match binary::from_bytes(&bytes).unwrap().get("documents") {
        Some(Value::Array(docs)) => docs.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_find_never_sees_a_write_of_several_documents_half_applied() {
    // The find reads the collection from its first leaf (in the pool), waiting for the pages
    // that left the pool (documents in extents: each one's page is read after its leaf).
    // Meanwhile one command updates its first and its last document; the find must answer
    // both from before or both from after, never the first old and the last new. It notices
    // the command and reads again at a snapshot; a second update made during that read must
    // not show in it at all.
    let disk = SimDisk::new();
    let shard = documents_larger_than_the_cache(&disk, 600, 1800);
    let store = std::rc::Rc::clone(shard.store());
    let update = |v: i64| DocCommand::Update {
        coll: "c".into(),
        filter: Value::from_json(r#"{"_id": {"$in": [0, 1198]}}"#).unwrap(),
        update: Value::from_json(&format!(r#"{{"$set": {{"v": {v}}}}}"#)).unwrap(),
        multi: true,
        upsert: None,
    };
    disk.set_yielding_reads(true);
    let all = find_documents("{}");
    let mut read = Box::pin(crate::shard_reads::read_from(&store, 0, &all));
    assert!(
        poll_once(read.as_mut()).is_pending(),
        "the find waits for a page after its first leaf"
    );
    apply_document(&store, update(1));
    // Drive the find until it reads again at a snapshot, and change both documents again.
    for _ in 0..100_000 {
        if store.history_stats().snapshots > 0 {
            break;
        }
        assert!(
            poll_once(read.as_mut()).is_pending(),
            "the find answered without reading again"
        );
    }
    assert_eq!(
        store.history_stats().snapshots,
        1,
        "the find's own snapshot"
    );
    apply_document(&store, update(2));
    let reply = loop {
        if let std::task::Poll::Ready(reply) = poll_once(read.as_mut()) {
            break reply;
        }
    };
    assert_eq!(store.history_stats().snapshots, 0, "closed once answered");
    let docs = found_documents(reply);
    assert_eq!(docs.len(), 600);
    let v_of = |id: i64| {
        docs.iter()
            .find(|d| d.get("_id") == Some(&Value::Int(id)))
            .and_then(|d| d.get("v"))
            .cloned()
    };
    assert_eq!(
        (v_of(0), v_of(1198)),
        (Some(Value::Int(1)), Some(Value::Int(1))),
        "the find answers as of its snapshot: after the first update, before the second"
    );
}

#[test]
fn a_find_never_answers_from_the_middle_of_a_write_of_several_documents() {
    // An insert of a hundred documents between the stored ones touches leaves all over the
    // collection and has to wait for pages in the middle of the command. A find run then
    // must see all hundred or none.
    let disk = SimDisk::new();
    let shard = documents_larger_than_the_cache(&disk, 5000, 200);
    let store = std::rc::Rc::clone(shard.store());
    let new_docs: Vec<Value> = (0..100)
        .map(|i| Value::from_json(&format!(r#"{{"_id": {}, "v": 2}}"#, i * 100 + 1)).unwrap())
        .collect();
    let mut batch = BatchEncoder::new();
    batch.push(&Command::Document {
        body: DocCommand::Insert {
            coll: "c".into(),
            docs: new_docs,
        }
        .encode(),
    });
    let batch = batch.finish();
    let index = store.applied_index() + 1;
    disk.set_yielding_reads(true);
    let mut apply = Box::pin(store.apply(index, 1, &batch));
    let mut midway = false;
    for _ in 0..10_000 {
        if let std::task::Poll::Ready(r) = poll_once(apply.as_mut()) {
            panic!("the command finished first: {r:?}");
        }
        if store.is_applying_command() {
            midway = true;
            break;
        }
    }
    assert!(midway, "the command never waited for a page");
    let all = find_documents("{}");
    let mut read = Box::pin(crate::shard_reads::read_from(&store, 0, &all));
    // The find is polled first, each time: it runs ahead of the command wherever it can.
    let mut applied = false;
    let reply = loop {
        if let std::task::Poll::Ready(reply) = poll_once(read.as_mut()) {
            break reply;
        }
        if !applied {
            applied = poll_once(apply.as_mut()).is_ready();
        }
    };
    let inserted = found_documents(reply)
        .iter()
        .filter(|d| d.get("v") == Some(&Value::Int(2)))
        .count();
    assert!(
        inserted == 0 || inserted == 100,
        "the find saw {inserted} of the insert's 100 documents"
    );
    while !applied {
        applied = poll_once(apply.as_mut()).is_ready();
    }
}
