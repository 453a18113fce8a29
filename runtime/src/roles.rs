//! Role planning: which members should vote, which should stand by, which stay spares.
//!
//! A pure function of the members, the current Raft roles and the limits; the leader runs it
//! after every heartbeat round and carries the plan out (see [`crate::health`]). The order
//! follows LXD: spread voters over failure domains that have none, promote stand-bys before
//! spares, prefer the failure domain of a lost voter, demote offline and extra voters (never
//! the leader), then fill stand-bys the same way.

use std::collections::BTreeSet;

use starling_store::NodeId;

/// A member as the planner sees it.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Raft node id.
    pub id: NodeId,
    /// Failure domain.
    pub failure_domain: String,
    /// Whether it answers heartbeats.
    pub online: bool,
}

/// Raft roles now.
#[derive(Clone, Debug, Default)]
pub struct CurrentRoles {
    /// The leader (always stays a voter).
    pub leader: NodeId,
    /// Voters.
    pub voters: BTreeSet<NodeId>,
    /// Stand-bys (Raft learners).
    pub standbys: BTreeSet<NodeId>,
}

/// The roles the leader should move to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolePlan {
    /// Voters.
    pub voters: BTreeSet<NodeId>,
    /// Stand-bys.
    pub standbys: BTreeSet<NodeId>,
}

/// Plans roles for `candidates` with at most `voters_max` voters and `standbys_max` stand-bys.
pub fn plan(
    candidates: &[Candidate],
    current: &CurrentRoles,
    voters_max: usize,
    standbys_max: usize,
) -> RolePlan {
    let online: Vec<&Candidate> = candidates
        .iter()
        .filter(|candidate| candidate.online || candidate.id == current.leader)
        .collect();
    let mut target = voters_max.min(online.len()).max(1);
    if target % 2 == 0 {
        target -= 1;
    }
    let lost_domains: BTreeSet<&str> = candidates
        .iter()
        .filter(|candidate| !candidate.online && current.voters.contains(&candidate.id))
        .map(|candidate| candidate.failure_domain.as_str())
        .collect();

    let mut voters: Vec<&Candidate> = online
        .iter()
        .copied()
        .filter(|candidate| {
            current.voters.contains(&candidate.id) || candidate.id == current.leader
        })
        .collect();
    while voters.len() > target {
        let Some(position) = demotion_choice(&voters, current.leader) else {
            break;
        };
        voters.remove(position);
    }
    while voters.len() < target {
        let chosen = voters.iter().map(|voter| voter.id).collect::<BTreeSet<_>>();
        let rest: Vec<&Candidate> = online
            .iter()
            .copied()
            .filter(|candidate| !chosen.contains(&candidate.id))
            .collect();
        let Some(best) = promotion_choice(&rest, &voters, current, &lost_domains) else {
            break;
        };
        voters.push(best);
    }

    let voter_ids: BTreeSet<NodeId> = voters.iter().map(|voter| voter.id).collect();
    let mut rest: Vec<&Candidate> = online
        .iter()
        .copied()
        .filter(|candidate| !voter_ids.contains(&candidate.id))
        .collect();
    // Stand-bys that already hold a replica first, then by id (the oldest members).
    rest.sort_by_key(|candidate| (!current.standbys.contains(&candidate.id), candidate.id));
    let standbys = rest
        .iter()
        .take(standbys_max)
        .map(|candidate| candidate.id)
        .collect();
    RolePlan {
        voters: voter_ids,
        standbys,
    }
}

/// The voter to demote: never the leader; from the most crowded failure domain, newest first.
fn demotion_choice(voters: &[&Candidate], leader: NodeId) -> Option<usize> {
    let crowding = |domain: &str| {
        voters
            .iter()
            .filter(|voter| voter.failure_domain == domain)
            .count()
    };
    voters
        .iter()
        .enumerate()
        .filter(|(_, voter)| voter.id != leader)
        .max_by_key(|(_, voter)| (crowding(&voter.failure_domain), voter.id))
        .map(|(position, _)| position)
}

/// The member to promote to voter.
fn promotion_choice<'a>(
    rest: &[&'a Candidate],
    voters: &[&Candidate],
    current: &CurrentRoles,
    lost_domains: &BTreeSet<&str>,
) -> Option<&'a Candidate> {
    let voter_domains: BTreeSet<&str> = voters
        .iter()
        .map(|voter| voter.failure_domain.as_str())
        .collect();
    rest.iter().copied().max_by_key(|candidate| {
        let uncovered = !voter_domains.contains(candidate.failure_domain.as_str());
        let replaces_lost = lost_domains.contains(candidate.failure_domain.as_str());
        let standby = current.standbys.contains(&candidate.id);
        (
            uncovered,
            replaces_lost,
            standby,
            std::cmp::Reverse(candidate.id),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(domains: &[&str]) -> Vec<Candidate> {
        domains
            .iter()
            .enumerate()
            .map(|(index, domain)| Candidate {
                id: index as u64 + 1,
                failure_domain: domain.to_string(),
                online: true,
            })
            .collect()
    }

    fn ids(list: &[u64]) -> BTreeSet<u64> {
        list.iter().copied().collect()
    }

    #[test]
    fn grows_like_lxd() {
        let current = CurrentRoles {
            leader: 1,
            voters: ids(&[1]),
            standbys: ids(&[]),
        };
        let two = plan(&candidates(&["default"; 2]), &current, 3, 2);
        assert_eq!(
            two,
            RolePlan {
                voters: ids(&[1]),
                standbys: ids(&[2])
            }
        );
        let current = CurrentRoles {
            leader: 1,
            voters: ids(&[1]),
            standbys: ids(&[2]),
        };
        let three = plan(&candidates(&["default"; 3]), &current, 3, 2);
        assert_eq!(
            three,
            RolePlan {
                voters: ids(&[1, 2, 3]),
                standbys: ids(&[])
            }
        );
        let current = CurrentRoles {
            leader: 1,
            voters: ids(&[1, 2, 3]),
            standbys: ids(&[]),
        };
        let six = plan(&candidates(&["default"; 6]), &current, 3, 2);
        assert_eq!(
            six,
            RolePlan {
                voters: ids(&[1, 2, 3]),
                standbys: ids(&[4, 5])
            }
        );
    }

    #[test]
    fn lost_voter_is_replaced_from_its_failure_domain() {
        let mut members = candidates(&["az1", "az2", "az3", "az1", "az3", "az2"]);
        members[1].online = false;
        let current = CurrentRoles {
            leader: 1,
            voters: ids(&[1, 2, 3]),
            standbys: ids(&[4, 5]),
        };
        let planned = plan(&members, &current, 3, 2);
        assert_eq!(planned.voters, ids(&[1, 3, 6]));
        assert_eq!(planned.standbys, ids(&[4, 5]));
    }

    #[test]
    fn leader_is_never_demoted() {
        let current = CurrentRoles {
            leader: 5,
            voters: ids(&[1, 2, 3, 4, 5]),
            standbys: ids(&[]),
        };
        let planned = plan(&candidates(&["default"; 5]), &current, 3, 0);
        assert!(planned.voters.contains(&5));
        assert_eq!(planned.voters.len(), 3);
    }
}
