//! Running operations: on the leader, or forwarded to it.
//!
//! Every operation runs on the leader: writes because only the leader can propose, reads
//! because the leader can confirm it still leads (`ensure_linearizable`) and so answer with
//! the latest committed state. A member that is not the leader forwards the request, at most
//! [`HOPS_MAX`] times; a member that cannot find a leader answers with the quorum error.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use starling_store::{Command, Network, StoragePool, TokenKind};

use crate::cluster::join::{self, WRITE_TIMEOUT};
use crate::member::Member;
use crate::operation::Operation;
use crate::protocol::{Caller, Reply, Request};
use crate::view;
use crate::Error;

/// Forwards allowed before a request is refused (a loop or a leadership storm).
const HOPS_MAX: u8 = 3;
/// How long a member looks for a leader before it reports the database unavailable.
const LEADER_WAIT: Duration = Duration::from_millis(1200);
/// How long a request keeps looking for a new leader while leadership moves.
const LEADER_CHANGE_BUDGET: Duration = Duration::from_secs(5);
/// How long a forwarded request may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(20);

/// When the current search for a leader began, after an attempt from `attempt_started` to
/// `now` failed for want of one: the search goes on (`search`) unless that attempt ran longer
/// than a search may, which means it reached a leader that worked on it: a new search begins.
fn retry_search(search: Option<Instant>, attempt_started: Instant, now: Instant) -> Instant {
    match search {
        Some(began) if now.duration_since(attempt_started) < LEADER_CHANGE_BUDGET => began,
        _ => now,
    }
}

impl Member {
    /// Runs `operation` for `caller` (its origin is this member when `None`).
    pub async fn execute(&self, operation: Operation, caller: Caller) -> Result<Value, Error> {
        // A write gets an id here if its client gave none: from now on every retry of it, on
        // any member, is the same request and applies once.
        let request_id = match caller.request_id {
            Some(id) => Some(id),
            None if operation.is_write() => Some(crate::token::random_u128()?),
            None => None,
        };
        let caller = Caller {
            origin: Some(caller.origin.unwrap_or_else(|| crate::protocol::Origin {
                id: self.id(),
                name: self.name(),
            })),
            request_id,
            ..caller
        };
        // The time spent looking for a leader counts from the first attempt that failed for
        // want of one, not from the request's start: a long operation (an evacuation) whose
        // leader changes after minutes still gets the whole budget to find the next one.
        let mut search: Option<Instant> = None;
        loop {
            let attempt_started = Instant::now();
            let attempt = self.attempt(&operation, &caller).await;
            if matches!(attempt, Err(Error::LeadershipChanged(_))) {
                search = Some(retry_search(search, attempt_started, Instant::now()));
            }
            let started = search.unwrap_or(attempt_started);
            let deadline = started + LEADER_CHANGE_BUDGET;
            match attempt {
                // The request did not reach a leader (it moved, or died), or a forward's answer
                // was lost: find the leader again. Retrying is safe: a write carries its request
                // id, so the leader applies it at most once. (A write this member proposed as
                // leader and that timed out is not retried: no quorum answers it.)
                // Only the member the request started at retries; a member it was forwarded to
                // answers at once, so retries never multiply along a chain of forwards.
                Err(Error::LeadershipChanged(reason)) if caller.hops > 0 => {
                    return Err(Error::LeadershipChanged(reason))
                }
                // A transfer names the new leader within milliseconds, an election takes
                // longer: retry every few milliseconds at first, then less often.
                Err(Error::LeadershipChanged(_)) if Instant::now() < deadline => {
                    let pause = if started.elapsed() < Duration::from_millis(40) {
                        Duration::from_millis(3)
                    } else {
                        Duration::from_millis(50)
                    };
                    tokio::time::sleep(pause).await;
                }
                Err(Error::LeadershipChanged(_)) => return Err(self.unavailable().await),
                other => return other,
            }
        }
    }

    /// One try: run here if this member leads, else forward to the leader it knows.
    async fn attempt(&self, operation: &Operation, caller: &Caller) -> Result<Value, Error> {
        // Recording an imported image vouches for a file on a member: members only.
        if let Operation::Image(crate::images::ops::ImageOperation::Record { .. }) = operation {
            if caller.client.is_some() {
                return Err(Error::NotAuthorized(
                    "recording an image is for members only: use images.import".to_string(),
                ));
            }
        }
        // A status report vouches for a container on a member, and a move's settling is
        // asked by the member holding its copy: members only.
        if let Operation::Instance(
            crate::instances::ops::InstanceOperation::Report(_)
            | crate::instances::ops::InstanceOperation::SettleMove { .. },
        ) = operation
        {
            if caller.client.is_some() {
                return Err(Error::NotAuthorized(
                    "reporting an instance's status is for members only".to_string(),
                ));
            }
        }
        // A stored script's run is started on, and its end vouched for by, members only; a
        // run is carried out by the member asked.
        if let Operation::Script(script) = operation {
            if script.is_internal() && caller.client.is_some() {
                return Err(Error::NotAuthorized(
                    "running a stored script's run is for members only: use scripts.run"
                        .to_string(),
                ));
            }
            if let crate::automation::scripts::ScriptOperation::Execute { .. } = script {
                return Box::pin(self.scripts_here(script)).await;
            }
        }
        // Readiness is the member asked's own.
        if let Operation::MemberReady = operation {
            return if self.inner.instances.adopted() {
                Ok(Value::Bool(true))
            } else {
                Err(Error::Refused(format!(
                    "member {} is still looking at its containers",
                    self.name()
                )))
            };
        }
        // An import reads a file on the member asked: it runs there, whoever leads.
        if let Operation::Image(image) = operation {
            if image.is_local() && caller.hops == 0 {
                return self.image_local(image).await;
            }
        }
        let origin = caller.origin.as_ref();
        let hops = caller.hops;
        if self.is_leader() {
            self.check_caller(caller)?;
            let Some(request_id) = caller.request_id.filter(|_| operation.is_write()) else {
                return self.execute_here(operation, origin).await;
            };
            if let Some(outcome) = self.local_state(|state| {
                state
                    .requests
                    .outcome(crate::once::command_id(request_id, 0))
            }) {
                return crate::once::replay(self, operation, request_id, outcome).await;
            }
            return crate::once::scope(request_id, self.execute_here(operation, origin)).await;
        }
        if hops >= HOPS_MAX {
            // Members disagree on who leads (leadership is moving): the member the request
            // started at asks again once their views agree.
            return Err(Error::LeadershipChanged(format!(
                "request forwarded {hops} times without reaching the leader"
            )));
        }
        let Some((_, leader_address)) = self.wait_leader(LEADER_WAIT).await else {
            return Err(self.unavailable().await);
        };
        if leader_address == self.address() {
            return Err(Error::LeadershipChanged(
                "this member just stopped leading".to_string(),
            ));
        }
        let request = Request::Operation {
            operation: operation.clone(),
            caller: Caller {
                hops: hops + 1,
                ..caller.clone()
            },
        };
        let timeout = FORWARD_TIMEOUT + operation.time_budget().unwrap_or_default();
        // Boxed: the leader runs no forward, and every request's future is copied once.
        let forwarded = Box::pin(self.send_to_leader(&leader_address, &request, timeout)).await?;
        match forwarded {
            Ok(Reply::Operation(Ok(text))) => {
                serde_json::from_str(&text).map_err(|error| Error::Internal(error.to_string()))
            }
            Ok(Reply::Operation(Err(error))) | Ok(Reply::Refused(error)) => Err(error),
            Ok(other) => Err(Error::Internal(format!(
                "unexpected reply to a forwarded request: {other:?}"
            ))),
            // Not sent at all: safe to try the next leader.
            Err(Error::NotSent(reason)) => {
                self.forget_leader(&leader_address);
                Err(Error::LeadershipChanged(format!(
                    "the leader at {leader_address} is unreachable ({reason})"
                )))
            }
            // Sent, but the answer was lost: retried by `execute` with the same request id.
            Err(Error::OutcomeUnknown(reason)) => Err(Error::LeadershipChanged(format!(
                "the answer from the leader at {leader_address} was lost ({reason})"
            ))),
            Err(error) => {
                tracing::warn!(%error, leader = %leader_address, "forwarding to the leader failed");
                Err(self.unavailable().await)
            }
        }
    }

    /// Sends `request` to the leader at `leader_address`. A leader cut off by the network
    /// never answers: stop waiting for it as soon as another member is known to lead (the
    /// error), and send the request there (it is the same request, so it applies at most
    /// once).
    async fn send_to_leader(
        &self,
        leader_address: &str,
        request: &Request,
        timeout: Duration,
    ) -> Result<Result<Reply, Error>, Error> {
        tokio::select! {
            reply = self.request(leader_address, request, timeout) => Ok(reply),
            moved_to = self.leader_moves_from(leader_address) => Err(Error::LeadershipChanged(format!(
                "the leader moved from {leader_address} to {moved_to} while the request was under way"
            ))),
        }
    }

    /// The leader's own check of the original client: a member that forwarded the request may
    /// hold a stale copy of the trust registry (a spare), the leader's is current.
    fn check_caller(&self, caller: &Caller) -> Result<(), Error> {
        let Some(fingerprint) = &caller.client else {
            return Ok(());
        };
        match self.local_state(|state| state.registered(fingerprint)) {
            starling_store::Registered::Member | starling_store::Registered::Client => Ok(()),
            starling_store::Registered::Revoked => Err(crate::trust::revoked()),
            starling_store::Registered::Unknown => Err(crate::trust::not_registered(fingerprint)),
        }
    }

    /// Resolves with the new leader's address once a member other than `address` is known to
    /// lead.
    async fn leader_moves_from(&self, address: &str) -> String {
        loop {
            if let Some((_, now)) = self.leader() {
                if now != address {
                    return now;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Drops a leader learnt from heartbeats once it stops answering.
    fn forget_leader(&self, address: &str) {
        let mut heard = self.heard();
        if heard
            .leader
            .as_ref()
            .is_some_and(|(_, known)| known == address)
        {
            heard.leader = None;
        }
    }

    /// Runs an operation on this member, which leads.
    async fn execute_here(
        &self,
        operation: &Operation,
        origin: Option<&crate::protocol::Origin>,
    ) -> Result<Value, Error> {
        if !operation.is_write() {
            Box::pin(self.linearize()).await?;
        }
        if self.local_state(|state| state.members.is_empty()) {
            // Elected, but the bootstrap entry (the CA, the first member) is not applied yet.
            return Err(Error::Transport(
                "the cluster is still bootstrapping; retry".to_string(),
            ));
        }
        match operation {
            Operation::ClusterInfo => Box::pin(view::cluster_info(self, origin)).await,
            Operation::MemberReady => Ok(Value::Bool(self.inner.instances.adopted())),
            Operation::ClusterMembers => Ok(view::members(self)),
            Operation::ClusterMember { name } => view::member(self, name),
            Operation::ClusterAdd { name } => {
                let exists = self.local_state(|state| state.members.contains_key(name));
                if exists {
                    return Err(Error::Refused(format!(
                        "the cluster already has a member named \"{name}\""
                    )));
                }
                let payload = join::issue_token(self, name, TokenKind::Join).await?;
                Ok(
                    json!({"server_name": name, "token": payload.encode(), "expires_at": payload.expires_at}),
                )
            }
            Operation::ClusterTokens => Ok(view::tokens(self, TokenKind::Join)),
            Operation::ClusterRevokeToken { name } => {
                let command = Command::TokenRevoke {
                    name: name.clone(),
                    kind: TokenKind::Join,
                };
                self.propose(command, WRITE_TIMEOUT).await?;
                Ok(Value::Null)
            }
            Operation::TrustTokens => Ok(view::tokens(self, TokenKind::Client)),
            Operation::TrustRevokeToken { name } => {
                let command = Command::TokenRevoke {
                    name: name.clone(),
                    kind: TokenKind::Client,
                };
                self.propose(command, WRITE_TIMEOUT).await?;
                Ok(Value::Null)
            }
            Operation::TrustList => Ok(view::trust_list(self)),
            Operation::TrustRemove { name } => {
                let fingerprint = view::trusted_fingerprint(self, name)?;
                self.propose(Command::TrustRemove { fingerprint }, WRITE_TIMEOUT)
                    .await?;
                Ok(Value::Null)
            }
            Operation::TrustAdd { name } => {
                let payload = join::issue_token(self, name, TokenKind::Client).await?;
                Ok(
                    json!({"name": name, "token": payload.encode(), "expires_at": payload.expires_at}),
                )
            }
            Operation::ConfigGet { key } => {
                starling_store::config::validate_key(key)
                    .map_err(|error| Error::Refused(error.to_string()))?;
                Ok(Value::String(
                    self.local_state(|state| state.config_value(key))
                        .unwrap_or_default(),
                ))
            }
            Operation::ConfigSet { key, value } => {
                starling_store::config::validate(key, value)
                    .map_err(|error| Error::Refused(error.to_string()))?;
                if key == crate::placement::ops::SCRIPTLET_KEY && !value.trim().is_empty() {
                    crate::placement::scriptlet::validate(value).map_err(|error| {
                        Error::Refused(format!("invalid placement scriptlet: {error}"))
                    })?;
                }
                let command = Command::ConfigSet {
                    key: key.clone(),
                    value: value.clone(),
                };
                self.propose(command, WRITE_TIMEOUT).await?;
                self.config_changed(key).await;
                Ok(Value::Null)
            }
            Operation::ConfigUnset { key } => {
                starling_store::config::validate_key(key)
                    .map_err(|error| Error::Refused(error.to_string()))?;
                self.propose(Command::ConfigUnset { key: key.clone() }, WRITE_TIMEOUT)
                    .await?;
                self.config_changed(key).await;
                Ok(Value::Null)
            }
            Operation::ConfigAll => Ok(view::config(self)),
            Operation::ClusterMemberState { name } => Box::pin(self.member_state(name)).await,
            Operation::ClusterEdit { name, edit } => Box::pin(self.edit_member(name, edit)).await,
            Operation::ClusterSet { name, key, value } => {
                self.set_member_config(name, key, Some(value)).await
            }
            Operation::ClusterUnset { name, key } => self.set_member_config(name, key, None).await,
            Operation::ClusterGet { name, key } => self.member_get(name, key),
            Operation::ClusterRoleAdd { name, role } => self.change_role(name, role, true).await,
            Operation::ClusterRoleRemove { name, role } => {
                self.change_role(name, role, false).await
            }
            Operation::ClusterRename { from, to } => {
                self.propose(
                    Command::MemberRename {
                        from: from.clone(),
                        to: to.clone(),
                    },
                    WRITE_TIMEOUT,
                )
                .await?;
                Ok(Value::Null)
            }
            Operation::ClusterRemove { name, force } => {
                Box::pin(self.remove_member(name, *force)).await
            }
            Operation::Image(image) => Box::pin(self.image_here(image)).await,
            Operation::Group(group) => Box::pin(self.group_here(group)).await,
            Operation::Evacuation(evacuation) => Box::pin(self.evacuation_here(evacuation)).await,
            Operation::Instance(instance) => Box::pin(self.instance_here(instance)).await,
            Operation::Placement(placement) => self.placement_here(placement).await,
            Operation::Profile(profile) => Box::pin(self.profile_here(profile)).await,
            Operation::Project(project) => Box::pin(self.project_here(project)).await,
            Operation::Kv(kv) => self.kv_here(kv).await,
            Operation::Script(script) => Box::pin(self.scripts_here(script)).await,
            Operation::ClusterPromote { name, replace } => {
                Box::pin(self.promote(name, replace.as_deref())).await
            }
            Operation::ClusterDemote { name } => Box::pin(self.demote(name)).await,
            Operation::ClusterTransferLeadership { name } => {
                Box::pin(self.transfer_leadership(name.as_deref())).await
            }
            Operation::HandOver { id } => Box::pin(self.hand_over(*id)).await,
            Operation::StorageCreate {
                name,
                driver,
                config,
                member_config,
            } => {
                let pool = StoragePool {
                    name: name.clone(),
                    driver: driver.clone(),
                    description: String::new(),
                    config: config.clone(),
                    member_config: member_config.clone(),
                };
                self.propose(Command::PoolCreate { pool }, WRITE_TIMEOUT)
                    .await?;
                Ok(Value::Null)
            }
            Operation::StorageDelete { name } => {
                self.propose(Command::PoolDelete { name: name.clone() }, WRITE_TIMEOUT)
                    .await?;
                Ok(Value::Null)
            }
            Operation::StorageList => Ok(view::pools(self)),
            Operation::NetworkCreate {
                name,
                network_type,
                config,
                member_config,
            } => {
                let network = Network {
                    name: name.clone(),
                    network_type: network_type.clone(),
                    description: String::new(),
                    config: config.clone(),
                    member_config: member_config.clone(),
                };
                self.propose(Command::NetworkCreate { network }, WRITE_TIMEOUT)
                    .await?;
                Ok(Value::Null)
            }
            Operation::NetworkDelete { name } => {
                self.propose(Command::NetworkDelete { name: name.clone() }, WRITE_TIMEOUT)
                    .await?;
                Ok(Value::Null)
            }
            Operation::NetworkList => Ok(view::networks(self)),
            Operation::Join(request) => {
                let response = Box::pin(join::admit(self, request.clone())).await?;
                serde_json::to_value(response).map_err(|error| Error::Internal(error.to_string()))
            }
            Operation::TrustClaim {
                name,
                secret,
                fingerprint,
            } => {
                let ca = join::trust_client(self, name, secret, fingerprint).await?;
                Ok(Value::String(ca))
            }
        }
    }

    /// Confirms this member still leads a quorum, so local reads are up to date.
    pub(crate) async fn linearize(&self) -> Result<(), Error> {
        match tokio::time::timeout(
            WRITE_TIMEOUT,
            self.raft()
                .ensure_linearizable(openraft::ReadPolicy::ReadIndex),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) if error.forward_to_leader().is_some() => Err(Error::LeadershipChanged(
                "this member no longer leads".to_string(),
            )),
            _ => Err(self.unavailable().await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_for_a_leader_counts_from_the_first_failure_after_work() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // A first attempt that worked for 8 s before leadership moved: the search starts then.
        assert_eq!(retry_search(None, start, at(8_000)), at(8_000));
        // Quick failures after it go on with the same search.
        assert_eq!(
            retry_search(Some(at(8_000)), at(8_050), at(8_060)),
            at(8_000)
        );
        // An attempt that ran longer than a search may reached a leader: a new search.
        assert_eq!(
            retry_search(Some(at(8_000)), at(8_100), at(20_000)),
            at(20_000)
        );
    }
}
