//! Property tests of [`ClusterState::apply`]: random sequences of commands over a small
//! vocabulary of names (so that they often meet: the same member, instance, group, key), each
//! applied to two states from the same start.
//!
//! - Determinism: the same commands in the same order give the same state and the same
//!   answers (every member applies the log on its own).
//! - A refused command changes nothing (a refused untagged command; a tagged one remembers its
//!   outcome by design, see [`crate::requests`]).
//! - Tagged commands apply once: a request id proposed twice answers the first outcome and
//!   changes nothing the second time.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::command::tests::{bootstrapped, member};
use crate::command::MemberPatch;
use crate::images::ImageCommand;
use crate::instances::tests::{instance as instance_for_tests, test_image};
use crate::instances::{
    default_profile, ClusterGroup, InstanceChanges, InstanceCommand, InstanceStatus,
    DEFAULT_PROJECT, MOVE_CLAIM_KEY,
};
use crate::kv::KvCommand;
use crate::{ClusterState, Command};

const MEMBERS: [&str; 4] = ["m1", "m2", "m3", "m4"];
const INSTANCES: [&str; 3] = ["c1", "c2", "c-3"];
const GROUPS: [&str; 3] = ["default", "g1", "g2"];
const KEYS: [&str; 3] = ["k1", "k2", "k3"];
const CONFIG_KEYS: [&str; 5] = [
    "cluster.offline_threshold",
    "cluster.max_voters",
    "cluster.images_minimal_replica",
    "user.a",
    "no.such.key",
];
const CONFIG_VALUES: [&str; 5] = ["1", "20", "-1", "x", ""];
const MOVE_IDS: [&str; 3] = ["x", "y", ""];
/// Keys the patches name: two free ones, the scheduler's (member config) and a cluster key
/// (instance config, refused).
const PATCH_KEYS: [&str; 4] = ["user.a", "user.b", "scheduler.instance", MOVE_CLAIM_KEY];
const PATCH_VALUES: [&str; 4] = ["1", "2", "manual", ""];
const ROLES: [&str; 3] = ["event-hub", "ovn-chassis", "database"];

fn one_of(names: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::sample::select(names).prop_map(str::to_string)
}

fn instance_command() -> impl Strategy<Value = InstanceCommand> {
    let name = || one_of(&INSTANCES);
    let member = || one_of(&MEMBERS);
    let project = || Just(DEFAULT_PROJECT.to_string());
    prop_oneof![
        (name(), member()).prop_map(|(name, location)| {
            let mut instance = instance_for_tests(&name, &["default"]);
            instance.location = location;
            InstanceCommand::InstanceCreate { instance }
        }),
        (name(), member(), 0..4usize).prop_map(|(name, location, status)| {
            InstanceCommand::InstanceStatus {
                project: DEFAULT_PROJECT.into(),
                name,
                location,
                status: [
                    InstanceStatus::Creating,
                    InstanceStatus::Stopped,
                    InstanceStatus::Running,
                    InstanceStatus::Error,
                ][status],
                message: String::new(),
            }
        }),
        (project(), name(), member(), member()).prop_map(|(project, name, from, location)| {
            InstanceCommand::InstanceMove {
                project,
                name,
                from,
                location,
                config: BTreeMap::new(),
            }
        }),
        (project(), name(), member(), one_of(&MOVE_IDS)).prop_map(|(project, name, from, id)| {
            InstanceCommand::InstanceMoveClaim {
                project,
                name,
                from,
                id,
            }
        }),
        (project(), name(), one_of(&MOVE_IDS), member(), member()).prop_map(
            |(project, name, id, from, location)| InstanceCommand::InstanceMoveClaimed {
                project,
                name,
                id,
                from,
                location,
                config: BTreeMap::from([("user.moved".to_string(), Some("1".to_string()))]),
            }
        ),
        (project(), name(), one_of(&MOVE_IDS)).prop_map(|(project, name, id)| {
            InstanceCommand::InstanceMoveRelease { project, name, id }
        }),
        (
            project(),
            name(),
            proptest::option::of(member()),
            proptest::collection::btree_map(
                one_of(&PATCH_KEYS),
                proptest::option::of(one_of(&PATCH_VALUES)),
                1..3
            )
        )
            .prop_map(|(project, name, location, config)| {
                InstanceCommand::InstancePatch {
                    project,
                    name,
                    location,
                    config,
                }
            }),
        (
            proptest::option::of(one_of(&PATCH_VALUES)),
            proptest::option::of(one_of(&PATCH_VALUES))
        )
            .prop_map(|(read, wanted)| {
                let with = |value: Option<String>| {
                    let mut profile = default_profile(DEFAULT_PROJECT);
                    if let Some(value) = value {
                        profile.config.insert("user.p".into(), value);
                    }
                    profile
                };
                InstanceCommand::ProfileUpdateFrom {
                    before: with(read),
                    profile: with(wanted),
                }
            }),
        (project(), name(), one_of(&CONFIG_VALUES)).prop_map(|(project, name, value)| {
            InstanceCommand::InstanceUpdate {
                project,
                name,
                changes: InstanceChanges {
                    config: Some(BTreeMap::from([("user.v".to_string(), value)])),
                    ..InstanceChanges::default()
                },
            }
        }),
        (project(), name(), name())
            .prop_map(|(project, from, to)| InstanceCommand::InstanceRename { project, from, to }),
        (project(), name())
            .prop_map(|(project, name)| InstanceCommand::InstanceDelete { project, name }),
        (project(), name(), any::<bool>()).prop_map(|(project, name, deleting)| {
            InstanceCommand::InstanceDeleting {
                project,
                name,
                deleting,
            }
        }),
        (one_of(&GROUPS), proptest::collection::vec(member(), 0..3)).prop_map(|(name, members)| {
            InstanceCommand::GroupCreate {
                group: ClusterGroup {
                    name,
                    description: String::new(),
                },
                members,
            }
        }),
        one_of(&GROUPS).prop_map(|name| InstanceCommand::GroupDelete { name }),
        (member(), proptest::collection::vec(one_of(&GROUPS), 0..3))
            .prop_map(|(member, groups)| InstanceCommand::GroupAssign { member, groups }),
        (member(), one_of(&GROUPS), any::<bool>()).prop_map(|(member, group, inside)| {
            InstanceCommand::GroupMembership {
                member,
                group,
                inside,
            }
        }),
    ]
}

fn member_patch() -> impl Strategy<Value = MemberPatch> {
    prop_oneof![
        (one_of(&PATCH_KEYS), one_of(&PATCH_VALUES))
            .prop_map(|(key, value)| MemberPatch::ConfigSet { key, value }),
        one_of(&PATCH_KEYS).prop_map(|key| MemberPatch::ConfigUnset { key }),
        one_of(&ROLES).prop_map(|role| MemberPatch::RoleAdd { role }),
        one_of(&ROLES).prop_map(|role| MemberPatch::RoleRemove { role }),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    let member_name = || one_of(&MEMBERS);
    prop_oneof![
        4 => instance_command().prop_map(Command::Instance),
        2 => (member_name(), member_patch())
            .prop_map(|(name, patch)| Command::MemberPatch { name, patch }),
        1 => (one_of(&CONFIG_KEYS), one_of(&CONFIG_VALUES))
            .prop_map(|(key, value)| Command::ConfigSet { key, value }),
        1 => one_of(&CONFIG_KEYS).prop_map(|key| Command::ConfigUnset { key }),
        1 => member_name().prop_map(|name| Command::MemberRemove { name }),
        1 => (member_name(), member_name()).prop_map(|(from, to)| Command::MemberRename { from, to }),
        1 => (one_of(&KEYS), one_of(&CONFIG_VALUES))
            .prop_map(|(key, value)| Command::Kv(KvCommand::Set { key, value })),
        1 => one_of(&KEYS).prop_map(|key| Command::Kv(KvCommand::Delete { key })),
        1 => (one_of(&KEYS), -3i64..3, any::<u16>()).prop_map(|(key, delta, id)| {
            Command::Kv(KvCommand::Incr {
                key,
                delta,
                result_id: id.into(),
            })
        }),
        1 => Just(Command::Image(ImageCommand::Add { image: test_image() })),
        1 => member_name().prop_map(|member| Command::Image(ImageCommand::LocationAdd {
            fingerprint: test_image().fingerprint,
            member,
        })),
        1 => Just(Command::Image(ImageCommand::Delete {
            fingerprint: test_image().fingerprint,
        })),
    ]
}

/// A cluster of m1 (bootstrapped), m2 and m3; m4 is a name commands may use but no member has.
fn start() -> ClusterState {
    let mut state = bootstrapped();
    for (index, name) in ["m2", "m3"].iter().enumerate() {
        let record = member(name, index as u64 + 2);
        state.members.insert(record.name.clone(), record);
    }
    state
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Goal: the same commands in the same order give the same state and answers, a
    /// refused command leaves the state as it was, and the kept instances per location are
    /// a recount's.
    /// Method: each random sequence is applied to two states from the same start; before each
    /// command one state is cloned, and a refusal must leave it equal to the clone.
    #[test]
    fn apply_is_deterministic_and_a_refusal_changes_nothing(
        commands in proptest::collection::vec(command(), 1..60)
    ) {
        let (mut one, mut two) = (start(), start());
        for command in &commands {
            let before = one.clone();
            let first = one.apply(command);
            let second = two.apply(command);
            prop_assert_eq!(&first, &second, "{:?}", command);
            if first.is_err() {
                prop_assert!(one == before, "refused {:?} changed the state", command);
            }
            prop_assert!(one.counts_agree(), "instances per location wrong after {:?}", command);
        }
        prop_assert!(one == two);
    }

    /// Goal: a patch changes what it names and nothing else, on the record as it is when
    /// applied: a member's patch one config key or one role of that member, an instance's
    /// patch the config keys it names of that instance (so no patch undoes a change applied
    /// before it, whatever the state was when it was proposed).
    /// Method: random sequences; around each patch that applies, the state before and after
    /// are compared with the state before changed by hand the way the patch says.
    #[test]
    fn a_patch_changes_only_what_it_names(
        commands in proptest::collection::vec(command(), 1..80)
    ) {
        let mut state = start();
        for command in &commands {
            let mut expected = state.clone();
            let applied = state.apply(command).is_ok();
            match command {
                Command::MemberPatch { name, patch } if applied => {
                    let member = expected.members.get_mut(name).expect("a patched member");
                    match patch {
                        MemberPatch::ConfigSet { key, value } => {
                            member.config.insert(key.clone(), value.clone());
                        }
                        MemberPatch::ConfigUnset { key } => {
                            member.config.remove(key);
                        }
                        MemberPatch::RoleAdd { role } => {
                            if !member.user_roles.contains(role) {
                                member.user_roles.push(role.clone());
                            }
                        }
                        MemberPatch::RoleRemove { role } => {
                            member.user_roles.retain(|held| held != role);
                        }
                    }
                }
                Command::Instance(InstanceCommand::InstancePatch {
                    project, name, config, ..
                }) if applied => {
                    let instance = expected
                        .instances
                        .get_mut(&(project.clone(), name.clone()))
                        .expect("a patched instance");
                    for (key, value) in config {
                        match value {
                            Some(value) => instance.config.insert(key.clone(), value.clone()),
                            None => instance.config.remove(key),
                        };
                    }
                }
                Command::Instance(InstanceCommand::GroupMembership {
                    member, group, inside,
                }) if applied => {
                    let record = expected.members.get_mut(member).expect("a member");
                    if *inside && !record.groups.contains(group) {
                        record.groups.push(group.clone());
                    }
                    if !*inside {
                        record.groups.retain(|held| held != group);
                    }
                }
                _ => continue,
            }
            prop_assert_eq!(&state.members, &expected.members, "{:?}", command);
            prop_assert_eq!(&state.instances, &expected.instances, "{:?}", command);
            prop_assert_eq!(&state.profiles, &expected.profiles, "{:?}", command);
        }
    }

    /// Goal: a tagged command applies once: proposed again with its request id it answers the
    /// first outcome and changes nothing.
    /// Method: random sequences, each command tagged and applied twice in a row.
    #[test]
    fn a_tagged_command_applies_once(
        commands in proptest::collection::vec(command(), 1..40)
    ) {
        let mut state = start();
        for (index, command) in commands.into_iter().enumerate() {
            let tagged = Command::Once {
                request_id: index as u128 + 1,
                command: Box::new(command),
            };
            let first = state.apply(&tagged);
            let after = state.clone();
            let again = state.apply(&tagged);
            prop_assert_eq!(&first, &again);
            prop_assert!(state == after, "a repeat of {:?} changed the state", tagged);
        }
    }
}
