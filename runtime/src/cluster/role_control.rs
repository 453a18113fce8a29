//! The operator's role control, planned without IO: what `cluster.promote`, `cluster.demote`
//! and `cluster.transfer_leadership` change, or why they are refused.
//!
//! An accepted change is one the automatic planner ([`super::roles::plan`]) leaves alone: each
//! change is checked by running the planner on the roles it would produce, and refused when the
//! planner would change the voters back (for instance because a failure domain would be left
//! without a voter while a member there could have one). So the next rebalancing rounds never
//! undo what an operator asked for, as long as the members and their status stay the same.
//!
//! [`promotion`], [`demotion`] and [`transfer_target`] are pure functions of a [`RoleView`];
//! [`super::role_ops`] builds the view and carries the answer out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use starling_store::NodeId;

use super::roles::{self, Candidate, CurrentRoles};

/// Everything the decisions look at, as the leader sees it.
#[derive(Clone, Debug)]
pub struct RoleView {
    /// Every member: id, failure domain, whether it is online.
    pub candidates: Vec<Candidate>,
    /// Member names by id, for the messages.
    pub names: BTreeMap<NodeId, String>,
    /// The Raft roles now (the leader, voters and stand-bys).
    pub current: CurrentRoles,
    /// The log index each follower holds (missing: nothing known).
    pub matched: BTreeMap<NodeId, u64>,
    /// The leader's last log index.
    pub last_index: u64,
    /// How far behind the leader's log a member may be and still count as caught up.
    pub lag_max: u64,
    /// `cluster.max_voters`.
    pub voters_max: usize,
    /// `cluster.max_standby`.
    pub standbys_max: usize,
}

/// A new voter set, and how to get there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoterChange {
    /// The voters after the change.
    pub voters: BTreeSet<NodeId>,
    /// The member that gains a vote (none for a demotion nobody replaces).
    pub promoted: Option<NodeId>,
    /// The member that loses its vote, if any.
    pub demoted: Option<NodeId>,
    /// Whether the demoted member keeps its replica as a stand-by (there is room under
    /// `cluster.max_standby`) or becomes a spare.
    pub demoted_stays_standby: bool,
}

/// What a demotion takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Demotion {
    /// The member does not vote: nothing to do (a demotion asked again is answered the same).
    NotVoting,
    /// The member leads: leadership moves to this voter first, then the new leader demotes it.
    TransferFirst(NodeId),
    /// Change the voters.
    Change(VoterChange),
}

/// Why a role change is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The member is not online (the leader always counts as online).
    Offline(String),
    /// A transfer named a member that does not vote.
    NotVoter(String),
    /// `replace` named a member that does not vote.
    ReplaceNotVoter(String),
    /// `replace` named the member being promoted.
    ReplaceIsTarget(String),
    /// `replace` named the leader, which cannot lose its vote while it leads.
    ReplaceIsLeader(String),
    /// The only voter can neither lose its vote nor hand leadership over.
    OnlyVoter(String),
    /// No other voter is online to take leadership.
    NoVoterToLead,
    /// The automatic planner would change the voters back; `why` says what it keeps to.
    WouldBeUndone {
        /// The voters the change would make, by name.
        asked: Vec<String>,
        /// The voters the planner would move to instead, by name.
        planned: Vec<String>,
        /// The rule the change breaks.
        why: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Offline(name) => write!(f, "member \"{name}\" is not online"),
            Refusal::NotVoter(name) => write!(f, "member \"{name}\" is not a voter"),
            Refusal::ReplaceNotVoter(name) => {
                write!(f, "replace: member \"{name}\" is not a voter")
            }
            Refusal::ReplaceIsTarget(name) => {
                write!(f, "replace: \"{name}\" is the member being promoted")
            }
            Refusal::ReplaceIsLeader(name) => write!(
                f,
                "replace: \"{name}\" leads; transfer leadership away from it first"
            ),
            Refusal::OnlyVoter(name) => write!(
                f,
                "\"{name}\" is the only voter: the cluster database needs at least one"
            ),
            Refusal::NoVoterToLead => write!(f, "no other voter is online to take leadership"),
            Refusal::WouldBeUndone {
                asked,
                planned,
                why,
            } => write!(
                f,
                "the voters would be [{}], which the automatic role planner would change to [{}]: {why}",
                asked.join(", "),
                planned.join(", ")
            ),
        }
    }
}

impl RoleView {
    fn name(&self, id: NodeId) -> String {
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }

    fn names_of(&self, ids: &BTreeSet<NodeId>) -> Vec<String> {
        ids.iter().map(|id| self.name(*id)).collect()
    }

    fn online(&self, id: NodeId) -> bool {
        id == self.current.leader
            || self
                .candidates
                .iter()
                .any(|candidate| candidate.id == id && candidate.online)
    }

    fn online_count(&self) -> usize {
        self.candidates
            .iter()
            .filter(|candidate| candidate.online || candidate.id == self.current.leader)
            .count()
    }

    fn domain(&self, id: NodeId) -> &str {
        self.candidates
            .iter()
            .find(|candidate| candidate.id == id)
            .map_or("", |candidate| candidate.failure_domain.as_str())
    }

    /// How many entries `id` is behind the leader (0 for the leader itself).
    pub fn lag(&self, id: NodeId) -> u64 {
        if id == self.current.leader {
            return 0;
        }
        let matched = self.matched.get(&id).copied().unwrap_or(0);
        self.last_index.saturating_sub(matched)
    }

    /// Whether `id` holds the log closely enough to vote at once.
    pub fn caught_up(&self, id: NodeId) -> bool {
        (self.current.voters.contains(&id) || self.current.standbys.contains(&id))
            && self.lag(id) <= self.lag_max
    }

    /// The stand-bys after a change that gives `promoted` a vote and takes `demoted`'s, and
    /// whether the demoted member keeps its replica.
    fn standbys_after(
        &self,
        promoted: Option<NodeId>,
        demoted: Option<NodeId>,
    ) -> (BTreeSet<NodeId>, bool) {
        let mut standbys = self.current.standbys.clone();
        if let Some(promoted) = promoted {
            standbys.remove(&promoted);
        }
        let stays = demoted.is_some() && standbys.len() < self.standbys_max;
        if let (Some(demoted), true) = (demoted, stays) {
            standbys.insert(demoted);
        }
        (standbys, stays)
    }

    /// Accepts `voters` only if the planner, run on the roles they make, keeps them.
    fn check_stable(
        &self,
        voters: &BTreeSet<NodeId>,
        standbys: BTreeSet<NodeId>,
    ) -> Result<(), Refusal> {
        let after = CurrentRoles {
            leader: self.current.leader,
            voters: voters.clone(),
            standbys,
        };
        let plan = roles::plan(&self.candidates, &after, self.voters_max, self.standbys_max);
        if plan.voters == *voters {
            return Ok(());
        }
        Err(Refusal::WouldBeUndone {
            asked: self.names_of(voters),
            planned: self.names_of(&plan.voters),
            why: self.broken_rule(voters),
        })
    }

    /// Which of the planner's rules `voters` breaks, in words.
    fn broken_rule(&self, voters: &BTreeSet<NodeId>) -> String {
        let target = roles::voter_target(self.online_count(), self.voters_max);
        if voters.len() != target {
            return format!(
                "the cluster keeps {target} voters (cluster.max_voters is {}, the count is odd \
                 and at most the {} online members)",
                self.voters_max,
                self.online_count()
            );
        }
        let covered: BTreeSet<&str> = voters.iter().map(|id| self.domain(*id)).collect();
        let uncovered = self.candidates.iter().find(|candidate| {
            (candidate.online || candidate.id == self.current.leader)
                && !covered.contains(candidate.failure_domain.as_str())
        });
        let crowded = voters.iter().map(|id| self.domain(*id)).find(|domain| {
            voters
                .iter()
                .filter(|id| self.domain(**id) == *domain)
                .count()
                > 1
        });
        match (uncovered, crowded) {
            (Some(uncovered), Some(crowded)) => format!(
                "failure domain \"{}\" would have no voter although \"{}\" could vote, while \
                 \"{crowded}\" would have several",
                uncovered.failure_domain,
                self.name(uncovered.id)
            ),
            _ => "voters are spread over failure domains and never offline".to_string(),
        }
    }
}

/// `cluster.promote(name [, {replace=other}])`: gives `target` a vote now. At the voter target
/// (`cluster.max_voters`, odd, at most the online members) a voter loses its vote in the same
/// change: `replace`, or the one the planner would give up first. `Ok(None)`: `target` already
/// votes, nothing to do.
pub fn promotion(
    view: &RoleView,
    target: NodeId,
    replace: Option<NodeId>,
) -> Result<Option<VoterChange>, Refusal> {
    if view.current.voters.contains(&target) {
        return Ok(None);
    }
    if !view.online(target) {
        return Err(Refusal::Offline(view.name(target)));
    }
    let voter_target = roles::voter_target(view.online_count(), view.voters_max);
    let demoted = match replace {
        Some(replace) if replace == target => {
            return Err(Refusal::ReplaceIsTarget(view.name(replace)))
        }
        Some(replace) if !view.current.voters.contains(&replace) => {
            return Err(Refusal::ReplaceNotVoter(view.name(replace)))
        }
        Some(replace) if replace == view.current.leader => {
            return Err(Refusal::ReplaceIsLeader(view.name(replace)))
        }
        Some(replace) => Some(replace),
        None if view.current.voters.len() < voter_target => None,
        None => roles::first_to_demote(&view.candidates, &view.current.voters, view.current.leader),
    };
    let mut voters = view.current.voters.clone();
    voters.insert(target);
    if let Some(demoted) = demoted {
        voters.remove(&demoted);
    }
    let (standbys, demoted_stays_standby) = view.standbys_after(Some(target), demoted);
    view.check_stable(&voters, standbys)?;
    Ok(Some(VoterChange {
        voters,
        promoted: Some(target),
        demoted,
        demoted_stays_standby,
    }))
}

/// `cluster.demote(name)`: `target` loses its vote and the planner's best candidate takes it in
/// the same change. A leader hands leadership over first. A member that does not vote is left
/// as it is, so that a demotion retried after a lost answer succeeds again.
pub fn demotion(view: &RoleView, target: NodeId) -> Result<Demotion, Refusal> {
    if !view.current.voters.contains(&target) {
        return Ok(Demotion::NotVoting);
    }
    if view.current.voters.len() == 1 {
        return Err(Refusal::OnlyVoter(view.name(target)));
    }
    if target == view.current.leader {
        return most_caught_up_voter(view)
            .map(Demotion::TransferFirst)
            .ok_or(Refusal::NoVoterToLead);
    }
    let mut voters = view.current.voters.clone();
    voters.remove(&target);
    let rest: BTreeSet<NodeId> = view
        .candidates
        .iter()
        .filter(|candidate| {
            candidate.online
                && candidate.id != target
                && !view.current.voters.contains(&candidate.id)
        })
        .map(|candidate| candidate.id)
        .collect();
    let promoted = roles::first_to_promote(&view.candidates, &rest, &voters, &view.current);
    if let Some(promoted) = promoted {
        voters.insert(promoted);
    }
    let (standbys, demoted_stays_standby) = view.standbys_after(promoted, Some(target));
    view.check_stable(&voters, standbys)?;
    Ok(Demotion::Change(VoterChange {
        voters,
        promoted,
        demoted: Some(target),
        demoted_stays_standby,
    }))
}

/// `cluster.transfer_leadership([name])`: the voter leadership should move to, `named` or the
/// most caught-up online voter. `Ok(None)`: `named` already leads.
pub fn transfer_target(view: &RoleView, named: Option<NodeId>) -> Result<Option<NodeId>, Refusal> {
    match named {
        Some(id) if id == view.current.leader => Ok(None),
        Some(id) if !view.current.voters.contains(&id) => Err(Refusal::NotVoter(view.name(id))),
        Some(id) if !view.online(id) => Err(Refusal::Offline(view.name(id))),
        Some(id) => Ok(Some(id)),
        None if view.current.voters.len() == 1 => {
            Err(Refusal::OnlyVoter(view.name(view.current.leader)))
        }
        None => most_caught_up_voter(view)
            .map(Some)
            .ok_or(Refusal::NoVoterToLead),
    }
}

/// The online voter, other than the leader, with the most of the log (the oldest on a tie).
fn most_caught_up_voter(view: &RoleView) -> Option<NodeId> {
    view.current
        .voters
        .iter()
        .copied()
        .filter(|id| *id != view.current.leader && view.online(*id))
        .min_by_key(|id| (view.lag(*id), *id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Members 1..=n in the given failure domains, all online; 1 leads; `voters` vote,
    /// `standbys` stand by; everyone is caught up.
    fn view(domains: &[&str], voters: &[NodeId], standbys: &[NodeId]) -> RoleView {
        let candidates: Vec<Candidate> = domains
            .iter()
            .enumerate()
            .map(|(index, domain)| Candidate {
                id: index as NodeId + 1,
                failure_domain: domain.to_string(),
                online: true,
            })
            .collect();
        RoleView {
            names: candidates
                .iter()
                .map(|candidate| (candidate.id, format!("m{}", candidate.id)))
                .collect(),
            matched: candidates
                .iter()
                .map(|candidate| (candidate.id, 100))
                .collect(),
            candidates,
            current: CurrentRoles {
                leader: 1,
                voters: voters.iter().copied().collect(),
                standbys: standbys.iter().copied().collect(),
            },
            last_index: 100,
            lag_max: 10,
            voters_max: 3,
            standbys_max: 2,
        }
    }

    fn ids(list: &[NodeId]) -> BTreeSet<NodeId> {
        list.iter().copied().collect()
    }

    /// The roles after `change` is carried out, as the planner will see them next round.
    fn carried_out(view: &RoleView, change: &VoterChange) -> CurrentRoles {
        let (standbys, _) = view.standbys_after(change.promoted, change.demoted);
        CurrentRoles {
            leader: view.current.leader,
            voters: change.voters.clone(),
            standbys,
        }
    }

    /// Goal: promoting a stand-by at the voter limit swaps it with the named voter, and the
    /// planner keeps the result for round after round.
    #[test]
    fn promotion_with_replace_is_stable() {
        let view = view(&["d"; 5], &[1, 2, 3], &[4, 5]);
        let change = promotion(&view, 4, Some(3)).unwrap().unwrap();
        assert_eq!(change.voters, ids(&[1, 2, 4]));
        assert_eq!(change.demoted, Some(3));
        assert!(change.demoted_stays_standby);
        let after = carried_out(&view, &change);
        for _ in 0..5 {
            let plan = roles::plan(&view.candidates, &after, 3, 2);
            assert_eq!(plan.voters, after.voters);
        }
    }

    /// Goal: without `replace`, the voter the planner gives up first makes room (the newest
    /// non-leader), never the leader.
    #[test]
    fn promotion_without_replace_demotes_the_newest_voter() {
        let view = view(&["d"; 4], &[1, 2, 3], &[4]);
        let change = promotion(&view, 4, None).unwrap().unwrap();
        assert_eq!(change.voters, ids(&[1, 2, 4]));
        assert_eq!(change.demoted, Some(3));
    }

    /// Goal: a promotion that would leave a failure domain without a voter, where a member
    /// could vote, is refused with the rule it breaks.
    #[test]
    fn promotion_that_breaks_the_domain_spread_is_refused() {
        let view = view(&["a", "b", "c", "a"], &[1, 2, 3], &[4]);
        let refusal = promotion(&view, 4, Some(3)).unwrap_err();
        let text = refusal.to_string();
        assert!(matches!(refusal, Refusal::WouldBeUndone { .. }), "{text}");
        assert!(
            text.contains("failure domain \"c\" would have no voter"),
            "{text}"
        );
    }

    /// Goal: each refusal names what is wrong.
    #[test]
    fn refusals_say_why() {
        let mut offline = view(&["d"; 4], &[1, 2, 3], &[4]);
        offline.candidates[3].online = false;
        assert_eq!(
            promotion(&offline, 4, None),
            Err(Refusal::Offline("m4".to_string()))
        );
        let view = view(&["d"; 4], &[1, 2, 3], &[4]);
        assert_eq!(
            promotion(&view, 4, Some(4)),
            Err(Refusal::ReplaceIsTarget("m4".to_string()))
        );
        assert_eq!(
            promotion(&view, 4, Some(1)),
            Err(Refusal::ReplaceIsLeader("m1".to_string()))
        );
        assert_eq!(
            demotion(&view, 4),
            Ok(Demotion::NotVoting),
            "a stand-by stays one"
        );
        assert_eq!(
            transfer_target(&view, Some(4)),
            Err(Refusal::NotVoter("m4".to_string()))
        );
        assert_eq!(promotion(&view, 2, None), Ok(None), "a voter stays one");
    }

    /// Goal: demoting a voter gives its vote to a stand-by in the same change and keeps it as
    /// a stand-by while there is room; demoting the leader moves leadership first.
    #[test]
    fn demotion_hands_the_vote_over() {
        let view = view(&["d"; 5], &[1, 2, 3], &[4]);
        let Demotion::Change(change) = demotion(&view, 3).unwrap() else {
            panic!("a follower is demoted at once");
        };
        assert_eq!(change.voters, ids(&[1, 2, 4]));
        assert_eq!(change.promoted, Some(4));
        assert!(change.demoted_stays_standby);
        let after = carried_out(&view, &change);
        assert_eq!(
            roles::plan(&view.candidates, &after, 3, 2).voters,
            after.voters
        );
        assert_eq!(demotion(&view, 1), Ok(Demotion::TransferFirst(2)));
    }

    /// Goal: a demotion nobody can replace is refused: the planner would give the vote back.
    #[test]
    fn demotion_without_a_replacement_is_refused() {
        let view = view(&["d"; 3], &[1, 2, 3], &[]);
        let refusal = demotion(&view, 3).unwrap_err();
        assert!(
            refusal.to_string().contains("the cluster keeps 3 voters"),
            "{refusal}"
        );
    }

    /// Goal: transfer without a name picks the voter with the most of the log.
    #[test]
    fn transfer_picks_the_most_caught_up_voter() {
        let mut view = view(&["d"; 3], &[1, 2, 3], &[]);
        view.matched.insert(2, 90);
        assert_eq!(transfer_target(&view, None), Ok(Some(3)));
        assert_eq!(transfer_target(&view, Some(1)), Ok(None));
        let lone = RoleView {
            current: CurrentRoles {
                leader: 1,
                voters: ids(&[1]),
                standbys: BTreeSet::new(),
            },
            ..view
        };
        assert_eq!(
            transfer_target(&lone, None),
            Err(Refusal::OnlyVoter("m1".to_string()))
        );
    }
}
