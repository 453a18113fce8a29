//! Each member watches its own containers and keeps their records true.
//!
//! Every [`WATCH_INTERVAL`] the member compares what the driver sees of each instance it is
//! the location of with the record, and acts as [`decide`] says (IO-free): a container whose
//! init exited is reported `Stopped`; one running that the record does not show running
//! (adopted after a `kill -9` of the daemon: the driver's monitors outlive it) is reported
//! `Running`; one made whose record still says `Creating` (the member was killed before it
//! answered its create, or the leader before it recorded the answer) is reported as it is;
//! one that was running when the member shut down cleanly (`volatile.last_state.power=RUNNING`)
//! or whose init asked for a reboot is started again.
//! An instance whose lock is held (an operation on it is under way) is left for next time.
//!
//! A clean shutdown ([`Member::stop_instances`]) stops the running containers and records
//! them with `volatile.last_state.power=RUNNING`, as LXD does.

use std::time::Duration;

use starling_store::instances::{Instance, InstanceStatus, DELETING_KEY};

use super::config::LAST_POWER_KEY;
use super::driver::{InstanceKey, State};
use super::ops::key_of;
use crate::member::Member;

/// How often a member compares its containers with their records.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// How many containers one blocking task of the watcher observes.
const OBSERVE_BATCH: usize = 64;
/// Every how many rounds the watcher looks at every container, the quiet ones too
/// ([`Quiet`]): a container whose files went behind the member's back is seen within this
/// many rounds.
const FULL_EVERY_ROUNDS: u64 = 8;

/// The containers the watcher found stopped, recorded so, with nothing to do, and the
/// member's count of starts when it looked. Only a start makes a stopped container run, and
/// every start goes through the member ([`Member::start_local`] counts it), so until the next
/// start such a container cannot change: the rounds in between skip it, but every
/// [`FULL_EVERY_ROUNDS`]th. Thousands of stopped instances then cost the watcher a look
/// every two seconds instead of four a second.
#[derive(Debug, Default)]
pub struct Quiet {
    keys: std::collections::HashSet<InstanceKey>,
    starts: u64,
}

/// Whether an instance stays quiet after a look: recorded stopped (or failed), not to be
/// started again, seen stopped without asking for a restart (or not made), nothing to do.
pub fn is_quiet(
    recorded: InstanceStatus,
    last_power_running: bool,
    seen: Seen,
    action: Action,
) -> bool {
    action == Action::Nothing
        && !last_power_running
        && matches!(recorded, InstanceStatus::Stopped | InstanceStatus::Error)
        && matches!(seen, Seen::Stopped { reboot: false } | Seen::Missing)
}

/// Whether the watcher may skip an instance this round: it was quiet at the last look, no
/// container started here since, its record still says it is stopped and not to be started,
/// and this is not a round that looks at every container.
pub fn may_skip(
    was_quiet: bool,
    started_since: bool,
    full_round: bool,
    recorded: InstanceStatus,
    last_power_running: bool,
) -> bool {
    was_quiet
        && !started_since
        && !full_round
        && !last_power_running
        && matches!(recorded, InstanceStatus::Stopped | InstanceStatus::Error)
}
/// How long a clean shutdown waits for each container to shut down before killing it.
pub const SHUTDOWN_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the driver sees of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Init runs.
    Running,
    /// Not running; `reboot`: init ended asking for a restart.
    Stopped {
        /// Init asked for a restart (`reboot` in the container).
        reboot: bool,
    },
    /// No container here (not unpacked yet, or deleted).
    Missing,
}

/// What to do about one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The record is right.
    Nothing,
    /// Report this status.
    Report(InstanceStatus),
    /// Start the container again.
    Start,
}

/// What to do, from the record's status, whether it was running at a clean shutdown, what
/// the driver sees, and whether this member answered the leader's create of it a moment ago
/// (`create_answered`: the leader records its status, see [`CREATE_ANSWER_GRACE`]).
pub fn decide(
    recorded: InstanceStatus,
    last_power_running: bool,
    seen: Seen,
    create_answered: bool,
) -> Action {
    match (recorded, seen) {
        // Not made yet (its create is on the way, or never came), or deleted.
        (_, Seen::Missing) => Action::Nothing,
        (InstanceStatus::Running, Seen::Running) => Action::Nothing,
        (_, Seen::Running) => Action::Report(InstanceStatus::Running),
        // Made, and the leader that asked is recording it.
        (InstanceStatus::Creating, Seen::Stopped { .. }) if create_answered => Action::Nothing,
        // Made, but its create was never recorded (the member was killed before it answered,
        // or the leader before it recorded the answer; a create under way holds the lock, so
        // the watcher does not get here meanwhile).
        (InstanceStatus::Creating, Seen::Stopped { .. }) => Action::Report(InstanceStatus::Stopped),
        // A failed start recorded the reason: not tried again until someone asks.
        (InstanceStatus::Error, Seen::Stopped { .. }) => Action::Nothing,
        (_, Seen::Stopped { .. }) if last_power_running => Action::Start,
        (InstanceStatus::Running, Seen::Stopped { reboot: true }) => Action::Start,
        (InstanceStatus::Running, Seen::Stopped { reboot: false }) => {
            Action::Report(InstanceStatus::Stopped)
        }
        (_, Seen::Stopped { .. }) => Action::Nothing,
    }
}

/// Whether the instance was running when its member shut down cleanly (to start again).
fn last_power_running(instance: &Instance) -> bool {
    instance
        .config
        .get(LAST_POWER_KEY)
        .is_some_and(|value| value == "RUNNING")
}

/// How long a `Creating` record whose create this member answered is left to the leader that
/// asked (it records the answer at once; a client retry asks again through the next leader).
pub const CREATE_ANSWER_GRACE: Duration = Duration::from_secs(30);

/// Every how many rounds the watcher looks for stale copies.
const STALE_EVERY_ROUNDS: u64 = 20;
/// How long a root file system received for a move is kept although the record does not name
/// this member yet (the leader records the move right after the copy).
pub const ARRIVAL_GRACE: Duration = Duration::from_secs(600);

/// Whether a container here, which no move stamped, that this member's copy of the state
/// does not place here is a stale copy to remove: only when the leader's answer (`located`,
/// the instance's location, or `None` when there is no such instance) names another member,
/// and no move to here is under way (`arrived_recently`). A copy a move stamped is settled
/// with the leader instead ([`Member::settle_move`](crate::member::Member)).
pub fn is_stale(me: &str, located: Option<&str>, arrived_recently: bool) -> bool {
    !arrived_recently && located != Some(me)
}

/// Starts the member's watcher; it ends when the member shuts down. Packed and half-received
/// root file systems of moves cut off by a restart are removed first.
pub(crate) fn spawn(member: Member) {
    tokio::spawn(async move {
        let mut round = 0u64;
        loop {
            // The first round at once: `waitready` waits for it.
            let pause = if round == 0 {
                Duration::ZERO
            } else {
                WATCH_INTERVAL
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = member.stopping() => return,
            }
            if member.inner.instances.is_shutting_down() {
                return;
            }
            if round == 0 {
                let pool = member.driver().pool_dir().to_path_buf();
                let _ = tokio::task::spawn_blocking(move || {
                    for dir in ["imports", "exports"] {
                        let _ = std::fs::remove_dir_all(pool.join(dir));
                    }
                })
                .await;
            }
            member.watch_once(round).await;
            member
                .inner
                .instances
                .adopted
                .store(true, std::sync::atomic::Ordering::SeqCst);
            round += 1;
            if round.is_multiple_of(STALE_EVERY_ROUNDS) {
                member.inner.instances.arrived.prune(ARRIVAL_GRACE);
                member.remove_stale_copies().await;
                // Bases are kept while their image is here: those of deleted images go.
                if let Err(error) = member
                    .blocking(|driver| driver.collect_unheld_bases())
                    .await
                {
                    tracing::warn!(%error, "could not remove the bases of deleted images");
                }
                member.finish_deletes().await;
            }
        }
    });
}

impl Member {
    /// The instances this member is the location of, by its own copy of the state when that
    /// follows the leader's (a voter or a stand-by), else (a spare) by the leader's records;
    /// its own copy when the leader cannot be asked.
    async fn my_instances(&self) -> Vec<Instance> {
        self.my_instances_where(|_| true).await
    }

    /// [`Member::my_instances`], those `keep` keeps (asked before an instance is copied).
    async fn my_instances_where(
        &self,
        mut keep: impl FnMut(&Instance) -> bool + Send,
    ) -> Vec<Instance> {
        let me = self.name();
        if !self.state_follows() {
            let located = crate::Operation::Instance(super::ops::InstanceOperation::Located {
                member: me.clone(),
            });
            match Box::pin(self.execute(located, crate::Caller::local())).await {
                Ok(value) => match serde_json::from_value::<Vec<Instance>>(value) {
                    Ok(instances) => return instances.into_iter().filter(|i| keep(i)).collect(),
                    Err(error) => {
                        tracing::warn!(%error, "the leader's list of this member's instances is unreadable")
                    }
                },
                Err(error) => tracing::debug!(%error, "the leader's records are out of reach"),
            }
        }
        self.local_state(|state| {
            state
                .instances
                .values()
                .filter(|instance| instance.location == me && keep(instance))
                .cloned()
                .collect()
        })
    }

    /// One round of the watcher (`round` counts from 0). The containers are observed
    /// [`OBSERVE_BATCH`] at a time in one blocking task: a task (and a thread wake-up) per
    /// instance every round cost the members more CPU than the placements themselves once
    /// they held thousands. Quiet ones are skipped ([`Quiet`]).
    async fn watch_once(&self, round: u64) {
        self.inner
            .instances
            .create_answered
            .prune(CREATE_ANSWER_GRACE);
        let starts = self
            .inner
            .instances
            .starts
            .load(std::sync::atomic::Ordering::SeqCst);
        let previous = std::mem::take(
            &mut *self
                .inner
                .instances
                .quiet
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let started_since = previous.starts != starts;
        let full_round = round.is_multiple_of(FULL_EVERY_ROUNDS);
        let mut quiet = std::collections::HashSet::new();
        let mine = self
            .my_instances_where(|instance| {
                let key = key_of(instance);
                let skip = may_skip(
                    previous.keys.contains(&key),
                    started_since,
                    full_round,
                    instance.status,
                    last_power_running(instance),
                );
                if skip {
                    quiet.insert(key);
                }
                !skip
            })
            .await;
        for batch in mine.chunks(OBSERVE_BATCH) {
            // Instances whose lock is held (an operation is under way) wait for next round.
            let locked: Vec<_> = batch
                .iter()
                .filter_map(|instance| {
                    let key = key_of(instance);
                    let guard = self.inner.instances.lock(&key).try_write_owned().ok()?;
                    Some((instance, key, guard))
                })
                .collect();
            let keys: Vec<_> = locked.iter().map(|(_, key, _)| key.clone()).collect();
            let observed = self
                .blocking(move |driver| {
                    Ok(keys
                        .iter()
                        .map(|key| driver.liveness(key))
                        .collect::<Vec<_>>())
                })
                .await;
            let Ok(observed) = observed else {
                return;
            };
            for ((instance, key, _guard), observed) in locked.into_iter().zip(observed) {
                if self.bring_up_to_date(instance, &key, observed).await {
                    quiet.insert(key);
                }
            }
        }
        *self
            .inner
            .instances
            .quiet
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Quiet {
            keys: quiet,
            starts,
        };
    }

    /// Acts on what the watcher observed of `instance` (its lock held by the caller); answers
    /// whether it is quiet ([`is_quiet`]).
    async fn bring_up_to_date(
        &self,
        instance: &Instance,
        key: &InstanceKey,
        observed: Result<State, super::driver::DriverError>,
    ) -> bool {
        let seen = match observed {
            Ok(State::Running { .. }) => Seen::Running,
            Ok(State::Stopped { exit }) => Seen::Stopped {
                reboot: exit.is_some_and(|exit| exit.requested_restart()),
            },
            Err(_) => Seen::Missing,
        };
        let last_power_running = last_power_running(instance);
        let answered = self.create_answered_recently(key);
        let action = decide(instance.status, last_power_running, seen, answered);
        let result = match action {
            Action::Nothing => Ok(()),
            Action::Report(status) => {
                tracing::info!(instance = %key, status = status.as_str(), "instance changed on its own");
                self.report(key, status, "", None).await
            }
            Action::Start => {
                tracing::info!(instance = %key, "starting the instance again");
                let config = self.local_state(|state| state.expanded(instance).0);
                let remembered = last_power_running.then_some(false);
                self.start_local(key, &config, remembered).await.map(|_| ())
            }
        };
        if let Err(error) = result {
            tracing::warn!(instance = %key, %error, "could not bring the instance's record up to date");
        }
        is_quiet(instance.status, last_power_running, seen, action)
    }

    /// Removes the containers here whose instance lives on another member (a move whose source
    /// could not delete its copy, an instance recreated elsewhere while this member was
    /// offline) or no longer exists. The leader's records decide, never this member's copy,
    /// which may lag (a spare's, or a member's just back from being offline): every container
    /// here is checked, one `instances.list` per project.
    async fn remove_stale_copies(&self) {
        let keys = match self.blocking(|driver| driver.list()).await {
            Ok(keys) => keys,
            Err(error) => {
                tracing::warn!(%error, "could not list the containers to look for stale copies");
                return;
            }
        };
        let mut by_project: std::collections::BTreeMap<String, Vec<_>> = Default::default();
        for key in keys {
            by_project.entry(key.project.clone()).or_default().push(key);
        }
        let me = self.name();
        for (project, keys) in by_project {
            let list = crate::Operation::Instance(super::ops::InstanceOperation::List { project });
            let listed = match Box::pin(self.execute(list, crate::Caller::local())).await {
                Ok(listed) => listed,
                Err(error) => {
                    tracing::debug!(%error, "stale copies: the leader's records are out of reach");
                    return;
                }
            };
            let records: std::collections::BTreeMap<&str, &serde_json::Value> = listed
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|instance| Some((instance["name"].as_str()?, instance)))
                .collect();
            for key in keys {
                let located = records
                    .get(key.name.as_str())
                    .and_then(|record| record["location"].as_str());
                if located == Some(me.as_str()) {
                    continue;
                }
                let stamp = self.stamp_of(&key).await;
                let remove = match &stamp {
                    Some(id) => self.move_settled(&key, id).await,
                    None => is_stale(&me, located, self.arrived_recently(&key)),
                };
                if !remove {
                    continue;
                }
                let Ok(_guard) = self.inner.instances.lock(&key).try_write_owned() else {
                    continue;
                };
                // A create that took the copy over (a recreate here) unstamped it meanwhile.
                if stamp.is_some() && self.stamp_of(&key).await != stamp {
                    continue;
                }
                tracing::info!(instance = %key, location = ?located, "removing a stale copy");
                let remove_key = key.clone();
                let removed = self
                    .blocking(move |driver| {
                        let _ = driver.stop(&remove_key, Duration::ZERO, true);
                        driver.delete(&remove_key)
                    })
                    .await;
                if let Err(error) = removed {
                    tracing::warn!(instance = %key, %error, "could not remove a stale copy");
                }
            }
        }
    }

    /// Finishes, through the leader, the deletes of this member's instances that were cut
    /// short after their files went ([`DELETING_KEY`]: a delete marks the record before the
    /// files go). A marked instance whose files are all here is left as it is: its delete did
    /// not happen (or its mark landed after the delete had failed).
    async fn finish_deletes(&self) {
        for instance in self.my_instances().await {
            if !instance.config.contains_key(DELETING_KEY) {
                continue;
            }
            let rootfs = self
                .driver()
                .container_dir(&key_of(&instance))
                .join("rootfs");
            if rootfs.is_dir() {
                continue;
            }
            tracing::info!(instance = %instance.name, "finishing a delete that was cut short");
            let delete = crate::Operation::Instance(super::ops::InstanceOperation::Delete {
                project: instance.project.clone(),
                name: instance.name.clone(),
                force: true,
            });
            if let Err(error) = Box::pin(self.execute(delete, crate::Caller::local())).await {
                tracing::debug!(instance = %instance.name, %error, "the delete is not finished yet");
            }
        }
    }

    /// Whether the copy of `key` here, stamped by move `id`, can go: the leader settles it
    /// ([`Member::settle_move`]); not when the leader cannot be asked.
    async fn move_settled(&self, key: &InstanceKey, id: &str) -> bool {
        let settle = crate::Operation::Instance(super::ops::InstanceOperation::SettleMove {
            project: key.project.clone(),
            name: key.name.clone(),
            id: id.to_string(),
            member: self.name(),
        });
        match Box::pin(self.execute(settle, crate::Caller::local())).await {
            Ok(answer) => answer["removable"] == true,
            Err(error) => {
                tracing::debug!(instance = %key, move_id = id, %error, "a moved copy could not be settled");
                false
            }
        }
    }

    /// Whether this member answered the leader's create of `key` within
    /// [`CREATE_ANSWER_GRACE`].
    fn create_answered_recently(&self, key: &InstanceKey) -> bool {
        self.inner
            .instances
            .create_answered
            .within(key, CREATE_ANSWER_GRACE)
    }

    /// Whether a root file system for `key` arrived here for a move within [`ARRIVAL_GRACE`].
    fn arrived_recently(&self, key: &InstanceKey) -> bool {
        self.inner.instances.arrived.within(key, ARRIVAL_GRACE)
    }

    /// On a clean shutdown: stops this member's running containers (each asked to shut down,
    /// killed after [`SHUTDOWN_STOP_TIMEOUT`]) and records them as running at shutdown, so that
    /// the member starts them again when it is back.
    pub async fn stop_instances(&self) {
        self.inner
            .instances
            .shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let stops = self
            .my_instances()
            .await
            .into_iter()
            .map(|instance| async move {
                let key = key_of(&instance);
                let lock = self.inner.instances.lock(&key);
                let _guard = lock.write().await;
                if !matches!(self.observe(&key).await, Ok(State::Running { .. })) {
                    return;
                }
                let timeout_s = SHUTDOWN_STOP_TIMEOUT.as_secs();
                if let Err(error) = self.stop_local(&key, false, timeout_s, Some(true)).await {
                    tracing::warn!(instance = %key, %error, "could not stop the instance cleanly");
                }
            });
        futures::future::join_all(stops).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceStatus::*;

    /// Goal: only a copy the leader places elsewhere (or nowhere) is stale, and never one that
    /// arrived for a move moments ago.
    #[test]
    fn stale_copies() {
        assert!(is_stale("m1", Some("m2"), false));
        assert!(is_stale("m1", None, false));
        assert!(!is_stale("m1", Some("m1"), false));
        assert!(!is_stale("m1", Some("m2"), true));
        assert!(!is_stale("m1", None, true));
    }

    /// Goal: only an instance that cannot change until a start is quiet: recorded stopped
    /// (or failed), not to be started again, seen stopped without a restart asked (or not
    /// made), nothing done. Anything running, asking for a restart, being created or acted on
    /// is looked at every round.
    #[test]
    fn quiet_instances() {
        use InstanceStatus::*;
        let stopped = Seen::Stopped { reboot: false };
        assert!(is_quiet(Stopped, false, stopped, Action::Nothing));
        assert!(is_quiet(Error, false, stopped, Action::Nothing));
        assert!(is_quiet(Stopped, false, Seen::Missing, Action::Nothing));
        assert!(!is_quiet(Stopped, true, stopped, Action::Start));
        assert!(!is_quiet(Stopped, true, Seen::Missing, Action::Nothing));
        assert!(!is_quiet(Running, false, stopped, Action::Report(Stopped)));
        assert!(!is_quiet(Running, false, Seen::Running, Action::Nothing));
        assert!(!is_quiet(
            Stopped,
            false,
            Seen::Stopped { reboot: true },
            Action::Nothing
        ));
        assert!(!is_quiet(Creating, false, stopped, Action::Nothing));
        assert!(!is_quiet(Creating, false, Seen::Missing, Action::Nothing));
        // Every quiet combination is one `decide` leaves alone.
        for recorded in [Creating, Running, Stopped, Error] {
            for power in [false, true] {
                for seen in [
                    stopped,
                    Seen::Stopped { reboot: true },
                    Seen::Running,
                    Seen::Missing,
                ] {
                    for answered in [false, true] {
                        let action = decide(recorded, power, seen, answered);
                        if is_quiet(recorded, power, seen, action) {
                            assert_eq!(action, Action::Nothing, "{recorded:?} {power} {seen:?}");
                        }
                    }
                }
            }
        }
    }

    /// Goal: a quiet instance is skipped only while nothing could have changed it: no start
    /// on the member since, its record still stopped and not to be started, and not in a
    /// round that looks at every container.
    #[test]
    fn skipping() {
        use InstanceStatus::*;
        assert!(may_skip(true, false, false, Stopped, false));
        assert!(may_skip(true, false, false, Error, false));
        assert!(
            !may_skip(false, false, false, Stopped, false),
            "not quiet last time"
        );
        assert!(
            !may_skip(true, true, false, Stopped, false),
            "a start since"
        );
        assert!(!may_skip(true, false, true, Stopped, false), "a full round");
        assert!(
            !may_skip(true, false, false, Running, false),
            "recorded running since"
        );
        assert!(
            !may_skip(true, false, false, Creating, false),
            "recreated since"
        );
        assert!(
            !may_skip(true, false, false, Stopped, true),
            "to be started again"
        );
    }

    /// Goal: every combination of record and container gives the action the module's doc
    /// says.
    #[test]
    fn decisions() {
        let stopped = Seen::Stopped { reboot: false };
        let rebooted = Seen::Stopped { reboot: true };
        let cases = [
            (Creating, false, Seen::Running, Action::Report(Running)),
            (Creating, true, stopped, Action::Report(Stopped)),
            (Creating, false, Seen::Missing, Action::Nothing),
            (Running, false, Seen::Running, Action::Nothing),
            (Stopped, false, Seen::Running, Action::Report(Running)),
            (Error, false, Seen::Running, Action::Report(Running)),
            (Running, false, stopped, Action::Report(Stopped)),
            (Running, false, rebooted, Action::Start),
            (Stopped, true, stopped, Action::Start),
            (Running, true, stopped, Action::Start),
            (Stopped, false, stopped, Action::Nothing),
            (Error, false, stopped, Action::Nothing),
            (Error, true, stopped, Action::Nothing),
            (Running, false, Seen::Missing, Action::Nothing),
        ];
        for (recorded, last_power, seen, expected) in cases {
            assert_eq!(
                decide(recorded, last_power, seen, false),
                expected,
                "{recorded:?} {last_power} {seen:?}"
            );
        }
        // A create this member answered a moment ago is the leader's to record; anything
        // else is decided as without it.
        assert_eq!(decide(Creating, false, stopped, true), Action::Nothing);
        for (recorded, last_power, seen, expected) in cases {
            if recorded != Creating || seen == Seen::Running || seen == Seen::Missing {
                assert_eq!(decide(recorded, last_power, seen, true), expected);
            }
        }
    }
}
