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
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecentRequests {
    /// Outcome of each remembered request id.
    outcomes: HashMap<u128, Result<(), String>>,
    /// Request ids, oldest first.
    order: VecDeque<u128>,
}

impl RecentRequests {
    /// The outcome of `request_id`, if it was applied and is still remembered.
    pub fn outcome(&self, request_id: u128) -> Option<Result<(), String>> {
        self.outcomes.get(&request_id).cloned()
    }

    /// Remembers the outcome of `request_id`, forgetting the oldest past the bound.
    pub fn remember(&mut self, request_id: u128, outcome: Result<(), String>) {
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
}
