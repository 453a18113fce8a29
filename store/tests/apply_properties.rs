//! Property tests of `ClusterState::apply`, the only way the replicated state changes.
//!
//! The commands come from small alphabets of names (three members, two pools, two images,
//! ...) so that they collide: a good share is refused (a name taken, a token already used, a
//! tick claimed twice), which is what the properties are about. What they say:
//! - **Determinism**: the same commands in the same order give the same state and the same
//!   answers on two replicas, one of which restarted halfway from a snapshot of its state.
//! - **A refusal changes nothing**: every refused command leaves the whole state as it was
//!   (a refused `Once` records its outcome, and only that; a refused join or trust claim
//!   whose token has expired may remove that token, and only that).
//! - **A batch is its commands one by one**, and **a repeated request id changes nothing**.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::select;

use starling_store::evacuation::EvacuationCommand;
use starling_store::images::{Image, ImageAlias, ImageCommand};
use starling_store::instances::{ClusterGroup, Instance, InstanceCommand, InstanceStatus, Project};
use starling_store::kv::KvCommand;
use starling_store::member_config::Answer;
use starling_store::scripts::{Missed, RunStatus, ScriptCommand, StoredScript};
use starling_store::{
    ClusterState, Command, HealthUpdate, JoinToken, Member, MemberChanges, MemberStatus, Network,
    StoragePool, TokenKind, TrustedClient,
};

/// Member names, valid and not: `none` is reserved and `m 4` has a space.
const MEMBERS: &[&str] = &["m1", "m2", "m3", "none", "m 4"];
/// Token secrets: the tokens are issued with either, and presented with either.
const SECRETS: &[&str] = &["s", "t"];
/// Times (ms) of joins and expiries: a token issued to expire at 100 is dead at 100 and 2000.
const TIMES_MS: &[u64] = &[10, 100, 2_000];
/// Group, pool, network and project names: `default` exists after bootstrap, `a_b` is invalid.
const OBJECTS: &[&str] = &["default", "g1", "g2", "a_b"];
/// Client certificate fingerprints (`admin` is the bootstrap administrator's).
const CLIENTS: &[&str] = &["admin", "c1", "c2"];
/// kv keys and values: JSON text, and one value that is not JSON.
const KV_KEYS: &[&str] = &["k1", "k2"];
const KV_VALUES: &[&str] = &["1", "41", "\"x\"", "{\"a\":1}", "not json"];
/// Stored script names (`9s` is invalid: a name starts with a letter).
const SCRIPTS: &[&str] = &["s1", "s2", "9s"];
/// Instance names (`-x` is invalid).
const INSTANCES: &[&str] = &["c1", "c2", "-x"];

fn pick(names: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    select(names).prop_map(str::to_string)
}

/// Two valid image fingerprints and one invalid.
fn fingerprint() -> impl Strategy<Value = String> {
    select(vec!["a".repeat(64), "b".repeat(64), "xyz".to_string()])
}

/// A member record as a joiner sends it; the address index makes addresses collide.
fn member(name: String, address: u8) -> Member {
    Member {
        address: format!("10.0.0.{address}:8443"),
        architecture: "x86_64".to_string(),
        description: String::new(),
        failure_domain: "default".to_string(),
        config: BTreeMap::new(),
        groups: vec!["default".to_string()],
        user_roles: Vec::new(),
        certificate_fingerprint: format!("cert-{name}"),
        admin_fingerprint: format!("admin-{name}"),
        joined_at_ms: 0,
        status: MemberStatus::Online,
        last_heartbeat_ms: 0,
        id: 0,
        name,
    }
}

/// The first command of every history: one member, `m1`, and the administrator `admin`.
fn bootstrap() -> Command {
    let mut first = member("m1".to_string(), 1);
    first.id = 1;
    Command::Bootstrap {
        member: first,
        ca_cert_pem: "ca".to_string(),
        ca_key_pem: "key".to_string(),
        admin: TrustedClient {
            name: "admin".to_string(),
            fingerprint: "admin".to_string(),
            added_at_ms: 0,
        },
    }
}

/// An image record as an import makes it.
fn image(fingerprint: String, aliases: Vec<String>) -> Image {
    Image {
        fingerprint,
        size: 1,
        filename: "image.tar".to_string(),
        architecture: "x86_64".to_string(),
        properties: BTreeMap::new(),
        aliases: aliases
            .into_iter()
            .map(|name| ImageAlias {
                name,
                description: String::new(),
            })
            .collect(),
        public: false,
        created_at: 0,
        uploaded_at_ms: 0,
        locations: BTreeSet::from(["m1".to_string()]),
    }
}

/// A project with nothing set.
fn project(name: String) -> Project {
    Project {
        name,
        description: String::new(),
        config: BTreeMap::new(),
    }
}

/// An instance record as placement makes it.
fn instance(project: String, name: String, location: String, image: String) -> Instance {
    Instance {
        project,
        name,
        kind: "container".to_string(),
        architecture: "x86_64".to_string(),
        config: BTreeMap::new(),
        devices: BTreeMap::new(),
        profiles: vec!["default".to_string()],
        location,
        status: InstanceStatus::Creating,
        status_message: String::new(),
        created_at_ms: 0,
        description: String::new(),
        ephemeral: false,
        image,
    }
}

fn token_kind() -> impl Strategy<Value = TokenKind> {
    prop_oneof![Just(TokenKind::Join), Just(TokenKind::Client)]
}

/// Answers to the join questions: the `source` of pools `g1` and `g2` (required when they
/// are not `dir` pools), some for pools that do not exist.
fn answers() -> impl Strategy<Value = Vec<Answer>> {
    prop::collection::vec(
        pick(&["g1", "g2"]).prop_map(|name| Answer {
            entity: "storage-pool".to_string(),
            name,
            key: "source".to_string(),
            value: "/dev/sdb".to_string(),
        }),
        0..3,
    )
}

fn membership_commands() -> BoxedStrategy<Command> {
    prop_oneof![
        3 => (pick(MEMBERS), token_kind(), pick(SECRETS), select(TIMES_MS)).prop_map(
            |(name, kind, secret, expires_at_ms)| Command::TokenIssue {
                token: JoinToken {
                    name,
                    kind,
                    secret,
                    fingerprint: "f".repeat(64),
                    addresses: vec!["10.0.0.1:8443".to_string()],
                    expires_at_ms,
                },
            }
        ),
        1 => (pick(MEMBERS), token_kind()).prop_map(|(name, kind)| Command::TokenRevoke { name, kind }),
        3 => (pick(MEMBERS), 1..4u8, answers(), pick(SECRETS), select(TIMES_MS)).prop_map(
            |(name, address, answers, secret, now_ms)| Command::MemberAdd {
                member: member(name, address),
                answers,
                secret,
                now_ms,
            }
        ),
        1 => prop::collection::vec(
            (
                pick(MEMBERS),
                prop_oneof![
                    Just(MemberStatus::Online),
                    Just(MemberStatus::Offline),
                    Just(MemberStatus::Evacuated)
                ],
                0..5u64
            ),
            0..3
        )
        .prop_map(|updates| Command::MemberHealth {
            updates: updates
                .into_iter()
                .map(|(name, status, last_heartbeat_ms)| HealthUpdate {
                    name,
                    status,
                    last_heartbeat_ms,
                })
                .collect(),
        }),
        1 => (pick(MEMBERS), member_changes())
            .prop_map(|(name, changes)| Command::MemberUpdate { name, changes }),
        1 => (pick(MEMBERS), pick(MEMBERS)).prop_map(|(from, to)| Command::MemberRename { from, to }),
        1 => pick(MEMBERS).prop_map(|name| Command::MemberRemove { name }),
        1 => (pick(CLIENTS), pick(MEMBERS), pick(SECRETS), select(TIMES_MS)).prop_map(
            |(fingerprint, name, secret, now_ms)| Command::ClientTrust {
                client: TrustedClient {
                    name,
                    fingerprint,
                    added_at_ms: now_ms,
                },
                secret,
                now_ms,
            }
        ),
        1 => pick(CLIENTS).prop_map(|fingerprint| Command::TrustRemove { fingerprint }),
    ]
    .boxed()
}

fn member_changes() -> BoxedStrategy<MemberChanges> {
    let groups = prop::collection::vec(pick(OBJECTS), 0..3);
    let roles = prop::collection::vec(pick(&["event-hub", "ovn-chassis", "database"]), 0..2);
    let config = prop::collection::btree_map(
        pick(&["user.a", "scheduler.instance", "bogus"]),
        pick(&["all", "manual", "x"]),
        0..2,
    );
    (
        prop::option::of(pick(&["rack 1", ""])),
        prop::option::of(pick(OBJECTS)),
        prop::option::of(config),
        prop::option::of(groups),
        prop::option::of(roles),
    )
        .prop_map(
            |(description, failure_domain, config, groups, user_roles)| MemberChanges {
                description,
                failure_domain,
                config,
                groups,
                user_roles,
            },
        )
        .boxed()
}

fn config_commands() -> BoxedStrategy<Command> {
    let key = pick(&[
        "user.a",
        "user.",
        "cluster.max_voters",
        "cluster.offline_threshold",
        "cluster.join_token_expiry",
        "cluster.bogus",
    ]);
    prop_oneof![
        (key.clone(), pick(&["1", "3", "5", "30M", "x", ""]))
            .prop_map(|(key, value)| Command::ConfigSet { key, value }),
        key.prop_map(|key| Command::ConfigUnset { key }),
        (pick(OBJECTS), pick(&["dir", "zfs", "tape"])).prop_map(|(name, driver)| {
            Command::PoolCreate {
                pool: StoragePool {
                    name,
                    driver,
                    description: String::new(),
                    config: BTreeMap::new(),
                    member_config: BTreeMap::new(),
                },
            }
        }),
        pick(OBJECTS).prop_map(|name| Command::PoolDelete { name }),
        (pick(OBJECTS), pick(&["bridge", "ovn", "token-ring"])).prop_map(|(name, network_type)| {
            Command::NetworkCreate {
                network: Network {
                    name,
                    network_type,
                    description: String::new(),
                    config: BTreeMap::new(),
                    member_config: BTreeMap::new(),
                },
            }
        }),
        pick(OBJECTS).prop_map(|name| Command::NetworkDelete { name }),
    ]
    .boxed()
}

fn kv_commands() -> BoxedStrategy<Command> {
    let value = pick(KV_VALUES);
    prop_oneof![
        (pick(KV_KEYS), value.clone()).prop_map(|(key, value)| KvCommand::Set { key, value }),
        pick(KV_KEYS).prop_map(|key| KvCommand::Delete { key }),
        (
            pick(KV_KEYS),
            prop::option::of(value.clone()),
            prop::option::of(value),
            0..4u128
        )
            .prop_map(|(key, expected, new, result_id)| KvCommand::Cas {
                key,
                expected,
                new,
                result_id,
            }),
        (
            pick(KV_KEYS),
            prop_oneof![Just(1i64), Just(-1), Just(i64::MAX), Just(i64::MIN)],
            0..4u128
        )
            .prop_map(|(key, delta, result_id)| KvCommand::Incr {
                key,
                delta,
                result_id,
            }),
    ]
    .prop_map(Command::Kv)
    .boxed()
}

fn image_commands() -> BoxedStrategy<Command> {
    let alias = pick(&["a1", "a2", "a b"]);
    prop_oneof![
        (fingerprint(), prop::collection::vec(alias.clone(), 0..3)).prop_map(
            |(fingerprint, aliases)| ImageCommand::Add {
                image: image(fingerprint, aliases),
            }
        ),
        (fingerprint(), pick(MEMBERS)).prop_map(|(fingerprint, member)| {
            ImageCommand::LocationAdd {
                fingerprint,
                member,
            }
        }),
        (fingerprint(), pick(MEMBERS)).prop_map(|(fingerprint, member)| {
            ImageCommand::LocationRemove {
                fingerprint,
                member,
            }
        }),
        fingerprint().prop_map(|fingerprint| ImageCommand::Delete { fingerprint }),
        (fingerprint(), alias.clone()).prop_map(|(fingerprint, name)| ImageCommand::AliasAdd {
            fingerprint,
            alias: ImageAlias {
                name,
                description: String::new(),
            },
        }),
        alias
            .clone()
            .prop_map(|name| ImageCommand::AliasRemove { name }),
        (alias.clone(), alias).prop_map(|(from, to)| ImageCommand::AliasRename { from, to }),
    ]
    .prop_map(Command::Image)
    .boxed()
}

fn instance_commands() -> BoxedStrategy<Command> {
    let projects = pick(&["default", "p1", "p2", "a_b"]);
    prop_oneof![
        (
            projects.clone(),
            pick(INSTANCES),
            pick(MEMBERS),
            fingerprint()
        )
            .prop_map(
                |(project, name, location, image)| InstanceCommand::InstanceCreate {
                    instance: instance(project, name, location, image),
                }
            ),
        (projects.clone(), pick(INSTANCES), pick(MEMBERS)).prop_map(|(project, name, location)| {
            InstanceCommand::InstanceStatus {
                project,
                name,
                location,
                status: InstanceStatus::Running,
                message: String::new(),
            }
        }),
        (
            projects.clone(),
            pick(INSTANCES),
            pick(MEMBERS),
            pick(MEMBERS)
        )
            .prop_map(
                |(project, name, from, location)| InstanceCommand::InstanceMove {
                    project,
                    name,
                    from,
                    location,
                    config: BTreeMap::from([("user.moved".to_string(), Some("1".to_string()))]),
                }
            ),
        (projects.clone(), pick(INSTANCES), pick(INSTANCES))
            .prop_map(|(project, from, to)| InstanceCommand::InstanceRename { project, from, to }),
        (projects.clone(), pick(INSTANCES))
            .prop_map(|(project, name)| InstanceCommand::InstanceDelete { project, name }),
        projects
            .clone()
            .prop_map(|name| InstanceCommand::ProjectCreate {
                project: project(name),
            }),
        projects
            .clone()
            .prop_map(|name| InstanceCommand::ProjectDelete { name }),
        (projects.clone(), projects)
            .prop_map(|(from, to)| InstanceCommand::ProjectRename { from, to }),
        (pick(OBJECTS), prop::collection::vec(pick(MEMBERS), 0..3)).prop_map(|(name, members)| {
            InstanceCommand::GroupCreate {
                group: ClusterGroup {
                    name,
                    description: String::new(),
                },
                members,
            }
        }),
        (pick(OBJECTS), pick(OBJECTS))
            .prop_map(|(from, to)| InstanceCommand::GroupRename { from, to }),
        pick(OBJECTS).prop_map(|name| InstanceCommand::GroupDelete { name }),
        (pick(MEMBERS), prop::collection::vec(pick(OBJECTS), 0..3))
            .prop_map(|(member, groups)| InstanceCommand::GroupAssign { member, groups }),
    ]
    .prop_map(Command::Instance)
    .boxed()
}

fn script_commands() -> BoxedStrategy<Command> {
    let now_ms = select(TIMES_MS);
    prop_oneof![
        (
            pick(SCRIPTS),
            any::<bool>(),
            prop::option::of(pick(&["@hourly"])),
            now_ms.clone()
        )
            .prop_map(|(name, create, schedule, now_ms)| ScriptCommand::Put {
                script: StoredScript {
                    name,
                    description: String::new(),
                    source: "return 1".to_string(),
                    schedule,
                    on: Vec::new(),
                    member: None,
                    timeout_s: 10,
                    missed: Missed::RunOnce,
                    created_at_ms: now_ms,
                    updated_at_ms: now_ms,
                },
                create,
            }),
        pick(SCRIPTS).prop_map(|name| ScriptCommand::Delete { name }),
        (
            0..3u128,
            pick(SCRIPTS),
            prop::option::of(select(&[5u64, 10][..])),
            pick(MEMBERS),
            now_ms.clone(),
            prop::option::of(pick(&["missed"])),
        )
            .prop_map(|(claim, script, tick_ms, member, now_ms, skipped)| {
                ScriptCommand::Claim {
                    claim,
                    script,
                    tick_ms,
                    trigger: None,
                    event: None,
                    member,
                    now_ms,
                    skipped,
                }
            }),
        (
            0..4u64,
            prop_oneof![
                Just(RunStatus::Ok),
                Just(RunStatus::Error),
                Just(RunStatus::Lost)
            ],
            now_ms.clone()
        )
            .prop_map(|(run, status, now_ms)| ScriptCommand::End {
                run,
                status,
                result: None,
                error: None,
                output: "out".to_string(),
                now_ms,
            }),
        (prop::collection::vec(0..4u64, 0..3), now_ms).prop_map(|(runs, now_ms)| {
            ScriptCommand::Lost {
                runs,
                reason: "member gone".to_string(),
                now_ms,
            }
        }),
    ]
    .prop_map(Command::Script)
    .boxed()
}

/// One command that is neither a batch nor tagged.
fn single_command() -> BoxedStrategy<Command> {
    prop_oneof![
        3 => membership_commands(),
        2 => config_commands(),
        2 => kv_commands(),
        2 => image_commands(),
        3 => instance_commands(),
        2 => script_commands(),
        1 => Just(bootstrap()),
        1 => pick(MEMBERS).prop_map(|member| Command::Evacuation(EvacuationCommand::End {
            member,
            ended_at_ms: 1,
            cancelled: false,
        })),
    ]
    .boxed()
}

/// One log entry's command: mostly single commands, some tagged with a request id (ids
/// collide, so some are repeats), some batches (a few with a batch nested, which is refused).
fn entry_command() -> BoxedStrategy<Command> {
    prop_oneof![
        8 => single_command(),
        2 => (1..4u128, single_command()).prop_map(|(request_id, command)| Command::Once {
            request_id,
            command: Box::new(command),
        }),
        1 => prop::collection::vec(
            prop_oneof![
                6 => single_command(),
                1 => Just(Command::Batch(Vec::new().into())),
            ],
            0..4,
        )
        .prop_map(|commands| Command::Batch(commands.into())),
    ]
    .boxed()
}

/// A few commands that succeed together when nothing in between spoils them: a token and
/// the join or trust claim that uses it; a script, a claim of its tick, and the run's end.
fn story() -> BoxedStrategy<Vec<Command>> {
    let join = (
        pick(&["m2", "m3"]),
        2..4u8,
        pick(SECRETS),
        select(TIMES_MS),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(name, address, secret, now_ms, then)| {
            let mut commands = vec![
                Command::TokenIssue {
                    token: JoinToken {
                        name: name.clone(),
                        kind: TokenKind::Join,
                        secret: "s".to_string(),
                        fingerprint: "f".repeat(64),
                        addresses: Vec::new(),
                        expires_at_ms: 1_000,
                    },
                },
                Command::MemberAdd {
                    member: member(name.clone(), address),
                    answers: Vec::new(),
                    secret,
                    now_ms,
                },
            ];
            match then {
                Some(true) => commands.push(Command::MemberRemove { name }),
                Some(false) => commands.push(Command::MemberRename {
                    from: name,
                    to: "m4".to_string(),
                }),
                None => {}
            }
            commands
        });
    let trust = (pick(&["c1", "c2"]), pick(SECRETS)).prop_map(|(fingerprint, secret)| {
        vec![
            Command::TokenIssue {
                token: JoinToken {
                    name: "laptop".to_string(),
                    kind: TokenKind::Client,
                    secret: "s".to_string(),
                    fingerprint: "f".repeat(64),
                    addresses: Vec::new(),
                    expires_at_ms: 1_000,
                },
            },
            Command::ClientTrust {
                client: TrustedClient {
                    name: "laptop".to_string(),
                    fingerprint,
                    added_at_ms: 10,
                },
                secret,
                now_ms: 10,
            },
        ]
    });
    let run = (pick(SCRIPTS), 0..3u64).prop_map(|(name, run)| {
        vec![
            Command::Script(ScriptCommand::Put {
                script: StoredScript {
                    name: name.clone(),
                    description: String::new(),
                    source: "return 1".to_string(),
                    schedule: Some("@every 1s".to_string()),
                    on: Vec::new(),
                    member: None,
                    timeout_s: 10,
                    missed: Missed::RunOnce,
                    created_at_ms: 1,
                    updated_at_ms: 1,
                },
                create: true,
            }),
            Command::Script(ScriptCommand::Claim {
                claim: 9,
                script: name,
                tick_ms: Some(1_000),
                trigger: None,
                event: None,
                member: "m1".to_string(),
                now_ms: 1_000,
                skipped: None,
            }),
            Command::Script(ScriptCommand::End {
                run,
                status: RunStatus::Ok,
                result: None,
                error: None,
                output: String::new(),
                now_ms: 1_100,
            }),
        ]
    });
    let objects = (any::<bool>(), pick(&["c1", "c2"])).prop_map(|(moved, name)| {
        let fingerprint = "a".repeat(64);
        let mut commands = vec![
            Command::Image(ImageCommand::Add {
                image: image(fingerprint.clone(), vec!["a1".to_string()]),
            }),
            Command::Image(ImageCommand::AliasRename {
                from: "a1".to_string(),
                to: "a2".to_string(),
            }),
            Command::Instance(InstanceCommand::ProjectCreate {
                project: project("p1".to_string()),
            }),
            Command::Instance(InstanceCommand::ProjectRename {
                from: "p1".to_string(),
                to: "p2".to_string(),
            }),
            Command::Instance(InstanceCommand::InstanceCreate {
                instance: instance(
                    "default".to_string(),
                    name.clone(),
                    "m1".to_string(),
                    fingerprint,
                ),
            }),
            Command::Instance(InstanceCommand::GroupCreate {
                group: ClusterGroup {
                    name: "g1".to_string(),
                    description: String::new(),
                },
                members: vec!["m1".to_string()],
            }),
            Command::Instance(InstanceCommand::GroupRename {
                from: "g1".to_string(),
                to: "g2".to_string(),
            }),
        ];
        if moved {
            commands.push(Command::Instance(InstanceCommand::InstanceMove {
                project: "default".to_string(),
                name,
                from: "m1".to_string(),
                location: "m1".to_string(),
                config: BTreeMap::new(),
            }));
        }
        commands
    });
    prop_oneof![join, trust, run, objects].boxed()
}

/// A history: the bootstrap, then up to 60 entries, some of them stories.
fn history() -> BoxedStrategy<Vec<Command>> {
    let piece = prop_oneof![
        10 => entry_command().prop_map(|command| vec![command]),
        1 => story(),
    ];
    prop::collection::vec(piece, 1..50)
        .prop_map(|pieces| {
            let mut commands = vec![bootstrap()];
            commands.extend(pieces.into_iter().flatten());
            commands
        })
        .boxed()
}

/// Whether `after` is what a refusal of `command` may leave of `before`: the same state, or
/// (the one refusal that cleans up) the same state less the token a join or trust claim
/// named, if that token had expired.
fn unchanged_by_refusal(before: &ClusterState, after: &ClusterState, command: &Command) -> bool {
    if after == before {
        return true;
    }
    let (kind, name, now_ms) = match command {
        Command::MemberAdd { member, now_ms, .. } => (TokenKind::Join, &member.name, *now_ms),
        Command::ClientTrust { client, now_ms, .. } => (TokenKind::Client, &client.name, *now_ms),
        _ => return false,
    };
    let expired = before
        .tokens_of(kind)
        .get(name)
        .is_some_and(|token| now_ms >= token.expires_at_ms);
    let mut cleaned = before.clone();
    cleaned.tokens_of_mut(kind).remove(name);
    expired && *after == cleaned
}

/// The state after bootstrap, as every history starts.
fn bootstrapped() -> ClusterState {
    let mut state = ClusterState::default();
    let response = state.apply_entry(&bootstrap());
    assert_eq!(response.result, Ok(()), "bootstrap");
    state
}

/// A snapshot of `state` read back, as a replica that installs it holds it.
fn through_snapshot(state: &ClusterState) -> ClusterState {
    let bytes = bincode::serialize(state).expect("a state serializes");
    bincode::deserialize(&bytes).expect("a snapshot deserializes")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Goal: replicas agree. Method: apply one history to two fresh states, the second
    /// restarting from a snapshot of itself at a point the case chooses; every answer and the
    /// final states must be equal, and the final state must survive a snapshot unchanged.
    #[test]
    fn the_same_commands_give_the_same_state_on_two_replicas(
        commands in history(),
        restart_at in any::<prop::sample::Index>(),
    ) {
        let restart_at = restart_at.index(commands.len());
        let mut first = ClusterState::default();
        let mut second = ClusterState::default();
        for (position, command) in commands.iter().enumerate() {
            if position == restart_at {
                second = through_snapshot(&second);
            }
            let answer = first.apply_entry(command);
            prop_assert_eq!(&answer, &second.apply_entry(command), "answers to {:?}", command);
        }
        prop_assert_eq!(&first, &second);
        prop_assert_eq!(&first, &through_snapshot(&first));
    }

    /// Goal: a refused command changes nothing. Method: before each command of a history,
    /// keep a copy of the whole state; after a refusal, the state must equal the copy. A
    /// refused `Once` may record its outcome (so a retry is answered the same): its state
    /// must equal the copy once `requests` is put back.
    #[test]
    fn every_refused_command_leaves_the_state_unchanged(commands in history()) {
        let mut state = ClusterState::default();
        for command in &commands {
            let command = match command {
                // A batch's commands are applied one at a time here; the next property
                // checks that a batch is its commands one by one.
                Command::Batch(batch) => batch.to_vec(),
                single => vec![single.clone()],
            };
            for command in command {
                let before = state.clone();
                if state.apply(&command).is_ok() {
                    continue;
                }
                let unchanged = if let Command::Once { command: tagged, .. } = &command {
                    let mut unrecorded = state.clone();
                    unrecorded.requests = before.requests.clone();
                    unchanged_by_refusal(&before, &unrecorded, tagged)
                } else {
                    unchanged_by_refusal(&before, &state, &command)
                };
                prop_assert!(
                    unchanged,
                    "refused {:?} changed the state\nbefore: {:?}\nafter: {:?}",
                    command, before, state
                );
            }
        }
    }

    /// Goal: a batch (group commit) is its commands applied one by one. Method: apply a
    /// history's batches whole on one state and their commands one at a time on another;
    /// the per-command answers and the states must be equal.
    #[test]
    fn a_batch_applies_like_its_commands_one_by_one(commands in history()) {
        let mut batched = ClusterState::default();
        let mut one_by_one = ClusterState::default();
        for command in &commands {
            let answer = batched.apply_entry(command);
            match command {
                Command::Batch(batch) => {
                    prop_assert_eq!(&answer.result, &Ok(()));
                    let answers: Vec<_> = batch.iter().map(|command| one_by_one.apply(command)).collect();
                    prop_assert_eq!(&answer.batch, &answers);
                }
                single => prop_assert_eq!(&answer.result, &one_by_one.apply(single)),
            }
        }
        prop_assert_eq!(&batched, &one_by_one);
    }

    /// Goal: a request applies once. Method: after a history, apply each `Once` of it
    /// again; the answer must be the first one's and the state must not change.
    #[test]
    fn a_repeated_request_id_changes_nothing(commands in history()) {
        let mut state = bootstrapped();
        let mut first_answers = BTreeMap::new();
        for command in &commands[1..] {
            let answer = state.apply_entry(command).result;
            if let Command::Once { request_id, .. } = command {
                first_answers.entry(*request_id).or_insert(answer);
            }
        }
        for command in &commands {
            if let Command::Once { request_id, .. } = command {
                let before = state.clone();
                let answer = state.apply_entry(command).result;
                prop_assert_eq!(Some(&answer), first_answers.get(request_id));
                prop_assert_eq!(&state, &before, "a repeat of {:?} changed the state", command);
            }
        }
    }
}

/// The kind of a command as its `Debug` form starts: `MemberAdd`, `Kv(Cas`, `Once`, ...
fn kind(command: &Command) -> String {
    let debug = format!("{command:?}");
    let mut words = debug.split(|c: char| !c.is_alphanumeric());
    let first = words.next().unwrap_or_default();
    match first {
        "Kv" | "Image" | "Instance" | "Script" | "Evacuation" => {
            format!("{first}({}", words.next().unwrap_or_default())
        }
        _ => first.to_string(),
    }
}

/// Goal: the properties above can fail: the histories they see have commands of each kind
/// both applied and refused. Method: generate 64 histories, apply them, and count the
/// outcomes per kind of command.
#[test]
fn the_histories_apply_and_refuse_commands_of_every_kind() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let mut applied = BTreeSet::new();
    let mut refused = BTreeSet::new();
    for _ in 0..64 {
        let commands = history()
            .new_tree(&mut runner)
            .expect("a history")
            .current();
        let mut state = ClusterState::default();
        for command in &commands {
            let outcome = state.apply_entry(command).result;
            match outcome {
                Ok(()) => applied.insert(kind(command)),
                Err(_) => refused.insert(kind(command)),
            };
        }
    }
    let expected = [
        "MemberAdd",
        "MemberRename",
        "MemberRemove",
        "MemberUpdate",
        "TokenIssue",
        "ClientTrust",
        "TrustRemove",
        "ConfigSet",
        "PoolCreate",
        "NetworkCreate",
        "Once",
        "Kv(Incr",
        "Kv(Cas",
        "Image(Add",
        "Image(AliasRename",
        "Instance(InstanceCreate",
        "Instance(InstanceMove",
        "Instance(GroupRename",
        "Instance(ProjectRename",
        "Script(Put",
        "Script(Claim",
        "Script(End",
    ];
    for kind in expected {
        assert!(applied.contains(kind), "no {kind} was applied: {applied:?}");
        assert!(refused.contains(kind), "no {kind} was refused: {refused:?}");
    }
}
