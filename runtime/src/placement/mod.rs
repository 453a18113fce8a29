//! Placement: which cluster member a new, evacuated or relocated instance goes to.
//!
//! Everything here is IO-free: the caller passes a snapshot of the members (with their
//! instance counts), the request and, for the scriptlet, a [`ScriptletHost`] that answers the
//! read-only questions a scriptlet may ask. The decision is [`place`]:
//!
//! 1. [`rules::candidates`] keeps the members that may take the instance (status, architecture,
//!    `scheduler.instance`, the `--target`), and says why each other member was left out.
//! 2. A named target (`--target m1`) is the answer. Otherwise, when a placement scriptlet is
//!    set ([`Scriptlet`], the `instances.placement.scriptlet` key), it may choose among the
//!    candidates with `set_target`.
//! 3. When it did not, [`rules::choose_least_loaded`] takes the candidate with the fewest
//!    instances, ties broken at random.
//!
//! # Layout
//! - this file: the data types ([`MemberView`], [`PlacementRequest`], [`Target`],
//!   [`Exclusion`], [`PlacementError`]) and [`place`];
//! - [`rules`]: the built-in rules, LXD's semantics;
//! - [`scriptlet`]: Starlark placement scriptlets, compiled once and run under time and memory
//!   bounds;
//! - [`ops`]: carried out on a member: views built from the cluster state, the installed
//!   scriptlet compiled once per source, live member state and resources over QUIC, creations
//!   in flight, `placement.explain` and `placement.test`.

pub mod ops;
pub mod rules;
pub mod scriptlet;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use rules::{candidates, choose_least_loaded};
pub use scriptlet::{
    instance_resources, validate, InstanceResources, Limits, LogLevel, LogLine, Outcome, Scriptlet,
    ScriptletError, ScriptletHost,
};

/// The member config key that says when a member may be chosen automatically.
pub const SCHEDULER_KEY: &str = "scheduler.instance";

/// A cluster member as placement sees it: LXD's member fields plus its load.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Member name (`server_name` in a scriptlet).
    pub name: String,
    /// Address other members and clients reach it at.
    pub url: String,
    /// Whether it holds a replica of the cluster database.
    pub database: bool,
    /// LXD's status word: `Online`, `Offline`, `Evacuated`, `Pending`, `Blocked`.
    pub status: String,
    /// The status explained (`Fully operational`, `No heartbeat for 25s`).
    pub message: String,
    /// Kernel architecture name (`x86_64`, `aarch64`).
    pub architecture: String,
    /// Roles (`database`, `database-leader`, `event-hub`, ...).
    pub roles: Vec<String>,
    /// Failure domain (`default` unless set).
    pub failure_domain: String,
    /// Free text.
    pub description: String,
    /// Member config (`scheduler.instance`, `user.*`).
    pub config: BTreeMap<String, String>,
    /// Cluster groups it belongs to.
    pub groups: Vec<String>,
    /// When it may be chosen automatically; the caller fills it with
    /// [`SchedulerMode::from_config`] of `config`.
    pub scheduler: SchedulerMode,
    /// Instances on it, creations and moves in flight included.
    pub instance_count: u64,
    /// Left out of automatic placement for this one request: a move to it has just failed
    /// (it died or cannot be reached, and is not recorded offline yet).
    #[serde(skip)]
    pub move_failed: bool,
    /// The cluster state's `members_revision` this view was made at (`None`: made by hand):
    /// views of the same revision show the same member records.
    #[serde(skip)]
    pub revision: Option<u64>,
}

/// `scheduler.instance` on a member.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerMode {
    /// Chosen for untargeted instances, by name, and for its groups.
    #[default]
    All,
    /// Chosen by name or when one of its groups is targeted.
    Group,
    /// Chosen only when targeted by name.
    Manual,
}

impl SchedulerMode {
    /// Reads `scheduler.instance` from a member's config: `all` when unset. The key is
    /// validated when it is set, so any other value reads as `all` here.
    pub fn from_config(config: &BTreeMap<String, String>) -> SchedulerMode {
        match config.get(SCHEDULER_KEY).map(|value| value.trim()) {
            Some("group") => SchedulerMode::Group,
            Some("manual") => SchedulerMode::Manual,
            _ => SchedulerMode::All,
        }
    }
}

/// Why the cluster is placing an instance (`request.reason` in a scriptlet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// A new instance, with no target or a `@group` target.
    #[default]
    New,
    /// Moved off a member that is being evacuated.
    Evacuation,
    /// Moved to a `@group` by the operator.
    Relocation,
}

impl fmt::Display for Reason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Reason::New => "new",
            Reason::Evacuation => "evacuation",
            Reason::Relocation => "relocation",
        })
    }
}

/// The instance to place, with its profiles already applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRequest {
    /// Instance name.
    pub name: String,
    /// Project it belongs to.
    pub project: String,
    /// `container` (LXD's `type`; `virtual-machine` is not supported yet).
    pub kind: String,
    /// Architecture it needs; empty for any.
    pub architecture: String,
    /// Image fingerprint or alias it is created from; empty for a move.
    pub source: String,
    /// Expanded config: profiles applied, then the instance's own keys.
    pub config: BTreeMap<String, String>,
    /// Expanded devices: device name → its keys (`type`, `path`, `size`, ...).
    pub devices: BTreeMap<String, BTreeMap<String, String>>,
    /// Profiles, in order.
    pub profiles: Vec<String>,
    /// Whether it is deleted when stopped.
    pub ephemeral: bool,
    /// Free text.
    pub description: String,
    /// Why it is being placed.
    pub reason: Reason,
}

/// Where the operator asked for the instance to go (`--target`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// No target: the cluster chooses among all members.
    #[default]
    None,
    /// `--target NAME`: that member, whatever its `scheduler.instance`.
    Member(String),
    /// `--target @GROUP`: the cluster chooses among the members of that group.
    Group(String),
}

impl Target {
    /// Parses a `--target` value: empty → [`Target::None`], `@gpu` → [`Target::Group`],
    /// anything else → [`Target::Member`]. A bare `@` is refused.
    pub fn parse(text: &str) -> Result<Target, PlacementError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Target::None);
        }
        match text.strip_prefix('@') {
            Some("") => Err(PlacementError::EmptyGroupName),
            Some(group) => Ok(Target::Group(group.to_string())),
            None => Ok(Target::Member(text.to_string())),
        }
    }
}

/// A member left out of the candidates, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exclusion {
    /// Member name.
    pub member: String,
    /// Why it cannot take the instance.
    pub reason: ExclusionReason,
}

impl fmt::Display for Exclusion {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.member, self.reason)
    }
}

/// Why a member cannot take an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExclusionReason {
    /// No heartbeat: recorded offline.
    Offline,
    /// Evacuated for maintenance.
    Evacuated,
    /// Still joining the cluster.
    Pending,
    /// Runs another version than the cluster.
    Blocked,
    /// Any other status than `Online`.
    Status {
        /// The status word.
        status: String,
    },
    /// Its architecture cannot run the instance.
    Architecture {
        /// The member's architecture.
        member_arch: String,
        /// The instance's architecture.
        wanted: String,
    },
    /// `scheduler.instance=manual`: chosen only when targeted by name.
    SchedulerManual,
    /// `scheduler.instance=group`: chosen only by name or for one of its groups.
    SchedulerGroupOnly,
    /// Not in the targeted group.
    NotInGroup {
        /// The targeted group.
        group: String,
    },
    /// The instance is already there (a move must go elsewhere).
    CurrentLocation,
    /// A move of this instance to it has just failed.
    MoveFailed,
}

impl ExclusionReason {
    /// The reason a member with this status is left out; `None` for `Online`.
    pub fn for_status(status: &str) -> Option<ExclusionReason> {
        // Compared without a lowercase copy: this runs for every candidate of every decision.
        if status.eq_ignore_ascii_case("online") {
            return None;
        }
        let known = [
            ("offline", ExclusionReason::Offline),
            ("evacuated", ExclusionReason::Evacuated),
            ("pending", ExclusionReason::Pending),
            ("blocked", ExclusionReason::Blocked),
        ];
        let reason = known
            .into_iter()
            .find(|(name, _)| status.eq_ignore_ascii_case(name))
            .map(|(_, reason)| reason);
        Some(reason.unwrap_or_else(|| ExclusionReason::Status {
            status: status.to_string(),
        }))
    }
}

impl fmt::Display for ExclusionReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExclusionReason::Offline => formatter.write_str("offline"),
            ExclusionReason::Evacuated => formatter.write_str("evacuated"),
            ExclusionReason::Pending => formatter.write_str("pending (still joining)"),
            ExclusionReason::Blocked => formatter.write_str("blocked (version mismatch)"),
            ExclusionReason::Status { status } => write!(formatter, "status is {status}"),
            ExclusionReason::Architecture {
                member_arch,
                wanted,
            } => write!(
                formatter,
                "architecture {member_arch} cannot run a {wanted} instance"
            ),
            ExclusionReason::SchedulerManual => formatter
                .write_str("scheduler.instance is manual (chosen only when targeted by name)"),
            ExclusionReason::SchedulerGroupOnly => formatter.write_str(
                "scheduler.instance is group (chosen only by name or for one of its groups)",
            ),
            ExclusionReason::NotInGroup { group } => write!(formatter, "not in group {group}"),
            ExclusionReason::CurrentLocation => {
                formatter.write_str("the instance is already on it")
            }
            ExclusionReason::MoveFailed => {
                formatter.write_str("a move of the instance to it has just failed")
            }
        }
    }
}

/// Why no member could be chosen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum PlacementError {
    /// Every member was left out; each is listed with the reason.
    #[error("No suitable cluster member could be found{}", ExclusionList(.exclusions))]
    NoCandidate {
        /// The members left out, and why.
        exclusions: Vec<Exclusion>,
    },
    /// `--target NAME` names no member.
    #[error("Cluster member {name:?} not found")]
    UnknownMember {
        /// The name given.
        name: String,
    },
    /// `--target @GROUP` names a group no member is in (it does not exist, or is empty).
    #[error("Cluster group {group:?} not found or has no members")]
    UnknownGroup {
        /// The group given.
        group: String,
    },
    /// `--target @` with no group name.
    #[error("Empty cluster group name in target \"@\"")]
    EmptyGroupName,
    /// `--target NAME` names a member that cannot take the instance now.
    #[error("Cluster member {member} cannot take the instance: {reason}")]
    TargetNotUsable {
        /// The member named.
        member: String,
        /// Why it cannot.
        reason: ExclusionReason,
    },
    /// The placement scriptlet failed (see [`ScriptletError`]).
    #[error("Failed instance placement scriptlet: {0}")]
    Scriptlet(String),
}

impl From<ScriptletError> for PlacementError {
    fn from(error: ScriptletError) -> Self {
        PlacementError::Scriptlet(error.to_string())
    }
}

/// Formats exclusions as ` (m1: offline; m2: ...)`, or nothing when there are none.
struct ExclusionList<'a>(&'a [Exclusion]);

impl fmt::Display for ExclusionList<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return formatter.write_str(" (the cluster has no members)");
        }
        formatter.write_str(" (")?;
        for (position, exclusion) in self.0.iter().enumerate() {
            if position > 0 {
                formatter.write_str("; ")?;
            }
            write!(formatter, "{exclusion}")?;
        }
        formatter.write_str(")")
    }
}

/// The scriptlet to consult, with what it needs to run.
#[derive(Clone, Copy)]
pub struct ScriptletRun<'a> {
    /// The compiled `instances.placement.scriptlet`.
    pub scriptlet: &'a Scriptlet,
    /// Answers its read-only built-ins.
    pub host: &'a dyn ScriptletHost,
    /// Its time and memory bounds.
    pub limits: &'a Limits,
}

/// Who chose the member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChosenBy {
    /// The operator's `--target NAME`.
    Target,
    /// The placement scriptlet's `set_target`.
    Scriptlet,
    /// The built-in rule: fewest instances.
    LeastLoaded,
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The chosen member.
    pub member: String,
    /// Who chose it.
    pub chosen_by: ChosenBy,
    /// The members left out, and why.
    pub exclusions: Vec<Exclusion>,
    /// What the scriptlet logged, for the member's log.
    pub log: Vec<LogLine>,
}

/// Chooses the member for `request`: the named target, else the scriptlet's choice (when one
/// is given), else the least loaded candidate. `exclude_current` is the instance's member for
/// a move. `random(n)` returns an index below `n` to break ties.
pub fn place(
    members: &[MemberView],
    request: &PlacementRequest,
    target: &Target,
    exclude_current: Option<&str>,
    scriptlet: Option<ScriptletRun<'_>>,
    random: &mut impl FnMut(usize) -> usize,
) -> Result<Placement, PlacementError> {
    let (candidates, exclusions) =
        rules::candidates(members, &request.architecture, target, exclude_current)?;
    if let Target::Member(name) = target {
        return Ok(Placement {
            member: name.clone(),
            chosen_by: ChosenBy::Target,
            exclusions,
            log: Vec::new(),
        });
    }
    let mut log = Vec::new();
    if let Some(run) = scriptlet {
        let outcome = run
            .scriptlet
            .run(request, &candidates, run.host, run.limits)?;
        log = outcome.log;
        if let Some(member) = outcome.target {
            return Ok(Placement {
                member,
                chosen_by: ChosenBy::Scriptlet,
                exclusions,
                log,
            });
        }
    }
    match rules::choose_least_loaded(&candidates, random) {
        Some(member) => Ok(Placement {
            member,
            chosen_by: ChosenBy::LeastLoaded,
            exclusions,
            log,
        }),
        None => Err(PlacementError::NoCandidate { exclusions }),
    }
}

#[cfg(test)]
mod tests;
