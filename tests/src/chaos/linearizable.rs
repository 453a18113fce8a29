//! Linearizability of one register: a Wing–Gong–Lowe search with memoization (as Porcupine
//! and Knossos do it), bounded in the states it may visit.
//!
//! The search places the operations one at a time in an order that respects real time (an
//! operation that completed before another was invoked comes first) and the register's
//! rules; it backtracks when an operation cannot be placed, and remembers every (placed set,
//! value) pair already explored, so an ordering is never explored twice. `ok` operations must
//! all be placed. `info` operations (outcome unknown) may be placed at any point after their
//! invocation, or never: a read with an unknown answer says nothing and is left out before
//! the search; a write or a cas with an unknown outcome is placed only where it changes the
//! register (placing it without effect is the same as leaving it out). `fail` operations had
//! no effect and are left out.
//!
//! Start at [`check`].

use std::collections::{BTreeSet, HashSet};
use std::hash::{Hash, Hasher};

/// One register operation, as the search sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its id in the history (for reports).
    pub id: usize,
    /// What it did and, when known, answered.
    pub call: RegisterCall,
    /// When it was invoked (ns).
    pub invoke_ns: u64,
    /// When it completed `ok` (ns); `None`: unknown outcome (`info`).
    pub ok_ns: Option<u64>,
}

/// A register operation and its answer when it completed `ok`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterCall {
    /// A read that answered this value (`None`: absent).
    Read(Option<i64>),
    /// A write of this value.
    Write(i64),
    /// A compare-and-set; `swapped` is its answer, `None` when unknown.
    Cas {
        /// The value expected.
        expected: Option<i64>,
        /// The value written when it swaps.
        new: i64,
        /// Whether it swapped (`None`: unknown).
        swapped: Option<bool>,
    },
}

/// The verdict on one register's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// There is a linearization.
    Linearizable,
    /// There is none: the search explored every ordering.
    NotLinearizable(Stuck),
    /// The search gave up after placing operations `states` times.
    Unknown {
        /// Placements made.
        states: usize,
    },
}

/// Where the deepest attempt stopped: the evidence of a violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stuck {
    /// Operations placed before it got stuck.
    pub placed: usize,
    /// The register's value there.
    pub value: Option<i64>,
    /// The `ok` operation that had to come next (the earliest to complete among those not
    /// placed) but could not be placed.
    pub blocked: Entry,
}

/// Checks that `entries` (one register's `ok` and `info` operations) are linearizable, the
/// register starting absent, placing operations at most `states_max` times.
///
/// An `info` operation is only tried right before an operation it enables (one that cannot
/// come next without it and can with it). That loses no linearization: take any, and look at
/// what follows an `info` operation X there. A write overwrites X, so X can be dropped (an
/// `info` operation may never take effect). An operation that works as well without X (a cas
/// that did not swap) can go before X, as X has no completion time to respect. Otherwise what
/// follows needs X. Without the rule, a read the search cannot place yet makes it try every
/// subset of the open `info` writes before it reorders two `ok` ones: 2^k states.
pub fn check(entries: &[Entry], states_max: usize) -> Verdict {
    check_measured(entries, states_max).0
}

/// [`check`], also answering how many placements the search made.
pub fn check_measured(entries: &[Entry], states_max: usize) -> (Verdict, usize) {
    let mut entries = entries.to_vec();
    entries.sort_by_key(|entry| (entry.invoke_ns, entry.id));
    let mut search = Search::new(&entries);
    let verdict = search.run(states_max);
    (verdict, search.steps)
}

/// The state of the search over one history.
struct Search<'a> {
    entries: &'a [Entry],
    /// Entries placed so far, as a bit set.
    placed: Vec<u64>,
    /// `ok` entries not placed, by completion time.
    open_ok: BTreeSet<(u64, usize)>,
    /// Entries not placed, by index (that is, by invocation).
    unplaced: BTreeSet<usize>,
    /// The register's value.
    value: Option<i64>,
    /// Placements made so far.
    steps: usize,
}

/// One level of the depth-first search: the candidates there and the next to try.
struct Frame {
    /// The entry placed to reach this level and the value before it; `None` at the root.
    entered_by: Option<(usize, Option<i64>)>,
    candidates: Vec<usize>,
    next: usize,
}

impl<'a> Search<'a> {
    fn new(entries: &'a [Entry]) -> Search<'a> {
        Search {
            entries,
            placed: vec![0; entries.len().div_ceil(64)],
            open_ok: entries
                .iter()
                .enumerate()
                .filter_map(|(index, entry)| entry.ok_ns.map(|at| (at, index)))
                .collect(),
            unplaced: (0..entries.len()).collect(),
            value: None,
            steps: 0,
        }
    }

    fn run(&mut self, states_max: usize) -> Verdict {
        let mut seen: HashSet<u128> = HashSet::new();
        let mut frames = vec![Frame {
            entered_by: None,
            candidates: self.candidates(),
            next: 0,
        }];
        let mut deepest: Option<Stuck> = None;
        while let Some(frame) = frames.last_mut() {
            if self.open_ok.is_empty() {
                return Verdict::Linearizable;
            }
            let Some(&index) = frame.candidates.get(frame.next) else {
                let entered_by = frame.entered_by;
                self.note_stuck(frames.len() - 1, &mut deepest);
                if let Some((index, value)) = entered_by {
                    self.unplace(index, value);
                }
                frames.pop();
                continue;
            };
            frame.next += 1;
            let Some(value) = step(
                self.value,
                self.entries[index].call,
                self.entries[index].ok_ns,
            ) else {
                continue;
            };
            let before = self.value;
            self.place(index, value);
            let by_info = self.entries[index].ok_ns.is_none();
            // Only a level reached by an `ok` entry is remembered: one reached by an `info`
            // entry explores less (below), so it must not hide the same state reached
            // otherwise.
            if !by_info && !seen.insert(self.fingerprint()) {
                self.unplace(index, before);
                continue;
            }
            self.steps += 1;
            if self.steps > states_max {
                return Verdict::Unknown { states: self.steps };
            }
            let mut candidates = self.candidates();
            if by_info {
                // An `info` operation is placed only right before one it enables (see
                // `check`): any other placement of it can be dropped or moved later.
                candidates.retain(|&next| {
                    let call = self.entries[next].call;
                    let ok_ns = self.entries[next].ok_ns;
                    step(before, call, ok_ns).is_none() && step(self.value, call, ok_ns).is_some()
                });
            }
            frames.push(Frame {
                entered_by: Some((index, before)),
                candidates,
                next: 0,
            });
        }
        match deepest {
            Some(stuck) => Verdict::NotLinearizable(stuck),
            // Only reachable with no `ok` entry at all, which returned above.
            None => Verdict::Linearizable,
        }
    }

    /// Entries that may come next: not placed, invoked before every open `ok` entry
    /// completed; `ok` entries first (in invocation order), then `info` ones.
    fn candidates(&self) -> Vec<usize> {
        let Some(&(horizon, _)) = self.open_ok.first() else {
            return Vec::new();
        };
        let window = self
            .unplaced
            .iter()
            .copied()
            .take_while(|&index| self.entries[index].invoke_ns <= horizon);
        let (ok, info): (Vec<usize>, Vec<usize>) =
            window.partition(|&index| self.entries[index].ok_ns.is_some());
        // An `info` entry is only worth trying when its value would let some entry of the
        // window come next that cannot now (the rule in `check`): with a hundred open `info`
        // writes, trying each at every dead end cost a 30-minute run 1.7 million placements.
        let (needed, any_change) = self.needed_values(ok.iter().chain(&info).copied());
        let useful = info.into_iter().filter(|&index| {
            let entry = &self.entries[index];
            match step(self.value, entry.call, entry.ok_ns) {
                Some(after) => any_change || needed.contains(&after),
                None => false,
            }
        });
        ok.into_iter().chain(useful).collect()
    }

    /// The values that would unblock an entry of `window` that cannot come next now, and
    /// whether any change of value would (a cas that did not swap, blocked because the
    /// value is the one it expected).
    fn needed_values(&self, window: impl Iterator<Item = usize>) -> (HashSet<Option<i64>>, bool) {
        let mut needed = HashSet::new();
        let mut any_change = false;
        for index in window {
            let entry = &self.entries[index];
            if step(self.value, entry.call, entry.ok_ns).is_some() {
                continue;
            }
            match (entry.call, entry.ok_ns) {
                (RegisterCall::Read(value), _) => {
                    needed.insert(value);
                }
                (RegisterCall::Cas { expected, .. }, None)
                | (
                    RegisterCall::Cas {
                        expected,
                        swapped: Some(true),
                        ..
                    },
                    Some(_),
                ) => {
                    needed.insert(expected);
                }
                (RegisterCall::Cas { .. }, Some(_)) => any_change = true,
                (RegisterCall::Write(_), _) => {}
            }
        }
        (needed, any_change)
    }

    /// The (placed set, value) pair as 128 bits: a long history's set is kilobytes, and a
    /// million of them would not fit in memory. Two independent 64-bit hashes make a
    /// collision (which could only hide a violation, never invent one) vanishingly unlikely.
    fn fingerprint(&self) -> u128 {
        let mut first = std::collections::hash_map::DefaultHasher::new();
        (&self.placed, self.value).hash(&mut first);
        let mut second = std::collections::hash_map::DefaultHasher::new();
        (0x5EED_u32, self.value, &self.placed).hash(&mut second);
        (u128::from(first.finish()) << 64) | u128::from(second.finish())
    }

    fn place(&mut self, index: usize, value: Option<i64>) {
        self.placed[index / 64] |= 1 << (index % 64);
        self.unplaced.remove(&index);
        if let Some(at) = self.entries[index].ok_ns {
            self.open_ok.remove(&(at, index));
        }
        self.value = value;
    }

    fn unplace(&mut self, index: usize, value: Option<i64>) {
        self.placed[index / 64] &= !(1 << (index % 64));
        self.unplaced.insert(index);
        if let Some(at) = self.entries[index].ok_ns {
            self.open_ok.insert((at, index));
        }
        self.value = value;
    }

    fn note_stuck(&self, placed: usize, deepest: &mut Option<Stuck>) {
        if deepest.as_ref().is_some_and(|stuck| stuck.placed >= placed) {
            return;
        }
        if let Some(&(_, index)) = self.open_ok.first() {
            *deepest = Some(Stuck {
                placed,
                value: self.value,
                blocked: self.entries[index].clone(),
            });
        }
    }
}

/// The register's value after `call` applied to `value`, or `None` when the call's answer
/// rules it out there (or, for an `info` call, when it would change nothing).
fn step(value: Option<i64>, call: RegisterCall, ok_ns: Option<u64>) -> Option<Option<i64>> {
    match call {
        RegisterCall::Read(read) => (read == value).then_some(value),
        RegisterCall::Write(written) => Some(Some(written)),
        RegisterCall::Cas { expected, new, .. } if ok_ns.is_none() => {
            (value == expected).then_some(Some(new))
        }
        RegisterCall::Cas {
            expected,
            new,
            swapped: Some(true),
        } => (value == expected).then_some(Some(new)),
        RegisterCall::Cas {
            expected,
            swapped: Some(false) | None,
            ..
        } => (value != expected).then_some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: usize = 100_000;

    fn ok(id: usize, call: RegisterCall, invoke_ns: u64, ok_ns: u64) -> Entry {
        Entry {
            id,
            call,
            invoke_ns,
            ok_ns: Some(ok_ns),
        }
    }

    fn info(id: usize, call: RegisterCall, invoke_ns: u64) -> Entry {
        Entry {
            id,
            call,
            invoke_ns,
            ok_ns: None,
        }
    }

    fn read(value: Option<i64>) -> RegisterCall {
        RegisterCall::Read(value)
    }

    fn write(value: i64) -> RegisterCall {
        RegisterCall::Write(value)
    }

    fn cas(expected: Option<i64>, new: i64, swapped: Option<bool>) -> RegisterCall {
        RegisterCall::Cas {
            expected,
            new,
            swapped,
        }
    }

    fn stuck_on(verdict: Verdict) -> usize {
        match verdict {
            Verdict::NotLinearizable(stuck) => stuck.blocked.id,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let history = [
            ok(0, read(None), 0, 10),
            ok(1, write(1), 20, 30),
            ok(2, read(Some(1)), 40, 50),
            ok(3, cas(Some(1), 2, Some(true)), 60, 70),
            ok(4, cas(Some(1), 3, Some(false)), 80, 90),
            ok(5, read(Some(2)), 100, 110),
        ];
        assert_eq!(check(&history, STATES), Verdict::Linearizable);
    }

    /// A read that returns an overwritten value after the overwrite completed.
    #[test]
    fn stale_read_is_a_violation() {
        let history = [
            ok(0, write(1), 0, 10),
            ok(1, write(2), 20, 30),
            ok(2, read(Some(1)), 40, 50),
        ];
        assert_eq!(stuck_on(check(&history, STATES)), 2);
    }

    /// An acknowledged write that a later read does not see.
    #[test]
    fn lost_write_is_a_violation() {
        let history = [ok(0, write(1), 0, 10), ok(1, read(None), 20, 30)];
        assert_eq!(stuck_on(check(&history, STATES)), 1);
    }

    /// Reads concurrent with a write may see either value, but once one read saw the new
    /// value a later read cannot see the old one.
    #[test]
    fn concurrent_reads_see_either_value_but_never_go_back() {
        let either = [
            ok(0, write(1), 0, 100),
            ok(1, read(None), 10, 20),
            ok(2, read(Some(1)), 30, 40),
        ];
        assert_eq!(check(&either, STATES), Verdict::Linearizable);
        let back = [
            ok(0, write(1), 0, 100),
            ok(1, read(Some(1)), 10, 20),
            ok(2, read(None), 30, 40),
        ];
        assert_eq!(stuck_on(check(&back, STATES)), 2);
    }

    /// A cas concurrent with a write: it may go before the write (then the write's value
    /// stays), but its value cannot be what a later read sees when the write came after it.
    #[test]
    fn cas_after_concurrent_write() {
        let before_the_write = [
            ok(0, write(1), 0, 10),
            ok(1, write(2), 20, 40),
            ok(2, cas(Some(1), 3, Some(true)), 25, 35),
            ok(3, read(Some(2)), 50, 60),
        ];
        assert_eq!(check(&before_the_write, STATES), Verdict::Linearizable);
        let impossible = [
            ok(0, write(1), 0, 10),
            ok(1, write(2), 20, 40),
            ok(2, cas(Some(1), 3, Some(true)), 25, 35),
            ok(3, read(Some(3)), 50, 60),
        ];
        assert_eq!(stuck_on(check(&impossible, STATES)), 3);
        // A cas that swapped although the value it expected was overwritten before it began.
        let swapped_stale = [
            ok(0, write(1), 0, 10),
            ok(1, write(2), 20, 30),
            ok(2, cas(Some(1), 3, Some(true)), 40, 50),
        ];
        assert_eq!(stuck_on(check(&swapped_stale, STATES)), 2);
        // A cas that did not swap although the value was what it expected.
        let refused_wrongly = [
            ok(0, write(1), 0, 10),
            ok(1, cas(Some(1), 3, Some(false)), 20, 30),
        ];
        assert_eq!(stuck_on(check(&refused_wrongly, STATES)), 1);
    }

    /// An `info` write may take effect at any time after its invocation...
    #[test]
    fn info_write_may_take_effect_late() {
        let history = [
            info(0, write(5), 0),
            ok(1, read(None), 10, 20),
            ok(2, read(Some(5)), 1_000, 1_010),
        ];
        assert_eq!(check(&history, STATES), Verdict::Linearizable);
    }

    /// ...or never.
    #[test]
    fn info_write_may_never_take_effect() {
        let history = [
            ok(0, write(1), 0, 10),
            info(1, write(5), 20),
            ok(2, read(Some(1)), 1_000, 1_010),
        ];
        assert_eq!(check(&history, STATES), Verdict::Linearizable);
    }

    /// But not before its invocation, and not undone once seen.
    #[test]
    fn info_write_cannot_take_effect_before_it_was_invoked_or_be_undone() {
        let too_early = [ok(0, read(Some(5)), 0, 10), info(1, write(5), 20)];
        assert_eq!(stuck_on(check(&too_early, STATES)), 0);
        let undone = [
            info(0, write(5), 0),
            ok(1, read(Some(5)), 10, 20),
            ok(2, read(None), 30, 40),
        ];
        assert_eq!(stuck_on(check(&undone, STATES)), 2);
    }

    /// An `info` cas that swapped explains a read of its value; one whose expected value
    /// never held cannot.
    #[test]
    fn info_cas_both_ways() {
        let swapped = [
            ok(0, write(1), 0, 10),
            info(1, cas(Some(1), 7, None), 20),
            ok(2, read(Some(7)), 100, 110),
        ];
        assert_eq!(check(&swapped, STATES), Verdict::Linearizable);
        let impossible = [
            ok(0, write(1), 0, 10),
            info(1, cas(Some(2), 7, None), 20),
            ok(2, read(Some(7)), 100, 110),
        ];
        assert_eq!(stuck_on(check(&impossible, STATES)), 2);
    }

    /// An `info` write explains a cas that did not swap although, without it, the value would
    /// have been the one expected.
    #[test]
    fn info_write_explains_a_refused_cas() {
        let history = [
            ok(0, write(1), 0, 10),
            info(1, write(9), 20),
            ok(2, cas(Some(1), 3, Some(false)), 100, 110),
        ];
        assert_eq!(check(&history, STATES), Verdict::Linearizable);
    }

    /// Open `info` writes do not make the search try their subsets: two concurrent writes
    /// that must be reordered behind 40 of them are found at once, and a read nothing
    /// explains is refused at once.
    #[test]
    fn open_info_writes_do_not_blow_the_search_up() {
        let mut history = Vec::new();
        for index in 0..40 {
            history.push(info(index, write(1_000 + index as i64), index as u64));
        }
        history.push(ok(40, write(1), 100, 200));
        history.push(ok(41, write(2), 110, 200));
        history.push(ok(42, read(Some(1)), 300, 310));
        history.push(ok(43, read(Some(1_007)), 400, 410));
        assert_eq!(check(&history, 10_000), Verdict::Linearizable);
        history.push(ok(44, read(Some(-1)), 500, 510));
        assert_eq!(stuck_on(check(&history, 10_000)), 44);
    }

    /// Many concurrent operations: a bound on the search turns into `Unknown`, not a hang.
    #[test]
    fn search_is_bounded() {
        let mut history = Vec::new();
        for index in 0..20 {
            history.push(ok(index, write(index as i64), index as u64, 1_000));
        }
        history.push(ok(20, read(Some(-1)), 2_000, 2_100));
        match check(&history, 1_000) {
            Verdict::Unknown { states } => assert!(states > 1_000),
            other => panic!("expected the bound to stop the search, got {other:?}"),
        }
        // Valid, long and concurrent: found at once.
        let mut long = Vec::new();
        for index in 0..2_000u64 {
            let at = index * 10;
            long.push(ok(index as usize * 2, write(index as i64), at, at + 15));
            long.push(ok(
                index as usize * 2 + 1,
                read(Some(index as i64)),
                at + 16,
                at + 18,
            ));
        }
        assert_eq!(check(&long, STATES), Verdict::Linearizable);
    }
}
