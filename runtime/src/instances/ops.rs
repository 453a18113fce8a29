//! The instance built-ins (`instances.*`), carried out across the cluster.
//!
//! Everything runs on the leader, which reads and writes the records and asks the instance's
//! member (its `location`) to act on the container ([`LocalOperation`], sent as
//! `Request::InstanceLocal`; see [`super::local`]). That member reports every status change
//! itself ([`InstanceOperation::Report`], members only), so the record says what the member
//! last saw.
//!
//! A create: [`plan_create`] (IO-free: image, name, profiles, devices, config checked) →
//! placement → the record, `Creating` → the image copied to the chosen member if it has none →
//! that member unpacks (and for a launch starts) the container and reports `Stopped`,
//! `Running` or `Error`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use starling_store::instances::{
    check_instance_name, Devices, Instance, InstanceCommand, InstanceStatus, DEFAULT_PROFILE,
};
use starling_store::{ClusterState, Command, MemberStatus};

use super::config::{self, BASE_IMAGE_KEY, IMAGE_PROPERTIES, LAST_POWER_KEY};
use super::driver::{ExecRequest, InstanceKey};
use super::local::LocalOperation;
use super::names;
use super::{config_keys, devices};
use crate::cluster::join::WRITE_TIMEOUT;
use crate::member::Member;
use crate::placement::{PlacementRequest, Reason, Target};
use crate::protocol::{Reply, Request};
use crate::Error;

/// Seconds a stop waits for the container to shut down before killing it, unless told.
pub const DEFAULT_STOP_TIMEOUT_S: u64 = 30;
/// How long a create may take on its member (an image copy, unpacking a large root file
/// system).
const CREATE_BUDGET: Duration = Duration::from_secs(600);
/// How long a command run by `instances.exec` may take.
const EXEC_BUDGET: Duration = Duration::from_secs(600);
/// How long a request to an instance's member that could not be sent is tried again.
const NOT_SENT_RETRY: Duration = Duration::from_secs(3);
/// How long the other requests to an instance's member may take, beyond a stop's timeout.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(30);

/// What `instances.launch` and `instances.create` ask for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The project.
    pub project: String,
    /// The name; generated when absent.
    pub name: Option<String>,
    /// Image fingerprint, unique prefix or alias.
    pub image: String,
    /// `--target`: a member, `@group`, or none.
    pub target: Option<String>,
    /// Profiles in order; `["default"]` when absent.
    pub profiles: Option<Vec<String>>,
    /// Its own config keys.
    pub config: BTreeMap<String, String>,
    /// Its own devices (a device without `type` changes a profile's device).
    pub devices: Devices,
    /// Free-form description.
    pub description: String,
    /// Whether to start it (launch) or not (create, LXD's `init`).
    pub start: bool,
    /// Deleted when it stops (`--ephemeral`).
    #[serde(default)]
    pub ephemeral: bool,
}

/// What an instance's member saw of it (sent to the leader, which records it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The project.
    pub project: String,
    /// The instance.
    pub name: String,
    /// The reporting member (must be the instance's location).
    pub location: String,
    /// What it saw.
    pub status: InstanceStatus,
    /// Why, for `Error`.
    pub message: String,
    /// `Some(true)`: it was running when its member shut down cleanly (start it again when the
    /// member is back); `Some(false)`: forget that; `None`: unchanged.
    pub last_power_running: Option<bool>,
}

/// An instance operation (`instances.*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum InstanceOperation {
    /// `instances.launch{...}` / `instances.create{...}`.
    Create(CreateRequest),
    /// `instances.start(name)`.
    Start {
        /// The project.
        project: String,
        /// The instance.
        name: String,
    },
    /// `instances.stop(name [, {force=, timeout=}])`.
    Stop {
        /// The project.
        project: String,
        /// The instance.
        name: String,
        /// Kill at once instead of asking init to shut down.
        force: bool,
        /// Seconds to wait for a clean shutdown before killing.
        timeout_s: u64,
    },
    /// `instances.restart(name [, {force=, timeout=}])`.
    Restart {
        /// The project.
        project: String,
        /// The instance.
        name: String,
        /// Kill at once instead of asking init to shut down.
        force: bool,
        /// Seconds to wait for a clean shutdown before killing.
        timeout_s: u64,
    },
    /// `instances.delete(name [, {force=}])`: a running instance only with `force`.
    Delete {
        /// The project.
        project: String,
        /// The instance.
        name: String,
        /// Stop it first if it runs.
        force: bool,
    },
    /// `instances.list()`.
    List {
        /// The project.
        project: String,
    },
    /// `instances.get(name)`.
    Get {
        /// The project.
        project: String,
        /// The instance.
        name: String,
    },
    /// `instances.state(name)`: live, from its member.
    State {
        /// The project.
        project: String,
        /// The instance.
        name: String,
    },
    /// `instances.exec(name, argv [, {env=, cwd=}])`.
    Exec {
        /// The project.
        project: String,
        /// The instance.
        name: String,
        /// The command and its arguments.
        argv: Vec<String>,
        /// Extra environment.
        env: BTreeMap<String, String>,
        /// Working directory (`/` when absent).
        cwd: Option<String>,
    },
    /// `instances.set(name, key, value)` (`value`) and `instances.unset(name, key)` (`None`).
    Set {
        /// The project.
        project: String,
        /// The instance.
        name: String,
        /// The config key.
        key: String,
        /// The value; `None` unsets.
        value: Option<String>,
    },
    /// `instances.move(name, {target=})`.
    Move {
        /// The project.
        project: String,
        /// The instance.
        name: String,
        /// A member, or `@group`.
        target: String,
    },
    /// `instances.moves()`: the moves under way.
    Moves,
    /// Internal (members only): a copy of instance `name` that move `id` brought to `member`
    /// is there while the records place the instance elsewhere; see [`Member::settle_move`].
    SettleMove {
        /// The project.
        project: String,
        /// The instance.
        name: String,
        /// The move's id (the copy's stamp).
        id: String,
        /// The member holding the copy.
        member: String,
    },
    /// Internal: the records of the instances located on `member` (a spare's watcher, whose
    /// own copy of the state does not follow).
    Located {
        /// The member.
        member: String,
    },
    /// Internal: an instance's member reports what it saw (members only).
    Report(StatusReport),
}

impl InstanceOperation {
    /// Whether it changes the cluster state.
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            InstanceOperation::List { .. }
                | InstanceOperation::Get { .. }
                | InstanceOperation::State { .. }
                | InstanceOperation::Exec { .. }
                | InstanceOperation::Moves
                | InstanceOperation::Located { .. }
        )
    }

    /// How long it may take beyond the usual request timeouts.
    pub fn time_budget(&self) -> Option<Duration> {
        match self {
            InstanceOperation::Create(_) => Some(CREATE_BUDGET),
            InstanceOperation::Stop { timeout_s, .. }
            | InstanceOperation::Restart { timeout_s, .. } => {
                Some(Duration::from_secs(*timeout_s) + LOCAL_TIMEOUT)
            }
            InstanceOperation::Delete { .. } => {
                Some(Duration::from_secs(DEFAULT_STOP_TIMEOUT_S) + LOCAL_TIMEOUT)
            }
            InstanceOperation::Exec { .. } => Some(EXEC_BUDGET),
            InstanceOperation::Move { .. } => {
                Some(CREATE_BUDGET + Duration::from_secs(DEFAULT_STOP_TIMEOUT_S) + LOCAL_TIMEOUT)
            }
            _ => None,
        }
    }
}

/// LXD's status code of a status.
pub fn status_code(status: InstanceStatus) -> u32 {
    match status {
        InstanceStatus::Creating => 105,
        InstanceStatus::Stopped => 102,
        InstanceStatus::Running => 103,
        InstanceStatus::Error => 112,
    }
}

/// An instance as `instances.get` shows it (LXD's fields).
pub fn instance_json(state: &ClusterState, instance: &Instance) -> Value {
    let (expanded_config, expanded_devices) = state.expanded(instance);
    // What its member last reported is stale once the member is offline: shown as `Error`,
    // saying why, as long as it is (the record keeps the last report).
    let (status, status_message) = match state.members.get(&instance.location) {
        Some(member) if member.status == MemberStatus::Offline => {
            let (_, why) = crate::cluster::health::status_of(member);
            (
                InstanceStatus::Error,
                format!(
                    "its member \"{}\" is offline ({why}); last reported {}",
                    instance.location,
                    instance.status.as_str()
                ),
            )
        }
        // Evacuated by self-healing while offline, and not recreated: the step says why.
        Some(member) if member.status == MemberStatus::Evacuated => state
            .evacuations
            .get(&instance.location)
            .filter(|record| record.action == crate::evacuation::plan::HEALING_ACTION)
            .and_then(|record| {
                record.steps.iter().find_map(|step| match &step.outcome {
                    starling_store::evacuation::StepOutcome::Failed(reason)
                        if step.project == instance.project && step.name == instance.name =>
                    {
                        Some((InstanceStatus::Error, reason.clone()))
                    }
                    _ => None,
                })
            })
            .unwrap_or_else(|| (instance.status, instance.status_message.clone())),
        _ => (instance.status, instance.status_message.clone()),
    };
    json!({
        "name": instance.name,
        "project": instance.project,
        "type": instance.kind,
        "architecture": instance.architecture,
        "config": instance.config,
        "devices": instance.devices,
        "expanded_config": expanded_config,
        "expanded_devices": expanded_devices,
        "profiles": instance.profiles,
        "location": instance.location,
        "status": status.as_str(),
        "status_code": status_code(status),
        "status_message": status_message,
        "created_at": crate::token::format_time_ms(instance.created_at_ms),
        "description": instance.description,
        "ephemeral": instance.ephemeral,
        "stateful": false,
    })
}

/// A new instance, checked, before placement.
#[derive(Clone, Debug, PartialEq)]
pub struct NewInstance {
    /// The record to write (its `location` still empty).
    pub instance: Instance,
    /// What placement is asked.
    pub placement: PlacementRequest,
    /// Where the operator asked for it.
    pub target: Target,
}

/// Checks a create against the cluster state and builds the record: the image resolved
/// (`volatile.base_image` and `image.*` keys copied from it), the name checked or generated
/// from `random`, profiles (`default` unless given) and devices applied, the config's keys
/// checked. IO-free.
pub fn plan_create(
    state: &ClusterState,
    request: &CreateRequest,
    now_ms: u64,
    random: u128,
) -> Result<NewInstance, String> {
    let project = request.project.as_str();
    if !state.projects.contains_key(project) {
        return Err(format!("project \"{project}\" not found"));
    }
    let image = state.image(&request.image)?;
    let taken = |name: &str| {
        state
            .instances
            .contains_key(&(project.to_string(), name.to_string()))
    };
    let name = match &request.name {
        Some(name) => {
            check_instance_name(name)?;
            if taken(name) {
                return Err(format!(
                    "instance \"{name}\" already exists in project \"{project}\""
                ));
            }
            name.clone()
        }
        None => names::generate(random, taken),
    };
    let profiles = request
        .profiles
        .clone()
        .unwrap_or_else(|| vec![DEFAULT_PROFILE.to_string()]);
    for profile in &profiles {
        if !state
            .profiles
            .contains_key(&(project.to_string(), profile.clone()))
        {
            return Err(format!(
                "profile \"{profile}\" not found in project \"{project}\""
            ));
        }
    }
    config_keys::check_config(&request.config, config_keys::check_instance_key)?;
    let (_, profile_devices) = state.expand(project, &profiles, &BTreeMap::new(), &Devices::new());
    let devices = config::device_overrides(&profile_devices, &request.devices)?;
    devices::check_devices(&devices, &|pool: &str| state.pools.contains_key(pool))?;
    let mut own_config = request.config.clone();
    own_config.insert(BASE_IMAGE_KEY.to_string(), image.fingerprint.clone());
    own_config.insert(UUID_KEY.to_string(), uuid_of(random));
    for property in IMAGE_PROPERTIES {
        let value = match *property {
            "architecture" => Some(&image.architecture),
            other => image.properties.get(other),
        };
        if let Some(value) = value {
            own_config.insert(format!("image.{property}"), value.clone());
        }
    }
    let (expanded_config, expanded_devices) =
        state.expand(project, &profiles, &own_config, &devices);
    config::check(&expanded_config).map_err(|error| error.to_string())?;
    let target = Target::parse(request.target.as_deref().unwrap_or_default())
        .map_err(|error| error.to_string())?;
    let instance = Instance {
        project: project.to_string(),
        name: name.clone(),
        kind: "container".to_string(),
        architecture: image.architecture.clone(),
        config: own_config,
        devices,
        profiles: profiles.clone(),
        location: String::new(),
        status: InstanceStatus::Creating,
        status_message: String::new(),
        created_at_ms: now_ms,
        description: request.description.clone(),
        ephemeral: request.ephemeral,
        image: image.fingerprint.clone(),
    };
    let placement = PlacementRequest {
        name,
        project: project.to_string(),
        kind: "container".to_string(),
        architecture: image.architecture.clone(),
        source: request.image.clone(),
        config: expanded_config,
        devices: expanded_devices,
        profiles,
        ephemeral: request.ephemeral,
        description: request.description.clone(),
        reason: Reason::New,
    };
    Ok(NewInstance {
        instance,
        placement,
        target,
    })
}

use crate::token::now_ms;

impl Member {
    /// Runs an instance operation on the leader.
    pub(crate) async fn instance_here(
        &self,
        operation: &InstanceOperation,
    ) -> Result<Value, Error> {
        match operation {
            InstanceOperation::Create(request) => self.create_instance(request).await,
            InstanceOperation::List { project } => Ok(self.local_state(|state| {
                Value::Array(
                    state
                        .instances
                        .values()
                        .filter(|instance| instance.project == *project)
                        .map(|instance| instance_json(state, instance))
                        .collect(),
                )
            })),
            InstanceOperation::Get { project, name } => {
                let instance = self.instance_record(project, name)?;
                Ok(self.local_state(|state| instance_json(state, &instance)))
            }
            InstanceOperation::Start { project, name } => {
                let instance = self.instance_record(project, name)?;
                let config = self.local_state(|state| state.expanded(&instance).0);
                let operation = LocalOperation::Start {
                    key: key_of(&instance),
                    config,
                };
                self.on_location(&instance, operation).await
            }
            InstanceOperation::Stop {
                project,
                name,
                force,
                timeout_s,
            } => {
                let instance = self.instance_record(project, name)?;
                let operation = LocalOperation::Stop {
                    key: key_of(&instance),
                    force: *force,
                    timeout_s: *timeout_s,
                };
                self.on_location(&instance, operation).await
            }
            InstanceOperation::Restart {
                project,
                name,
                force,
                timeout_s,
            } => {
                let instance = self.instance_record(project, name)?;
                let config = self.local_state(|state| state.expanded(&instance).0);
                let operation = LocalOperation::Restart {
                    key: key_of(&instance),
                    force: *force,
                    timeout_s: *timeout_s,
                    config,
                };
                self.on_location(&instance, operation).await
            }
            InstanceOperation::Delete {
                project,
                name,
                force,
            } => self.delete_instance(project, name, *force).await,
            InstanceOperation::State { project, name } => {
                let instance = self.instance_record(project, name)?;
                let operation = LocalOperation::State {
                    key: key_of(&instance),
                };
                self.on_location(&instance, operation).await
            }
            InstanceOperation::Exec {
                project,
                name,
                argv,
                env,
                cwd,
            } => {
                let instance = self.instance_record(project, name)?;
                if argv.is_empty() {
                    return Err(Error::Refused("exec needs a command".to_string()));
                }
                let mut request = ExecRequest::new(argv.iter().cloned());
                request.env = env.clone();
                if let Some(cwd) = cwd {
                    request.cwd = cwd.into();
                }
                let operation = LocalOperation::Exec {
                    key: key_of(&instance),
                    argv: request.argv,
                    env: request.env,
                    cwd: request.cwd.to_string_lossy().into_owned(),
                };
                self.on_location(&instance, operation).await
            }
            InstanceOperation::Set {
                project,
                name,
                key,
                value,
            } => {
                self.set_instance_key(project, name, key, value.as_deref())
                    .await
            }
            InstanceOperation::Move {
                project,
                name,
                target,
            } => self.move_instance(project, name, target).await,
            InstanceOperation::Moves => Ok(self.moves_under_way()),
            InstanceOperation::SettleMove {
                project,
                name,
                id,
                member,
            } => self.settle_move(project, name, id, member).await,
            InstanceOperation::Located { member } => {
                let located: Vec<Instance> = self.local_state(|state| {
                    state
                        .instances
                        .values()
                        .filter(|instance| instance.location == *member)
                        .cloned()
                        .collect()
                });
                serde_json::to_value(located).map_err(|error| Error::Internal(error.to_string()))
            }
            InstanceOperation::Report(report) => self.record_report(report).await,
        }
    }

    /// The record of instance `name`, or LXD's error.
    pub(crate) fn instance_record(&self, project: &str, name: &str) -> Result<Instance, Error> {
        self.local_state(|state| {
            state
                .instances
                .get(&(project.to_string(), name.to_string()))
                .cloned()
        })
        .ok_or_else(|| {
            Error::Refused(format!(
                "Instance not found: no instance \"{name}\" in project \"{project}\""
            ))
        })
    }

    async fn propose_instance(&self, command: InstanceCommand) -> Result<(), Error> {
        self.propose(Command::Instance(command), WRITE_TIMEOUT)
            .await
    }

    /// `instances.launch` and `instances.create`.
    async fn create_instance(&self, request: &CreateRequest) -> Result<Value, Error> {
        // Within a request, the id of its first command: a retry of the request finds the
        // record by it (`volatile.uuid`, see `resume_create`).
        let random = match crate::once::next_command_id() {
            Some(id) => id,
            None => crate::token::random_u128()?,
        };
        let new = self
            .local_state(|state| plan_create(state, request, now_ms(), random))
            .map_err(Error::Refused)?;
        // Counted on its member from the decision until the record is written, so that
        // launches at once spread as launches one after the other do.
        let placed = self
            .place_instance(&new.placement, &new.target, None, &BTreeSet::new())
            .await?;
        let mut instance = new.instance;
        instance.location = placed.name.clone();
        let recorded = self
            .propose_instance(InstanceCommand::InstanceCreate {
                instance: instance.clone(),
            })
            .await;
        drop(placed);
        recorded?;
        // The record now in the state decides: the one just written, or the one an earlier
        // attempt of this request wrote (the store applied the command once and answered its
        // first outcome), with the location that attempt chose.
        self.resume_create(request, random, false).await
    }

    /// A create whose record an earlier attempt of the same request wrote (the answer of that
    /// attempt was lost, or it failed part-way, as when its leader was cut off right after the
    /// record): finishes it, or answers the record when it was finished. `first_command` is
    /// the id of the request's first command, from which the record's `volatile.uuid` was made.
    /// `retried`: called for a request asked again (logged), not right after its record.
    pub(crate) async fn resume_create(
        &self,
        request: &CreateRequest,
        first_command: u128,
        retried: bool,
    ) -> Result<Value, Error> {
        let uuid = uuid_of(first_command);
        let project = request.project.as_str();
        let found = self.local_state(|state| {
            let ours = |instance: &&Instance| instance.config.get(UUID_KEY) == Some(&uuid);
            match &request.name {
                // Every create comes here: a named one is looked up, not searched for.
                Some(name) => state
                    .instances
                    .get(&(project.to_string(), name.clone()))
                    .filter(ours)
                    .cloned(),
                None => state
                    .instances
                    .values()
                    .filter(|instance| instance.project == project)
                    .find(ours)
                    .cloned(),
            }
        });
        let Some(instance) = found else {
            return Err(Error::Refused(format!(
                "the instance an earlier attempt of this request created ({}) was deleted since",
                request.name.as_deref().unwrap_or("unnamed")
            )));
        };
        match instance.status {
            InstanceStatus::Creating | InstanceStatus::Error => {
                if retried {
                    tracing::info!(instance = %instance.name, location = %instance.location, "finishing a create an earlier attempt of the request began");
                }
                self.finish_create(instance, request.start).await
            }
            _ => Ok(self.local_state(|state| instance_json(state, &instance))),
        }
    }

    /// After the record: the image on the instance's member, then its root file system
    /// unpacked there (and started when `start`).
    async fn finish_create(&self, instance: Instance, start: bool) -> Result<Value, Error> {
        let location = instance.location.clone();
        let prepared = async {
            self.ensure_image_on(&instance.image, &location).await?;
            let config = self.local_state(|state| state.expanded(&instance).0);
            let operation = LocalOperation::Create {
                key: key_of(&instance),
                fingerprint: instance.image.clone(),
                start: start.then_some(config),
            };
            self.on_location(&instance, operation).await
        }
        .await;
        if let Err(error) = prepared {
            // The member reports its own failures; these are the ones before it acted.
            let recorded = self.instance_record(&instance.project, &instance.name);
            if recorded.is_ok_and(|record| record.status == InstanceStatus::Creating) {
                let _ = self
                    .record_status(&instance, InstanceStatus::Error, &error.to_string())
                    .await;
            }
            // A transient error is retried by the client as the same request (the record is
            // not written twice); any other leaves the record, so it cannot be `Refused`,
            // which says that nothing changed.
            if error.is_transient() {
                return Err(error);
            }
            return Err(Error::Incomplete(format!(
                "instance \"{}\" was recorded on {location}, but creating it there failed: {error}; \
                 its record stays until it is deleted (see `starling info {}`)",
                instance.name, instance.name
            )));
        }
        // A create without a start: the member answered with the root file system made and
        // left the record to us. A failure here is retried by the client as the same request
        // (the member finds its root file system and answers again).
        if !start {
            let recorded = self.instance_record(&instance.project, &instance.name)?;
            if recorded.status == InstanceStatus::Creating {
                self.record_status(&recorded, InstanceStatus::Stopped, "")
                    .await?;
            }
        }
        let instance = self.instance_record(&instance.project, &instance.name)?;
        Ok(self.local_state(|state| instance_json(state, &instance)))
    }

    /// Records a status for `instance` on behalf of its member (a create's answer, failures
    /// before the member could act).
    async fn record_status(
        &self,
        instance: &Instance,
        status: InstanceStatus,
        message: &str,
    ) -> Result<(), Error> {
        self.propose_instance(InstanceCommand::InstanceStatus {
            project: instance.project.clone(),
            name: instance.name.clone(),
            location: instance.location.clone(),
            status,
            message: truncate(message),
        })
        .await
    }

    /// Records what an instance's member reported. An ephemeral instance reported `Stopped`
    /// (not by a move, which stops it on the way) is then deleted, as LXD does.
    async fn record_report(&self, report: &StatusReport) -> Result<Value, Error> {
        let recorded = self.record_status_report(report).await;
        if recorded.is_ok() && report.status == InstanceStatus::Stopped {
            let moving = self.is_moving(&report.project, &report.name);
            let ephemeral = self
                .instance_record(&report.project, &report.name)
                .is_ok_and(|instance| instance.ephemeral && instance.location == report.location);
            if ephemeral && !moving {
                // Deleted by the leader's next round: the reporting member is waiting for this
                // answer, under the instance's lock that the delete needs.
                if let Ok(mut stopped) = self.inner.instances.ephemeral_stopped.lock() {
                    stopped.insert((report.project.clone(), report.name.clone()));
                }
            }
        }
        recorded
    }

    /// Leader, every heartbeat round: deletes the ephemeral instances reported stopped (and
    /// still stopped, on the member that reported it).
    pub(crate) async fn reap_ephemeral(&self) {
        let stopped: Vec<(String, String)> = match self.inner.instances.ephemeral_stopped.lock() {
            Ok(mut stopped) => std::mem::take(&mut *stopped).into_iter().collect(),
            Err(_) => return,
        };
        for (project, name) in stopped {
            let Ok(instance) = self.instance_record(&project, &name) else {
                continue;
            };
            let moving = self.is_moving(&project, &name);
            if !instance.ephemeral || instance.status != InstanceStatus::Stopped || moving {
                continue;
            }
            match self.delete_instance(&project, &name, false).await {
                Ok(_) => tracing::info!(instance = %name, "ephemeral instance stopped: deleted"),
                Err(error) => {
                    tracing::warn!(instance = %name, %error, "could not delete a stopped ephemeral instance")
                }
            }
        }
    }

    /// The config change a report carries goes first, then the status: whoever reads the new
    /// status reads the config that goes with it (`volatile.last_state.power`). A report from a
    /// member that is not the instance's location changes nothing.
    async fn record_status_report(&self, report: &StatusReport) -> Result<Value, Error> {
        if let Some(running) = report.last_power_running {
            let instance = self.instance_record(&report.project, &report.name)?;
            let power = running.then(|| "RUNNING".to_string());
            if instance.config.get(LAST_POWER_KEY) != power.as_ref()
                && instance.location == report.location
            {
                self.propose_instance(InstanceCommand::InstancePatch {
                    project: report.project.clone(),
                    name: report.name.clone(),
                    location: Some(report.location.clone()),
                    config: BTreeMap::from([(LAST_POWER_KEY.to_string(), power)]),
                })
                .await?;
            }
        }
        self.propose_instance(InstanceCommand::InstanceStatus {
            project: report.project.clone(),
            name: report.name.clone(),
            location: report.location.clone(),
            status: report.status,
            message: truncate(&report.message),
        })
        .await?;
        Ok(Value::Null)
    }

    /// `instances.set` / `instances.unset`: the new expanded config must be usable.
    async fn set_instance_key(
        &self,
        project: &str,
        name: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<Value, Error> {
        match value {
            Some(value) => config_keys::check_instance_key(key, value),
            None => config_keys::check_settable(key),
        }
        .map_err(Error::Refused)?;
        let instance = self.instance_record(project, name)?;
        let mut changed = instance.clone();
        match value {
            Some(value) => changed.config.insert(key.to_string(), value.to_string()),
            None => changed.config.remove(key),
        };
        let expanded = self.local_state(|state| state.expanded(&changed).0);
        config::check(&expanded).map_err(|error| Error::Refused(error.to_string()))?;
        self.propose_instance(InstanceCommand::InstancePatch {
            project: project.to_string(),
            name: name.to_string(),
            location: None,
            config: BTreeMap::from([(key.to_string(), value.map(str::to_string))]),
        })
        .await?;
        Ok(Value::Null)
    }

    /// `instances.delete`: the container goes first (stopped first with `force`), then the
    /// record.
    async fn delete_instance(
        &self,
        project: &str,
        name: &str,
        force: bool,
    ) -> Result<Value, Error> {
        let instance = self.instance_record(project, name)?;
        if instance.status == InstanceStatus::Running && !force {
            return Err(Error::Refused(format!(
                "The instance \"{name}\" is running: stop it first, or delete it with force"
            )));
        }
        // Marked first: a delete cut short after its files went (the record's removal then
        // met no quorum) is finished by its member, so the record never stays behind with
        // nothing on disk (`starling-chaos` seed 7).
        let mark = |deleting| InstanceCommand::InstanceDeleting {
            project: project.to_string(),
            name: name.to_string(),
            deleting,
        };
        self.propose_instance(mark(true)).await?;
        let operation = LocalOperation::Delete {
            key: key_of(&instance),
            force,
        };
        match self.on_location(&instance, operation).await {
            Ok(_) => {}
            // Refused before anything went: the instance stays as it was.
            Err(error @ Error::Refused(_)) => {
                if let Err(unmark) = self.propose_instance(mark(false)).await {
                    tracing::warn!(instance = %name, %unmark, "the refused delete's mark stays: its member will finish the delete");
                }
                return Err(error);
            }
            Err(error) => return Err(error),
        }
        let deleted = self
            .propose_instance(InstanceCommand::InstanceDelete {
                project: project.to_string(),
                name: name.to_string(),
            })
            .await;
        match deleted {
            // Refused because it is gone: its member (or another attempt of this request)
            // finished this delete meanwhile.
            Err(Error::Refused(_)) if !self.instance_exists(project, name) => Ok(Value::Null),
            other => other.map(|()| Value::Null),
        }
    }

    /// A delete asked again whose first attempt marked the record (its answer was lost, or it
    /// is still under way): done when the record is gone, else run again. Run again, its
    /// commands are not tagged: each is harmless twice (the mark is a set; a second removal
    /// is refused, and then the record is gone).
    pub(crate) async fn resume_delete(
        &self,
        project: &str,
        name: &str,
        force: bool,
    ) -> Result<Value, Error> {
        if !self.instance_exists(project, name) {
            return Ok(Value::Null);
        }
        tracing::info!(instance = %name, "finishing a delete an earlier attempt of the request began");
        let result = self.delete_instance(project, name, force).await;
        resumed_delete_answer(result, self.instance_exists(project, name))
    }

    /// Whether the records hold instance `name` of `project` (as this member knows them).
    fn instance_exists(&self, project: &str, name: &str) -> bool {
        self.local_state(|state| {
            state
                .instances
                .contains_key(&(project.to_string(), name.to_string()))
        })
    }

    /// Runs `operation` on the instance's member: here, or asked over the network. An offline
    /// or unreachable member is named in the error.
    pub(crate) async fn on_location(
        &self,
        instance: &Instance,
        operation: LocalOperation,
    ) -> Result<Value, Error> {
        let location = &instance.location;
        if *location == self.name() {
            return Box::pin(self.instance_local(&operation)).await;
        }
        let record = self
            .local_state(|state| state.members.get(location).cloned())
            .ok_or_else(|| Error::Refused(format!("member \"{location}\" not found")))?;
        // An evacuated member still runs what it holds (its instances are being moved or
        // stopped); an offline one cannot be asked.
        if record.status == MemberStatus::Offline {
            let (status, message) = crate::cluster::health::status_of(&record);
            return Err(Error::Refused(format!(
                "instance \"{}\" is on member \"{location}\", which is {status} ({message})",
                instance.name
            )));
        }
        let timeout = operation.timeout();
        let request = Request::InstanceLocal { operation };
        // A request that was not sent may be sent again: a member that just restarted is
        // reached once the pool's pause after failed connections is over.
        let deadline = std::time::Instant::now() + NOT_SENT_RETRY;
        let mut reply = self.request(&record.address, &request, timeout).await;
        while matches!(reply, Err(Error::NotSent(_))) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            reply = self.request(&record.address, &request, timeout).await;
        }
        match reply {
            Ok(Reply::Operation(Ok(text))) => {
                serde_json::from_str(&text).map_err(|error| Error::Internal(error.to_string()))
            }
            Ok(Reply::Operation(Err(error))) | Ok(Reply::Refused(error)) => Err(error),
            Ok(other) => Err(Error::Internal(format!(
                "unexpected reply from member {location}: {other:?}"
            ))),
            Err(Error::NotSent(reason)) => Err(Error::Refused(format!(
                "instance \"{}\" is on member \"{location}\", which cannot be reached: {reason}",
                instance.name
            ))),
            Err(error) => Err(error),
        }
    }
}

/// LXD's `volatile.uuid`: the instance's identity, made from the id of the request that
/// created it (so a retry of that request finds it).
pub const UUID_KEY: &str = "volatile.uuid";

/// A version-4-shaped UUID made of `bits`.
pub fn uuid_of(bits: u128) -> String {
    let bits = (bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The driver's key of an instance.
pub(crate) fn key_of(instance: &Instance) -> InstanceKey {
    InstanceKey::new(instance.project.clone(), instance.name.clone())
}

/// A status message cut to what the record takes.
fn truncate(message: &str) -> String {
    let limit = starling_store::limits::DESCRIPTION_BYTES_MAX;
    if message.len() <= limit {
        return message.to_string();
    }
    let mut end = limit;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_string()
}

/// The answer to a delete asked again ([`Member::resume_delete`]) that ran `result`, the
/// record existing afterwards or not: a refusal once the record is gone means that an earlier
/// attempt of the request, still under way, removed it meanwhile (its mark, or its removal,
/// then met no record): the delete is done. Any other answer stands.
fn resumed_delete_answer(
    result: Result<Value, Error>,
    record_exists: bool,
) -> Result<Value, Error> {
    match result {
        Err(Error::Refused(_)) if !record_exists => Ok(Value::Null),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a delete asked again is done when a refusal met a record already gone (the
    /// first attempt finished it meanwhile: `starling-chaos` seed 7, "launched
    /// (acknowledged), never deleted, and lost", the repeat having answered "not found"), and
    /// only then.
    #[test]
    fn a_resumed_delete_is_done_once_the_record_is_gone() {
        let refused = || Err(Error::Refused("instance not found".into()));
        assert!(matches!(
            resumed_delete_answer(refused(), false),
            Ok(Value::Null)
        ));
        assert!(matches!(
            resumed_delete_answer(refused(), true),
            Err(Error::Refused(_))
        ));
        let unknown = || Err(Error::OutcomeUnknown("lost".into()));
        assert!(matches!(
            resumed_delete_answer(unknown(), false),
            Err(Error::OutcomeUnknown(_))
        ));
        assert!(matches!(
            resumed_delete_answer(Ok(Value::Null), false),
            Ok(Value::Null)
        ));
    }
}
