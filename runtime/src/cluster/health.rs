//! The leader's heartbeat rounds, member status, and role rebalancing.
//!
//! Status lives in the cluster database, so every member answers the same and a new leader
//! starts from what the old one recorded. The leader records a change only ([`health_update`]): a
//! member turns `Offline` once it has not answered for `cluster.offline_threshold` seconds, and
//! `Online` when it answers again. A new leader gives every member it has not heard from yet one
//! full threshold, counted from its election, before it calls it offline.

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::future::join_all;
use openraft::ChangeMembers;
use starling_store::{Command, HealthUpdate, Member as MemberRecord, MemberStatus, NodeId};

use crate::cluster::roles::{self, Candidate, CurrentRoles};
use crate::member::{node, Member};
use crate::protocol::{Heartbeat, Reply, Request};
use crate::token::{format_time_ms, now_ms};
use crate::trust::TrustRegistry;
use crate::view::RaftRoles;
use crate::Error;

/// How far behind the leader's log a stand-by may be and still be promoted.
pub(crate) const PROMOTION_LAG_MAX: u64 = 100;

/// Runs heartbeat rounds while the member leads, until shutdown.
///
/// Between rounds, an applied entry that changes the trust registry (a member joined or left,
/// a client was trusted or revoked) sends the registry at once to the members that were
/// already there ([`push_registry`]): the members outside Raft learn it from heartbeats, and
/// until then one of them would refuse a member that just joined. The regular round keeps its
/// time.
pub(crate) async fn run(member: Member) {
    let mut trust_versions = member.inner.state.trust_versions();
    let mut next_round: Option<tokio::time::Instant> = None;
    loop {
        let interval_ms = member
            .local_state(|state| state.config_i64("cluster.heartbeat_interval_ms"))
            .max(100) as u64;
        let due = *next_round.get_or_insert_with(|| {
            tokio::time::Instant::now() + Duration::from_millis(interval_ms)
        });
        let (trust_version, known) = member.local_state(|state| {
            let known: BTreeSet<NodeId> = state.members.values().map(|record| record.id).collect();
            (state.trust_version, known)
        });
        let timeout = Duration::from_millis(interval_ms.min(1_000));
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = trust_changes(&member, &mut trust_versions, trust_version) => {
                push_registry(&member, &known, timeout).await;
                continue;
            }
            _ = member.stopping() => return,
        }
        next_round = None;
        member.remove_deleted_images();
        if !member.is_leader() {
            *member
                .inner
                .leader_since
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
            member
                .inner
                .last_seen
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clear();
            trust_acked(&member).clear();
            continue;
        }
        member
            .inner
            .leader_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_or_insert_with(Instant::now);
        heartbeat_round(&member, timeout).await;
        record_health(&member).await;
        rebalance(&member).await;
        member.replicate_images().await;
        member.resume_evacuations().await;
        member.reap_ephemeral().await;
    }
}

/// Resolves once the registry applied on this member has moved past `version` while it
/// leads; never if the state machine is gone.
async fn trust_changes(
    member: &Member,
    trust_versions: &mut tokio::sync::watch::Receiver<u64>,
    version: u64,
) {
    loop {
        if trust_versions.changed().await.is_err() {
            return std::future::pending().await;
        }
        if member.is_leader() && *trust_versions.borrow() > version {
            return;
        }
    }
}

/// The trust registry version each member last acknowledged to this leader.
fn trust_acked(
    member: &Member,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<NodeId, u64>> {
    member
        .inner
        .trust_acked
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends one heartbeat to every other member and records who answered. A member whose trust
/// registry is older than the leader's gets the registry with it.
async fn heartbeat_round(member: &Member, timeout: Duration) {
    let acked = trust_acked(member).clone();
    // The registry is built only in the rounds where some member's copy is older.
    let (records, registry): (Vec<MemberRecord>, Option<TrustRegistry>) =
        member.local_state(|state| {
            let stale = state.members.values().any(|record| {
                record.id != member.id()
                    && acked
                        .get(&record.id)
                        .is_none_or(|version| *version < state.trust_version)
            });
            (
                state.members.values().cloned().collect(),
                stale.then(|| TrustRegistry::of(state)),
            )
        });
    let addresses: Vec<String> = records
        .iter()
        .map(|record| record.address.clone())
        .collect();
    let beats = records
        .iter()
        .filter(|record| record.id != member.id())
        .map(|record| {
            let registry = registry.as_ref().filter(|registry| {
                acked
                    .get(&record.id)
                    .is_none_or(|version| *version < registry.version)
            });
            beat(member, record, &addresses, registry.cloned(), timeout)
        });
    // An answer proves the member was alive when the round started, no later; a missing answer
    // proves it was not answering once the round's timeout had passed, no earlier.
    let sent = Instant::now();
    let answered: Vec<(NodeId, u64)> = join_all(beats).await.into_iter().flatten().collect();
    let deadline = Instant::now();
    let mut trust_acked = trust_acked(member);
    let mut last_seen = member
        .inner
        .last_seen
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for (id, trust_version) in &answered {
        last_seen.insert(
            *id,
            Sighting {
                answered: sent,
                silent_since: None,
            },
        );
        trust_acked.insert(*id, *trust_version);
    }
    for record in &records {
        if record.id == member.id() || answered.iter().any(|(id, _)| *id == record.id) {
            continue;
        }
        if let Some(sighting) = last_seen.get_mut(&record.id) {
            sighting.silent_since.get_or_insert(deadline);
        }
    }
}

/// One heartbeat to `record` (with `registry` when given); answers the member's id and the
/// trust registry version it holds, or nothing if it did not answer.
async fn beat(
    member: &Member,
    record: &MemberRecord,
    addresses: &[String],
    registry: Option<TrustRegistry>,
    timeout: Duration,
) -> Option<(NodeId, u64)> {
    let request = Request::Heartbeat(Heartbeat {
        leader_id: member.id(),
        leader_address: member.address().to_string(),
        addresses: addresses.to_vec(),
        registry,
    });
    match member.request(&record.address, &request, timeout).await {
        Ok(Reply::HeartbeatAck { trust_version, .. }) => Some((record.id, trust_version)),
        _ => None,
    }
}

/// Sends the trust registry now to the members in `known` (those there before it changed)
/// that have not acknowledged it. A member that has just joined is left to the next round: it
/// got the state with its admission, and it may not listen yet (a connection tried before it
/// does waits out the connect timeout and holds up every other request to it). Records only
/// the versions acknowledged, nothing of health.
async fn push_registry(member: &Member, known: &BTreeSet<NodeId>, timeout: Duration) {
    let acked = trust_acked(member).clone();
    let (targets, addresses, registry) = member.local_state(|state| {
        let targets: Vec<MemberRecord> = state
            .members
            .values()
            .filter(|record| record.id != member.id() && known.contains(&record.id))
            .filter(|record| {
                acked
                    .get(&record.id)
                    .is_none_or(|version| *version < state.trust_version)
            })
            .cloned()
            .collect();
        let addresses: Vec<String> = state
            .members
            .values()
            .map(|record| record.address.clone())
            .collect();
        (targets, addresses, TrustRegistry::of(state))
    });
    if targets.is_empty() {
        return;
    }
    let beats = targets
        .iter()
        .map(|record| beat(member, record, &addresses, Some(registry.clone()), timeout));
    let answered: Vec<(NodeId, u64)> = join_all(beats).await.into_iter().flatten().collect();
    trust_acked(member).extend(answered);
}

/// What the leader's heartbeats saw of one member since its election.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sighting {
    /// The start of the last round the member answered.
    pub(crate) answered: Instant,
    /// The end of the first round since then that it did not answer.
    pub(crate) silent_since: Option<Instant>,
}

/// Whether a member the leader has heard from since its election is online at `now`: it is
/// offline once it has failed to answer for a whole threshold, counted from the end of the first
/// round it missed. It cannot have stopped answering later than that, so it is never called
/// offline early, however long the leader's rounds take.
pub(crate) fn online_at(sighting: Sighting, now: Instant, threshold: Duration) -> bool {
    sighting
        .silent_since
        .is_none_or(|silent| now.saturating_duration_since(silent) < threshold)
}

/// Records the members whose health changed since the last round.
async fn record_health(member: &Member) {
    let threshold = offline_threshold(member);
    let records: Vec<MemberRecord> =
        member.local_state(|state| state.members.values().cloned().collect());
    let leader_since = *member
        .inner
        .leader_since
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let last_seen = member
        .inner
        .last_seen
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let now = Instant::now();
    let now_ms = now_ms();
    let updates: Vec<HealthUpdate> = records
        .iter()
        .filter_map(|record| {
            let seen = if record.id == member.id() {
                Some(Sighting { answered: now, silent_since: None })
            } else {
                last_seen.get(&record.id).copied()
            };
            let update = health_update(record, seen, leader_since, now, now_ms, threshold)?;
            tracing::info!(member = %record.name, status = update.status.as_str(), "member status changed");
            Some(update)
        })
        .collect();
    if !updates.is_empty() {
        if let Err(error) = member
            .propose(
                Command::MemberHealth { updates },
                crate::cluster::join::WRITE_TIMEOUT,
            )
            .await
        {
            tracing::warn!(%error, "could not record member health");
        }
    }
}

/// What the leader records of one member this round (IO-free): its status when it changed
/// (`Offline` a whole threshold after it stopped answering, `Online` when it answers; one not
/// heard from since the election, `elected` at that instant, keeps an `Online` status for a
/// threshold after it), with the time of its last heartbeat. For a member this leader never
/// heard from, that time is the election's: the previous leader did not call it offline, so
/// it may have answered until then. Self-healing (`cluster.healing_threshold`) counts from
/// that time, so a member lost at a change of leader is not healed at once for having last
/// changed status long ago. `None`: nothing to record. An evacuated member is left as it is.
pub(crate) fn health_update(
    record: &MemberRecord,
    seen: Option<Sighting>,
    elected: Option<Instant>,
    now: Instant,
    now_ms: u64,
    threshold: Duration,
) -> Option<HealthUpdate> {
    if record.status == MemberStatus::Evacuated {
        return None;
    }
    let ago_ms = |then: Instant| {
        now_ms.saturating_sub(now.saturating_duration_since(then).as_millis() as u64)
    };
    let online = match seen {
        Some(seen) => online_at(seen, now, threshold),
        // Not heard yet: an online member keeps its status for one threshold after the
        // election; an offline one stays offline until it answers.
        None => {
            record.status == MemberStatus::Online
                && elected.is_some_and(|elected| now.saturating_duration_since(elected) < threshold)
        }
    };
    let status = if online {
        MemberStatus::Online
    } else {
        MemberStatus::Offline
    };
    if status == record.status {
        return None;
    }
    let last_heartbeat_ms = match (seen, elected) {
        (Some(seen), _) => ago_ms(seen.answered),
        (None, Some(elected)) => record.last_heartbeat_ms.max(ago_ms(elected)),
        (None, None) => record.last_heartbeat_ms,
    };
    Some(HealthUpdate {
        name: record.name.clone(),
        status,
        last_heartbeat_ms,
    })
}

fn offline_threshold(member: &Member) -> Duration {
    Duration::from_secs(
        member
            .local_state(|state| state.config_i64("cluster.offline_threshold"))
            .max(10) as u64,
    )
}

/// A member's answer to the leader's heartbeat.
pub(crate) fn on_heartbeat(member: &Member, heartbeat: Heartbeat) -> Reply {
    {
        let mut heard = member.heard();
        heard.leader = Some((heartbeat.leader_id, heartbeat.leader_address.clone()));
        heard.at = Some(Instant::now());
    }
    let peers = heartbeat
        .addresses
        .into_iter()
        .filter(|address| address != member.address())
        .collect();
    member.remember_peers(peers);
    if let Some(registry) = heartbeat.registry {
        member.learn_registry(registry);
    }
    Reply::HeartbeatAck {
        name: member.name(),
        trust_version: member.trust_version(),
    }
}

/// LXD's status and message of a member, from the cluster database.
pub(crate) fn status_of(record: &MemberRecord) -> (&'static str, String) {
    let message = match record.status {
        MemberStatus::Online => "Fully operational".to_string(),
        MemberStatus::Evacuated => "Unavailable due to maintenance".to_string(),
        MemberStatus::Offline => {
            let silent_s = now_ms().saturating_sub(record.last_heartbeat_ms) / 1000;
            format!(
                "No heartbeat for {silent_s}s ({})",
                format_time_ms(record.last_heartbeat_ms)
            )
        }
    };
    (record.status.as_str(), message)
}

/// Refuses an operation that needs `record`'s member to answer while it is not online.
pub(crate) fn require_online(record: &MemberRecord) -> Result<(), Error> {
    if record.status == MemberStatus::Online {
        return Ok(());
    }
    let (status, message) = status_of(record);
    Err(Error::Refused(format!(
        "member \"{}\" is {status}: {message}",
        record.name
    )))
}

/// Moves Raft roles towards the plan for the current members and limits.
async fn rebalance(member: &Member) {
    // An operator's role change is under way: plan next round, on its result.
    let Ok(_roles) = member.inner.role_lock.try_lock() else {
        return;
    };
    let raft_roles = RaftRoles::of(member);
    let (records, voters_max, standbys_max) = member.local_state(|state| {
        let records: Vec<MemberRecord> = state.members.values().cloned().collect();
        (
            records,
            state.config_i64("cluster.max_voters") as usize,
            state.config_i64("cluster.max_standby") as usize,
        )
    });
    let candidates: Vec<Candidate> = records.iter().map(Candidate::of).collect();
    let current = CurrentRoles {
        leader: member.id(),
        voters: raft_roles.voters.iter().copied().collect(),
        standbys: raft_roles.learners.iter().copied().collect(),
    };
    let plan = roles::plan(&candidates, &current, voters_max, standbys_max);
    if let Err(error) = carry_out(member, &records, &current, &plan).await {
        tracing::warn!(%error, "role rebalance");
    }
}

/// Followers whose log is within [`PROMOTION_LAG_MAX`] of the leader's, and whether a
/// membership change is still in progress.
pub(crate) fn replication_view(member: &Member) -> (bool, BTreeSet<NodeId>) {
    let metrics = member.raft().metrics();
    let metrics = metrics.borrow_watched();
    let last_index = metrics.last_log_index.unwrap_or(0);
    let caught_up = metrics
        .replication
        .as_ref()
        .map(|replication| {
            replication
                .iter()
                .filter(|(_, matched)| {
                    matched.map_or(0, |log_id| log_id.index) + PROMOTION_LAG_MAX >= last_index
                })
                .map(|(id, _)| *id)
                .collect()
        })
        .unwrap_or_default();
    (
        metrics
            .membership_config
            .membership()
            .get_joint_config()
            .len()
            > 1,
        caught_up,
    )
}

/// Moves Raft one step towards `plan`: adds the planned replicas Raft lacks as learners; then
/// changes the voters if every new voter is caught up, and otherwise removes the stand-bys the
/// plan drops once every planned stand-by is caught up.
///
/// A voter swap is one `change_membership` to the planned voter set, with `retain`: the
/// demoted voter stays a learner, which the plan counts as a stand-by. A stand-by swap adds
/// the newcomer first and removes the old stand-by only when the newcomer holds the log, so
/// the cluster never has fewer caught-up stand-bys than before the swap.
async fn carry_out(
    member: &Member,
    records: &[MemberRecord],
    current: &CurrentRoles,
    plan: &roles::RolePlan,
) -> Result<(), String> {
    let raft = member.raft();
    let (joint, caught_up) = replication_view(member);
    if joint {
        // A change under way ends by itself; one left behind by a change of leader is
        // finished here (the old half of a joint configuration may hold members that leave).
        return member
            .finish_left_joint()
            .await
            .map_err(|error| error.to_string());
    }
    let in_raft: BTreeSet<NodeId> = current.voters.union(&current.standbys).copied().collect();
    for id in plan
        .voters
        .union(&plan.standbys)
        .filter(|id| !in_raft.contains(id))
    {
        if let Some(record) = records.iter().find(|record| record.id == *id) {
            tracing::info!(member = %record.name, "adding a database replica");
            raft.add_learner(*id, node(&record.address), false)
                .await
                .map_err(|error| error.to_string())?;
        }
    }
    if plan.voters != current.voters
        && plan
            .voters
            .iter()
            .all(|id| current.voters.contains(id) || caught_up.contains(id))
    {
        tracing::info!(voters = ?plan.voters, "changing voters");
        raft.change_membership(plan.voters.clone(), true)
            .await
            .map_err(|error| error.to_string())?;
        return Ok(());
    }
    let extra: BTreeSet<NodeId> = current
        .standbys
        .iter()
        .filter(|id| !plan.standbys.contains(id) && !plan.voters.contains(id))
        .copied()
        .collect();
    let standbys_ready = plan.standbys.iter().all(|id| caught_up.contains(id));
    if !extra.is_empty() && standbys_ready {
        tracing::info!(removed = ?extra, "removing database replicas");
        raft.change_membership(ChangeMembers::RemoveNodes(extra), false)
            .await
            .map_err(|error| error.to_string())?;
    }
    Ok(())
}

/// How long a voter has to answer the ping that counts reachable voters.
const QUORUM_PING_TIMEOUT: Duration = Duration::from_millis(300);

/// Voters reachable now: those that answer a ping within [`QUORUM_PING_TIMEOUT`], this
/// member included when it votes.
pub(crate) struct Reachable {
    /// Voters that answered (or this member).
    pub reachable: usize,
    /// Voters in the membership this member knows.
    pub voters: usize,
}

impl Reachable {
    /// Voters a commit needs.
    pub fn needed(&self) -> usize {
        self.voters / 2 + 1
    }

    /// Whether a majority answered.
    pub fn quorum(&self) -> bool {
        self.voters > 0 && self.reachable >= self.needed()
    }

    /// The "no quorum" error of this count.
    pub fn no_quorum(&self) -> Error {
        Error::NoQuorum {
            reachable: self.reachable,
            voters: self.voters,
            needed: self.needed(),
        }
    }
}

/// The "no quorum" error with a fresh count ([`reachable_voters`]).
pub(crate) async fn quorum_error(member: &Member) -> Error {
    let count = reachable_voters(member).await;
    if count.quorum() {
        // A majority answers: an election is under way, and a retry will find its winner.
        return Error::LeadershipChanged(format!(
            "no leader answered in time although {} of {} voters are reachable; \
             a leader election is probably under way, retry",
            count.reachable, count.voters
        ));
    }
    count.no_quorum()
}

/// Counts the voters that answer a ping within [`QUORUM_PING_TIMEOUT`].
pub(crate) async fn reachable_voters(member: &Member) -> Reachable {
    let (voters, addresses): (Vec<NodeId>, Vec<(NodeId, String)>) = {
        let metrics = member.raft().metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let addresses = voters
            .iter()
            .filter_map(|id| membership.get_node(id).map(|node| (*id, node.addr.clone())))
            .collect();
        (voters, addresses)
    };
    let pings =
        addresses
            .iter()
            .filter(|(id, _)| *id != member.id())
            .map(|(_, address)| async move {
                // Bounded as a whole: connecting to an unreachable voter may take longer.
                let ping = member.request(address, &Request::Ping, QUORUM_PING_TIMEOUT);
                let reply = tokio::time::timeout(QUORUM_PING_TIMEOUT, ping).await;
                matches!(reply, Ok(Ok(Reply::Pong))).then_some(())
            });
    let answered = join_all(pings).await.into_iter().flatten().count();
    Reachable {
        reachable: answered + usize::from(voters.contains(&member.id())),
        voters: voters.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: MemberStatus, last_heartbeat_ms: u64) -> MemberRecord {
        MemberRecord {
            name: "m2".into(),
            id: 2,
            address: "127.0.0.1:2".into(),
            architecture: "x86_64".into(),
            description: String::new(),
            failure_domain: "default".into(),
            config: Default::default(),
            groups: vec!["default".into()],
            user_roles: vec![],
            certificate_fingerprint: "fp2".into(),
            admin_fingerprint: "admin2".into(),
            joined_at_ms: 0,
            status,
            last_heartbeat_ms,
        }
    }

    /// Goal: a member a new leader never hears from is recorded offline with the election as
    /// its last heartbeat (it may have answered the previous leader until then), not the time
    /// it last changed status, so that self-healing, counted from it, does not evacuate it at
    /// once. Before, a member online for an hour and lost at a change of leader was "past
    /// cluster.healing_threshold" the moment the new leader called it offline (`starling-chaos`:
    /// "No heartbeat for 843s" for a member seen seconds before the election).
    #[test]
    fn a_member_lost_at_an_election_counts_from_the_election() {
        let now = Instant::now();
        let threshold = Duration::from_secs(20);
        let now_ms = 10_000_000;
        let online_an_hour = record(MemberStatus::Online, now_ms - 3_600_000);
        // Within a threshold of the election: still online, nothing recorded.
        let elected = now - Duration::from_secs(5);
        assert_eq!(
            health_update(&online_an_hour, None, Some(elected), now, now_ms, threshold),
            None
        );
        // A threshold after it: offline, its last heartbeat the election's time.
        let elected = now - Duration::from_secs(21);
        let update = health_update(&online_an_hour, None, Some(elected), now, now_ms, threshold)
            .expect("offline");
        assert_eq!(update.status, MemberStatus::Offline);
        assert_eq!(update.last_heartbeat_ms, now_ms - 21_000);
        // Heard from, then silent for a threshold: offline, at its last answer.
        let sighting = Sighting {
            answered: now - Duration::from_secs(25),
            silent_since: Some(now - Duration::from_secs(24)),
        };
        let update = health_update(
            &online_an_hour,
            Some(sighting),
            Some(elected),
            now,
            now_ms,
            threshold,
        )
        .expect("offline");
        assert_eq!(
            (update.status, update.last_heartbeat_ms),
            (MemberStatus::Offline, now_ms - 25_000)
        );
        // An offline member that answers is online again, at its answer's time.
        let back = record(MemberStatus::Offline, now_ms - 60_000);
        let answered = Sighting {
            answered: now - Duration::from_millis(100),
            silent_since: None,
        };
        let update = health_update(&back, Some(answered), Some(elected), now, now_ms, threshold)
            .expect("online");
        assert_eq!(
            (update.status, update.last_heartbeat_ms),
            (MemberStatus::Online, now_ms - 100)
        );
        // An offline one still silent stays as recorded; an evacuated one is left alone.
        assert_eq!(
            health_update(&back, None, Some(elected), now, now_ms, threshold),
            None
        );
        let evacuated = record(MemberStatus::Evacuated, 0);
        assert_eq!(
            health_update(
                &evacuated,
                Some(answered),
                Some(elected),
                now,
                now_ms,
                threshold
            ),
            None
        );
    }

    /// A leader whose rounds run late (here 3 s apart, with a 1 s interval) must not call a member
    /// offline before a whole threshold has passed since it could have died: the member answered
    /// the round at 0 s and died at 2.9 s, just before the next round. The rule before this one
    /// (threshold + interval after the last answer) said offline at 11 s, 8.1 s after the death.
    #[test]
    fn a_member_is_never_offline_before_a_threshold_after_it_could_have_died() {
        let start = Instant::now();
        let threshold = Duration::from_secs(10);
        let died = start + Duration::from_millis(2_900);
        let missed_round_end = start + Duration::from_millis(3_000 + 1_000);
        let sighting = Sighting {
            answered: start,
            silent_since: Some(missed_round_end),
        };
        for tenth in 0..200 {
            let now = start + Duration::from_millis(tenth * 100);
            if !online_at(sighting, now, threshold) {
                assert!(
                    now >= died + threshold,
                    "offline {:?} after the death",
                    now - died
                );
            }
        }
        assert!(!online_at(
            sighting,
            missed_round_end + threshold,
            threshold
        ));
        let answering = Sighting {
            answered: start,
            silent_since: None,
        };
        assert!(online_at(
            answering,
            start + Duration::from_secs(60),
            threshold
        ));
    }
}
