//! Carrying out the operator's role control on the leader: `cluster.promote`,
//! `cluster.demote`, `cluster.transfer_leadership`. The decisions are in
//! [`super::role_control`]; this builds their view of the cluster and makes the Raft changes.
//!
//! A role change holds the member's role lock, which the automatic rebalancing also takes, so
//! the two never plan on each other's half-done changes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::ChangeMembers;
use serde_json::{json, Value};
use starling_store::NodeId;

use super::health::PROMOTION_LAG_MAX;
use super::role_control::{self, Demotion, Refusal, RoleView, VoterChange};
use super::roles::{Candidate, CurrentRoles};
use crate::member::Member;
use crate::view::RaftRoles;
use crate::Error;

/// How long a member being promoted may take to catch up with the leader's log.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long leadership may take to move to the chosen voter.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3);

fn refused(refusal: Refusal) -> Error {
    Error::Refused(refusal.to_string())
}

impl Member {
    /// The leader's view of members, roles and replication, for [`role_control`].
    pub(crate) fn role_view(&self) -> RoleView {
        let raft_roles = RaftRoles::of(self);
        let (candidates, names, voters_max, standbys_max) = self.local_state(|state| {
            let candidates: Vec<Candidate> = state.members.values().map(Candidate::of).collect();
            let names: BTreeMap<NodeId, String> = state
                .members
                .values()
                .map(|record| (record.id, record.name.clone()))
                .collect();
            (
                candidates,
                names,
                state.config_i64("cluster.max_voters").max(1) as usize,
                state.config_i64("cluster.max_standby").max(0) as usize,
            )
        });
        let metrics = self.raft().metrics();
        let metrics = metrics.borrow_watched();
        let matched = metrics
            .replication
            .as_ref()
            .map(|replication| {
                replication
                    .iter()
                    .map(|(id, log_id)| (*id, log_id.as_ref().map_or(0, |log_id| log_id.index)))
                    .collect()
            })
            .unwrap_or_default();
        RoleView {
            candidates,
            names,
            current: CurrentRoles {
                leader: self.id(),
                voters: raft_roles.voters.iter().copied().collect(),
                standbys: raft_roles.learners.iter().copied().collect(),
            },
            matched,
            last_index: metrics.last_log_index.unwrap_or(0),
            lag_max: PROMOTION_LAG_MAX,
            voters_max,
            standbys_max,
        }
    }

    /// `cluster.promote(name [, {replace=other}])`.
    pub(crate) async fn promote(&self, name: &str, replace: Option<&str>) -> Result<Value, Error> {
        let target = self.record(name)?;
        let replace = replace.map(|other| self.record(other)).transpose()?;
        let _roles = self.inner.role_lock.lock().await;
        let view = self.role_view();
        let Some(change) =
            role_control::promotion(&view, target.id, replace.map(|r| r.id)).map_err(refused)?
        else {
            return Ok(json!({"changed": false, "voters": self.voter_names()}));
        };
        self.catch_up(target.id, &target.address, name).await?;
        self.change_voters_to(&change).await?;
        tracing::info!(member = name, demoted = ?change.demoted, "promoted by the operator");
        Ok(json!({"changed": true, "voters": self.voter_names()}))
    }

    /// `cluster.demote(name)`. A leader first hands leadership to the most caught-up voter;
    /// the request then runs again on the new leader.
    pub(crate) async fn demote(&self, name: &str) -> Result<Value, Error> {
        let target = self.record(name)?;
        let roles = self.inner.role_lock.lock().await;
        let view = self.role_view();
        match role_control::demotion(&view, target.id).map_err(refused)? {
            Demotion::NotVoting => Ok(json!({"changed": false, "voters": self.voter_names()})),
            Demotion::TransferFirst(to) => {
                drop(roles);
                self.transfer_to(to).await?;
                Err(Error::LeadershipChanged(format!(
                    "\"{name}\" handed leadership over before its demotion"
                )))
            }
            Demotion::Change(change) => {
                if let Some(promoted) = change.promoted {
                    let (address, promoted_name) = self
                        .local_state(|state| {
                            state
                                .member_by_id(promoted)
                                .map(|record| (record.address.clone(), record.name.clone()))
                        })
                        .ok_or_else(|| {
                            Error::Internal(format!("member #{promoted} has no record"))
                        })?;
                    self.catch_up(promoted, &address, &promoted_name).await?;
                }
                self.change_voters_to(&change).await?;
                tracing::info!(member = name, promoted = ?change.promoted, "demoted by the operator");
                Ok(json!({"changed": true, "voters": self.voter_names()}))
            }
        }
    }

    /// `cluster.transfer_leadership([name])`: leadership moves to `name` (or the most
    /// caught-up voter) without a membership change.
    pub(crate) async fn transfer_leadership(&self, name: Option<&str>) -> Result<Value, Error> {
        let named = name.map(|name| self.record(name)).transpose()?;
        let view = self.role_view();
        let Some(to) =
            role_control::transfer_target(&view, named.map(|record| record.id)).map_err(refused)?
        else {
            return Ok(json!({"leader": self.name()}));
        };
        self.transfer_to(to).await?;
        let leader = self.local_state(|state| state.member_by_id(to).map(|r| r.name.clone()));
        Ok(json!({ "leader": leader }))
    }

    /// Asks Raft to hand leadership to `to` and waits until `to` leads.
    ///
    /// A transfer in the middle of a membership change cuts off its second step: the new leader
    /// inherits a joint configuration whose old half may need this member's vote, which it is
    /// about to take away (a member leaving). So the transfer waits for the change under way
    /// (the role lock), finishes a joint configuration left behind, and starts no change of its
    /// own until leadership moved. The caller must not hold the role lock.
    pub(crate) async fn transfer_to(&self, to: NodeId) -> Result<(), Error> {
        let _roles = self.inner.role_lock.lock().await;
        self.settle_membership().await?;
        let started = Instant::now();
        self.raft()
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|fatal| Error::Internal(format!("leadership transfer: {fatal}")))?;
        let mut metrics = self.raft().metrics();
        let deadline = tokio::time::Instant::now() + TRANSFER_TIMEOUT;
        loop {
            let leader = metrics.borrow_watched().current_leader;
            if leader == Some(to) {
                tracing::info!(
                    to,
                    millis = started.elapsed().as_millis() as u64,
                    "leadership transferred"
                );
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Internal("the Raft node stopped".to_string())),
                Err(_) => {
                    return Err(Error::Refused(format!(
                        "leadership did not move to member #{to} within {} s (leader now: {})",
                        TRANSFER_TIMEOUT.as_secs(),
                        leader.map_or("none".to_string(), |id| format!("#{id}"))
                    )))
                }
            }
        }
    }

    /// Makes `id` a stand-by if it holds no replica, and waits until its log is within
    /// [`PROMOTION_LAG_MAX`] of the leader's, or says how far behind it still is.
    async fn catch_up(&self, id: NodeId, address: &str, name: &str) -> Result<(), Error> {
        let roles = RaftRoles::of(self);
        if !roles.voters.contains(&id) && !roles.learners.contains(&id) {
            let adding = self
                .raft()
                .add_learner(id, crate::member::node(address), false);
            match tokio::time::timeout(CATCH_UP_TIMEOUT, adding).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    return Err(Error::Refused(format!(
                        "could not give \"{name}\" a replica: {error}"
                    )))
                }
                Err(_) => return Err(self.unavailable().await),
            }
        }
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            let view = self.role_view();
            if view.caught_up(id) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Refused(format!(
                    "\"{name}\" is not caught up after {} s: it is {} entries behind the leader \
                     (at most {} may be missing); try again",
                    CATCH_UP_TIMEOUT.as_secs(),
                    view.lag(id),
                    view.lag_max
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One membership change to `change.voters`; the demoted member stays a stand-by if the
    /// change says so, else it becomes a spare.
    async fn change_voters_to(&self, change: &VoterChange) -> Result<(), Error> {
        let voters = change.voters.clone();
        let retain = change.demoted_stays_standby;
        self.change_membership_when_free("the role change failed", |_| {
            (ChangeMembers::ReplaceAllVoters(voters.clone()), retain)
        })
        .await
    }

    fn voter_names(&self) -> Vec<String> {
        let voters: BTreeSet<NodeId> = RaftRoles::of(self).voters.into_iter().collect();
        self.local_state(|state| {
            voters
                .iter()
                .filter_map(|id| state.member_by_id(*id).map(|record| record.name.clone()))
                .collect()
        })
    }
}
