//! Recent requests and their outcomes: what makes a retried write apply once.
//!
//! A write carries a request id (random, chosen by the client or by the first member it
//! reaches). The state remembers the outcome of the last [`RECENT_REQUESTS_MAX`] ids, in log
//! order, so a command whose id was already applied — a forward retried after an ambiguous
//! failure, a client retrying after a lost answer — is not applied again and answers with the
//! first outcome. Being part of the replicated state, the memory survives a change of leader.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Request outcomes remembered at most; the oldest is forgotten first.
pub const RECENT_REQUESTS_MAX: usize = 16_384;

/// The outcomes of recent requests, by id, with their order of application. A hash map and a
/// queue: every write on every member passes here, so both operations are O(1).
///
/// Every applied write remembers one outcome and forgets one, so the map is kept small and
/// cheap to hash: an outcome is 16 bytes (`Box<str>` for the rare refusal), and the ids, random
/// 128-bit numbers, are hashed with foldhash (randomly seeded per process, like the standard
/// hasher, but a few times faster on one integer). Serialized, it is the same as a map of
/// `Result<(), String>` with the standard hasher.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecentRequests {
    /// Outcome of each remembered request id.
    outcomes: HashMap<u128, Result<(), Box<str>>, foldhash::fast::RandomState>,
    /// Request ids, oldest first.
    order: VecDeque<u128>,
}

impl RecentRequests {
    /// The outcome of `request_id`, if it was applied and is still remembered.
    pub fn outcome(&self, request_id: u128) -> Option<Result<(), String>> {
        self.outcomes.get(&request_id).map(|outcome| match outcome {
            Ok(()) => Ok(()),
            Err(refusal) => Err(refusal.to_string()),
        })
    }

    /// Remembers the outcome of `request_id`, forgetting the oldest past the bound.
    pub fn remember(&mut self, request_id: u128, outcome: Result<(), String>) {
        let outcome = outcome.map_err(String::into_boxed_str);
        if self.outcomes.insert(request_id, outcome).is_some() {
            // Already remembered (the state machine answers repeats before applying them).
            return;
        }
        self.order.push_back(request_id);
        while self.order.len() > RECENT_REQUESTS_MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.outcomes.remove(&oldest);
            }
        }
    }

    /// How many outcomes are remembered.
    pub fn len(&self) -> usize {
        self.outcomes.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_first_outcome_and_forgets_the_oldest() {
        let mut requests = RecentRequests::default();
        requests.remember(1, Err("no".into()));
        assert_eq!(requests.outcome(1), Some(Err("no".into())));
        for id in 2..=(RECENT_REQUESTS_MAX as u128 + 1) {
            requests.remember(id, Ok(()));
        }
        assert_eq!(requests.len(), RECENT_REQUESTS_MAX);
        assert_eq!(requests.outcome(1), None);
        assert_eq!(requests.outcome(2), Some(Ok(())));
    }

    /// Snapshots taken before the outcomes were kept as `Box<str>` with foldhash still load,
    /// and new ones load in a build that keeps `String`s with the standard hasher.
    #[test]
    fn serializes_as_a_map_of_results_with_the_standard_hasher() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Before {
            outcomes: HashMap<u128, Result<(), String>>,
            order: VecDeque<u128>,
        }
        let before = Before {
            outcomes: HashMap::from([(7, Ok(())), (9, Err("name taken".to_string()))]),
            order: VecDeque::from([7, 9]),
        };
        let now: RecentRequests =
            bincode::deserialize(&bincode::serialize(&before).unwrap()).unwrap();
        assert_eq!(now.outcome(7), Some(Ok(())));
        assert_eq!(now.outcome(9), Some(Err("name taken".to_string())));
        assert_eq!(now.order, VecDeque::from([7, 9]));
        let back: Before = bincode::deserialize(&bincode::serialize(&now).unwrap()).unwrap();
        assert_eq!(back, before);
    }
}
