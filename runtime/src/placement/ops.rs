//! Placement carried out: the member views built from the cluster state, the installed
//! scriptlet compiled once per source, the scriptlet's host (live member state and resources
//! read over QUIC), creations in flight, and the `placement.explain` / `placement.test`
//! operations.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use starling_store::instances::Instance;
use starling_store::ClusterState;

use super::scriptlet::{Limits, Scriptlet, ScriptletHost};
use super::{
    place, MemberView, Placement, PlacementRequest, Reason, SchedulerMode, ScriptletRun, Target,
};
use crate::member::Member;
use crate::protocol::Request;
use crate::view::RaftRoles;
use crate::Error;

/// The config key holding the placement scriptlet.
pub const SCRIPTLET_KEY: &str = "instances.placement.scriptlet";

/// A member's placement bookkeeping.
#[derive(Default)]
pub struct PlacementState {
    /// The installed scriptlet, compiled.
    compiled: CompiledScriptlet,
    /// Placements made and not yet recorded, by member (they count as instances there).
    pending: Mutex<BTreeMap<String, u64>>,
    /// Held from reading `pending` for a decision until the decision is counted in it, so
    /// that concurrent creations each see the others (a scriptlet runs on a blocking thread,
    /// for as long as it takes).
    deciding: tokio::sync::Mutex<()>,
}

/// The installed scriptlet compiled once per source: compiled again only when the source
/// changes.
#[derive(Default)]
struct CompiledScriptlet {
    /// The source last compiled, and what it compiled to.
    cached: Mutex<Option<(String, Arc<Scriptlet>)>>,
}

impl CompiledScriptlet {
    /// `source` compiled, or `None` when it is empty (no scriptlet installed).
    fn get(&self, source: String) -> Result<Option<Arc<Scriptlet>>, Error> {
        if source.trim().is_empty() {
            return Ok(None);
        }
        let mut cached = lock(&self.cached);
        if let Some((compiled_from, scriptlet)) = cached.as_ref() {
            if *compiled_from == source {
                return Ok(Some(scriptlet.clone()));
            }
        }
        let scriptlet = Arc::new(Scriptlet::compile(&source).map_err(|error| {
            Error::Refused(format!("Failed instance placement scriptlet: {error}"))
        })?);
        *cached = Some((source, scriptlet.clone()));
        Ok(Some(scriptlet))
    }
}

/// A placement counted on its member until this is dropped (the instance recorded there, or
/// the creation abandoned).
pub(crate) struct CountedPlacement {
    member: Member,
    /// The member chosen.
    pub(crate) name: String,
}

impl Drop for CountedPlacement {
    fn drop(&mut self) {
        self.member.placement_done(&self.name);
    }
}

/// A placement operation (`placement.*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PlacementOperation {
    /// `placement.explain{image=, target=, config=, profiles=, project=, name=}`: which member
    /// would be chosen and why, creating nothing.
    Explain {
        /// The request.
        request: Box<PlacementInput>,
    },
    /// `placement.test(source, {image=, ...})`: runs a scriptlet that is not installed.
    Test {
        /// The scriptlet's source.
        source: String,
        /// The request.
        request: Box<PlacementInput>,
    },
}

/// What a placement is asked for (the parts of an instance request placement looks at).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlacementInput {
    /// Image fingerprint, prefix or alias.
    pub image: String,
    /// Instance name (may be empty).
    pub name: String,
    /// Project.
    pub project: String,
    /// `NAME`, `@group`, or empty.
    pub target: String,
    /// Instance config.
    pub config: BTreeMap<String, String>,
    /// Profiles (empty: `default`).
    pub profiles: Vec<String>,
}

use crate::sync::lock;

/// The members as placement sees them; `pending` counts creations not yet recorded.
pub(crate) fn member_views(
    state: &ClusterState,
    pending: &BTreeMap<String, u64>,
    raft: &RaftRoles,
) -> Vec<MemberView> {
    let counts = state.instances_by_location();
    state
        .members
        .values()
        .map(|member| {
            let (status, message) = crate::cluster::health::status_of(member);
            MemberView {
                name: member.name.clone(),
                url: format!("https://{}", member.address),
                database: raft.is_database(member),
                status: status.to_string(),
                message,
                architecture: member.architecture.clone(),
                roles: raft.roles(member),
                failure_domain: member.failure_domain.clone(),
                description: member.description.clone(),
                config: member.config.clone(),
                groups: member.groups.clone(),
                scheduler: SchedulerMode::from_config(&member.config),
                instance_count: counts.get(member.name.as_str()).copied().unwrap_or(0)
                    + pending.get(&member.name).copied().unwrap_or(0),
                move_failed: false,
                revision: Some(state.members_revision),
            }
        })
        .collect()
}

/// An instance as the scriptlet built-ins `get_instances` show it.
fn instance_value(state: &ClusterState, instance: &Instance) -> Value {
    let (config, devices) = state.expanded(instance);
    json!({
        "name": instance.name,
        "project": instance.project,
        "type": instance.kind,
        "architecture": instance.architecture,
        "config": instance.config,
        "devices": instance.devices,
        "expanded_config": config,
        "expanded_devices": devices,
        "profiles": instance.profiles,
        "location": instance.location,
        "status": instance.status.as_str(),
        "description": instance.description,
        "ephemeral": instance.ephemeral,
    })
}

/// The scriptlet's view of the cluster: a snapshot of the database, and live member state and
/// resources asked of the members (from a blocking thread: the scriptlet runs on one).
struct ClusterHost {
    member: Member,
    runtime: tokio::runtime::Handle,
    state: ClusterState,
    views: Vec<MemberView>,
    pending: BTreeMap<String, u64>,
}

impl ScriptletHost for ClusterHost {
    fn member_state(&self, name: &str) -> Result<Value, String> {
        self.runtime
            .block_on(self.member.member_state(name))
            .map_err(|error| error.to_string())
    }

    fn member_resources(&self, name: &str) -> Result<Value, String> {
        self.runtime
            .block_on(self.member.member_resources(name))
            .map_err(|error| error.to_string())
    }

    fn instances(&self, project: Option<&str>, location: Option<&str>) -> Vec<Value> {
        self.state
            .instances
            .values()
            .filter(|instance| project.is_none_or(|p| instance.project == p))
            .filter(|instance| location.is_none_or(|l| instance.location == l))
            .map(|instance| instance_value(&self.state, instance))
            .collect()
    }

    fn instances_count(&self, project: Option<&str>, location: Option<&str>, pending: bool) -> u64 {
        let recorded = self
            .state
            .instances
            .values()
            .filter(|instance| project.is_none_or(|p| instance.project == p))
            .filter(|instance| location.is_none_or(|l| instance.location == l))
            .count() as u64;
        let in_flight = if pending {
            self.pending
                .iter()
                .filter(|(member, _)| location.is_none_or(|l| *member == l))
                .map(|(_, count)| *count)
                .sum()
        } else {
            0
        };
        recorded + in_flight
    }

    fn cluster_members(&self, group: Option<&str>) -> Vec<MemberView> {
        self.views
            .iter()
            .filter(|view| view.status == "Online")
            .filter(|view| group.is_none_or(|g| view.groups.iter().any(|own| own == g)))
            .cloned()
            .collect()
    }

    fn project(&self, name: &str) -> Option<Value> {
        self.state.projects.get(name).map(|project| {
            json!({
                "name": project.name,
                "description": project.description,
                "config": project.config,
            })
        })
    }
}

/// A random index below `n`, for ties.
fn random_below(n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    crate::token::random_u128().map_or(0, |value| (value % n as u128) as usize)
}

impl Member {
    /// The installed scriptlet, compiled (once per source), or `None` when none is set.
    fn installed_scriptlet(&self) -> Result<Option<Arc<Scriptlet>>, Error> {
        let source = self
            .local_state(|state| state.config_value(SCRIPTLET_KEY))
            .unwrap_or_default();
        self.inner.placement.compiled.get(source)
    }

    /// Chooses the member for `request` (the installed scriptlet, or `scriptlet` when given,
    /// decides when no member is named), off the async threads, leaving out of automatic
    /// placement the members in `avoid` (moves of this instance to them have just failed).
    pub(crate) async fn place_avoiding(
        &self,
        request: &PlacementRequest,
        target: &Target,
        exclude_current: Option<&str>,
        avoid: &BTreeSet<String>,
        scriptlet: Option<Arc<Scriptlet>>,
    ) -> Result<Placement, Error> {
        let pending = lock(&self.inner.placement.pending).clone();
        let raft = RaftRoles::of(self);
        // The scriptlet's host holds a copy of the whole state: made only when a scriptlet
        // will run, not for every placement by the built-in rule.
        let (views, host) = self.local_state(|state| {
            let mut views = member_views(state, &pending, &raft);
            for view in &mut views {
                view.move_failed = avoid.contains(&view.name);
            }
            let host = scriptlet.as_ref().map(|_| ClusterHost {
                member: self.clone(),
                runtime: tokio::runtime::Handle::current(),
                state: state.clone(),
                views: views.clone(),
                pending: pending.clone(),
            });
            (views, host)
        });
        let Some(scriptlet) = scriptlet else {
            // The built-in rule is a few comparisons per member: run here, not on a
            // blocking thread (whose hand-off costs more than the rule).
            return place(
                &views,
                request,
                target,
                exclude_current,
                None,
                &mut random_below,
            )
            .map_err(|error| Error::Refused(error.to_string()));
        };
        let request = request.clone();
        let target = target.clone();
        let exclude = exclude_current.map(str::to_string);
        tokio::task::spawn_blocking(move || {
            let limits = Limits::default();
            let run = host.as_ref().map(|host| ScriptletRun {
                scriptlet: &scriptlet,
                host,
                limits: &limits,
            });
            place(
                &views,
                &request,
                &target,
                exclude.as_deref(),
                run,
                &mut random_below,
            )
        })
        .await
        .map_err(|error| Error::Internal(error.to_string()))?
        .map_err(|error| Error::Refused(error.to_string()))
    }

    /// Chooses the member for a new (or moving) instance: a named target, else the installed
    /// scriptlet, else the built-in rule. The choice counts as an instance on that member
    /// (for the placements that follow) until the answer is dropped.
    pub(crate) async fn place_instance(
        &self,
        request: &PlacementRequest,
        target: &Target,
        exclude_current: Option<&str>,
        avoid: &BTreeSet<String>,
    ) -> Result<CountedPlacement, Error> {
        let _deciding = self.inner.placement.deciding.lock().await;
        let scriptlet = self.installed_scriptlet()?;
        let placement = self
            .place_avoiding(request, target, exclude_current, avoid, scriptlet)
            .await?;
        Ok(self.placement_counted(placement.member))
    }

    /// A placement on `member` is under way: it counts as an instance there until the answer
    /// is dropped.
    fn placement_counted(&self, member: String) -> CountedPlacement {
        *lock(&self.inner.placement.pending)
            .entry(member.clone())
            .or_default() += 1;
        CountedPlacement {
            member: self.clone(),
            name: member,
        }
    }

    /// The placement on `member` is recorded (or abandoned).
    fn placement_done(&self, member: &str) {
        let mut pending = lock(&self.inner.placement.pending);
        if let Some(count) = pending.get_mut(member) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                pending.remove(member);
            }
        }
    }

    /// A member's hardware resources (LXD's `resources`), read from the member itself.
    pub(crate) async fn member_resources(&self, name: &str) -> Result<Value, Error> {
        let dir = self.inner.dir.root().to_path_buf();
        self.ask_member(name, Request::MemberResources, move || {
            crate::sysinfo::local_resources(&dir)
        })
        .await
    }

    /// The placement request an input describes (the image resolved, profiles expanded).
    fn placement_request(&self, input: &PlacementInput) -> Result<PlacementRequest, Error> {
        self.local_state(|state| {
            let image = state.image(&input.image).map_err(Error::Refused)?;
            let project = if input.project.is_empty() {
                starling_store::instances::DEFAULT_PROJECT.to_string()
            } else {
                input.project.clone()
            };
            let profiles = if input.profiles.is_empty() {
                vec![starling_store::instances::DEFAULT_PROFILE.to_string()]
            } else {
                input.profiles.clone()
            };
            let (config, devices) =
                state.expand(&project, &profiles, &input.config, &BTreeMap::new());
            Ok(PlacementRequest {
                name: input.name.clone(),
                project,
                kind: "container".to_string(),
                architecture: image.architecture.clone(),
                source: image.fingerprint.clone(),
                config,
                devices,
                profiles,
                ephemeral: false,
                description: String::new(),
                reason: Reason::New,
            })
        })
    }

    /// Runs a placement operation (reads only: nothing is created).
    pub(crate) async fn placement_here(
        &self,
        operation: &PlacementOperation,
    ) -> Result<Value, Error> {
        let (input, scriptlet, installed) = match operation {
            PlacementOperation::Explain { request } => (request, self.installed_scriptlet()?, true),
            PlacementOperation::Test { source, request } => {
                let scriptlet = Scriptlet::compile(source).map_err(|error| {
                    Error::Refused(format!("Failed instance placement scriptlet: {error}"))
                })?;
                (request, Some(Arc::new(scriptlet)), false)
            }
        };
        let request = self.placement_request(input)?;
        let target =
            Target::parse(&input.target).map_err(|error| Error::Refused(error.to_string()))?;
        let pending = lock(&self.inner.placement.pending).clone();
        let raft = RaftRoles::of(self);
        let views = self.local_state(|state| member_views(state, &pending, &raft));
        let has_scriptlet = scriptlet.is_some();
        let placement = self
            .place_avoiding(&request, &target, None, &BTreeSet::new(), scriptlet)
            .await?;
        let candidates: Vec<Value> = views
            .iter()
            .filter(|view| {
                !placement
                    .exclusions
                    .iter()
                    .any(|exclusion| exclusion.member == view.name)
            })
            .map(|view| json!({"name": view.name, "instances": view.instance_count}))
            .collect();
        Ok(json!({
            "member": placement.member,
            "chosen_by": placement.chosen_by,
            "scriptlet": if has_scriptlet { if installed { "installed" } else { "tested" } } else { "none" },
            "candidates": candidates,
            "excluded": placement.exclusions.iter().map(|exclusion| json!({
                "name": exclusion.member,
                "reason": exclusion.reason.to_string(),
            })).collect::<Vec<_>>(),
            "log": placement.log.iter().map(|line| json!({
                "level": format!("{:?}", line.level).to_lowercase(),
                "text": line.text,
            })).collect::<Vec<_>>(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the installed scriptlet is compiled once per source, and again when the source
    /// changes; an empty source is no scriptlet.
    #[test]
    fn a_scriptlet_is_compiled_once_per_source() {
        let compiled = CompiledScriptlet::default();
        let source = |target: &str| {
            format!(
                "def instance_placement(request, candidate_members):\n    set_target(\"{target}\")\n"
            )
        };
        let first = compiled.get(source("m1")).unwrap().unwrap();
        let again = compiled.get(source("m1")).unwrap().unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "compiled twice from one source"
        );
        let changed = compiled.get(source("m2")).unwrap().unwrap();
        assert!(
            !Arc::ptr_eq(&first, &changed),
            "not compiled again after a change"
        );
        assert!(compiled.get("  \n".to_string()).unwrap().is_none());
        assert!(matches!(
            compiled.get("def other(a, b):\n    pass\n".to_string()),
            Err(Error::Refused(message)) if message.starts_with("Failed instance placement scriptlet")
        ));
    }
}
