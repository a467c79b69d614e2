//! A leader's lease for reads (ADR 0019): after a quorum confirmed this peer's leadership
//! (a ReadIndex it asked at time T came back), no other leader can be elected before
//! T + the election timeout, so until T + half of it the leader answers reads from its own
//! applied state without asking the followers again.
//!
//! Why no other leader: a follower that heard from its leader less than an election timeout
//! ago ignores vote requests (raft-rs with check-quorum), its election clock counts ticks
//! and a tick is never shorter than its interval, and every quorum that could elect another
//! leader holds a member that acknowledged this one after T. Three holes, closed here and
//! in the peer: a leadership transfer this leader started makes its transferee campaign at
//! once, with votes that ignore that rule (no lease for the rest of the term once a
//! transfer began); a follower that restarts forgets whom it heard from (the peer ignores
//! vote requests for an election timeout after it opens); and a clock that stops while the
//! machine sleeps (the clock is CLOCK_BOOTTIME, which counts suspended time). Half the
//! election timeout leaves room for clocks that run at different rates.
//!
//! Sans-IO: the caller passes the time; the real clock is [`lease_clock`].

use std::collections::VecDeque;
use std::time::Duration;

/// ReadIndex contexts remembered with when they were asked; older ones are forgotten (they
/// then anchor no lease, which is only ever safe).
const ASKS_MAX: usize = 1024;
/// The first byte of the contexts this module asks with to renew a lease, which no caller's
/// context (eight bytes) has at that length.
const RENEWAL_TAG: u8 = 0xff;

/// One peer's lease. Times are on one monotonic clock (any origin).
#[derive(Debug)]
pub struct ReadLease {
    /// How long a confirmation holds; zero: leases are off.
    duration: Duration,
    /// ReadIndex contexts asked as leader, oldest first: (context, term, asked at).
    asks: VecDeque<(Vec<u8>, u64, Duration)>,
    /// The term the lease was earned in and when it ends.
    until: Option<(u64, Duration)>,
    /// The last term in which this peer began a leadership transfer.
    transfer_term: Option<u64>,
    /// When the renewal in flight was asked (None: none is).
    renewing_since: Option<Duration>,
    next_renewal: u64,
}

impl ReadLease {
    /// A lease that holds `duration` after each confirmation (zero: no leases).
    pub fn new(duration: Duration) -> ReadLease {
        ReadLease {
            duration,
            asks: VecDeque::new(),
            until: None,
            transfer_term: None,
            renewing_since: None,
            next_renewal: 0,
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.duration.is_zero()
    }

    /// A ReadIndex was asked with `context` by the leader of `term` at `now`.
    pub fn asked(&mut self, context: &[u8], term: u64, now: Duration) {
        if !self.is_enabled() {
            return;
        }
        if self.asks.len() == ASKS_MAX {
            self.asks.pop_front();
        }
        self.asks.push_back((context.to_vec(), term, now));
    }

    /// Raft confirmed the ReadIndex asked with `context`; this peer is now in `term` and
    /// leads or not. A confirmation of an ask of this term, while leading, extends the
    /// lease to the ask's time plus the lease's duration. Asks before it are forgotten
    /// (Raft confirms in order).
    pub fn confirmed(&mut self, context: &[u8], term: u64, leading: bool) {
        let Some(at) = self.asks.iter().position(|(c, _, _)| c == context) else {
            return;
        };
        let (_, asked_term, asked_at) = self.asks.drain(..=at).next_back().expect("drained one");
        if Self::is_renewal(context) {
            self.renewing_since = None;
        }
        if asked_term != term || !leading {
            return;
        }
        let end = asked_at + self.duration;
        match &mut self.until {
            Some((t, until)) if *t == term => *until = (*until).max(end),
            other => *other = Some((term, end)),
        }
    }

    /// Whether the leader of `term` may answer a read at `now` from its own state.
    pub fn holds(&self, term: u64, now: Duration) -> bool {
        self.is_enabled()
            && self.transfer_term != Some(term)
            && matches!(self.until, Some((t, until)) if t == term && now < until)
    }

    /// A context to renew the lease with, when it holds but has less than half its
    /// duration left and no renewal is in flight (or the one in flight is older than the
    /// duration: lost). The caller asks Raft's ReadIndex with it, and reports it asked.
    pub fn renewal_due(&mut self, term: u64, now: Duration) -> Option<Vec<u8>> {
        let (_, until) = self.until.filter(|_| self.holds(term, now))?;
        if until.saturating_sub(now) >= self.duration / 2 {
            return None;
        }
        if self
            .renewing_since
            .is_some_and(|since| now.saturating_sub(since) < self.duration)
        {
            return None;
        }
        self.renewing_since = Some(now);
        self.next_renewal += 1;
        let mut context = vec![RENEWAL_TAG];
        context.extend_from_slice(&self.next_renewal.to_le_bytes());
        Some(context)
    }

    /// Whether `context` is one of this module's renewals (not a caller's read).
    pub fn is_renewal(context: &[u8]) -> bool {
        context.len() == 9 && context[0] == RENEWAL_TAG
    }

    /// This peer, leading `term`, began handing its leadership over: the transferee's
    /// campaign may win votes at once, so no lease holds for the rest of the term.
    pub fn transfer_started(&mut self, term: u64) {
        self.transfer_term = Some(term);
    }
}

/// The lease's clock: CLOCK_BOOTTIME, which (unlike CLOCK_MONOTONIC, which `Instant`
/// reads) goes on counting while the machine is suspended.
pub fn lease_clock() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live value.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    assert_eq!(rc, 0, "CLOCK_BOOTTIME is readable on Linux");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_confirmation_holds_from_when_it_was_asked_and_only_in_its_term() {
        let mut lease = ReadLease::new(250 * MS);
        assert!(!lease.holds(3, Duration::ZERO));
        lease.asked(b"a", 3, 100 * MS);
        lease.asked(b"b", 3, 200 * MS);
        // Confirmed late: it still counts from when it was asked.
        lease.confirmed(b"a", 3, true);
        assert!(lease.holds(3, 349 * MS));
        assert!(!lease.holds(3, 350 * MS));
        assert!(!lease.holds(4, 200 * MS), "another term");
        lease.confirmed(b"b", 3, true);
        assert!(lease.holds(3, 449 * MS));
        // An ask of an older term, or confirmed after stepping down, earns nothing.
        lease.asked(b"c", 3, 400 * MS);
        lease.confirmed(b"c", 4, true);
        assert!(!lease.holds(4, 500 * MS));
        lease.asked(b"d", 4, 600 * MS);
        lease.confirmed(b"d", 4, false);
        assert!(!lease.holds(4, 601 * MS));
    }

    #[test]
    fn no_lease_once_a_transfer_began_in_the_term() {
        let mut lease = ReadLease::new(250 * MS);
        lease.asked(b"a", 5, Duration::ZERO);
        lease.confirmed(b"a", 5, true);
        assert!(lease.holds(5, 10 * MS));
        lease.transfer_started(5);
        assert!(!lease.holds(5, 10 * MS));
        lease.asked(b"b", 6, 20 * MS);
        lease.confirmed(b"b", 6, true);
        assert!(lease.holds(6, 30 * MS), "a new term leads afresh");
    }

    #[test]
    fn renewals_are_asked_in_the_second_half_one_at_a_time() {
        let mut lease = ReadLease::new(200 * MS);
        lease.asked(b"a", 1, Duration::ZERO);
        lease.confirmed(b"a", 1, true);
        assert_eq!(lease.renewal_due(1, 50 * MS), None, "first half");
        let renewal = lease.renewal_due(1, 120 * MS).expect("second half");
        assert!(ReadLease::is_renewal(&renewal));
        assert!(!ReadLease::is_renewal(&7u64.to_le_bytes()));
        lease.asked(&renewal, 1, 120 * MS);
        assert_eq!(lease.renewal_due(1, 150 * MS), None, "one in flight");
        lease.confirmed(&renewal, 1, true);
        assert!(lease.holds(1, 319 * MS));
        // A renewal never confirmed is asked again once it is older than the duration.
        let lost = lease.renewal_due(1, 230 * MS).unwrap();
        lease.asked(&lost, 1, 230 * MS);
        assert_eq!(lease.renewal_due(1, 300 * MS), None);
        assert!(!lease.holds(1, 320 * MS));
        assert_eq!(lease.renewal_due(1, 320 * MS), None, "no lease to renew");
    }

    #[test]
    fn off_when_the_duration_is_zero() {
        let mut lease = ReadLease::new(Duration::ZERO);
        lease.asked(b"a", 1, Duration::ZERO);
        lease.confirmed(b"a", 1, true);
        assert!(!lease.holds(1, Duration::ZERO));
    }
}
