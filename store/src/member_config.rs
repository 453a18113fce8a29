//! Member-specific configuration: keys of storage pools and networks that each member sets for
//! itself (a pool's source device, a network's parent interface, ...), and the questions a
//! joining member must answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::ClusterState;

/// One member-specific key a joining member is asked for (LXD's `member_config` entries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    /// `storage-pool` or `network`.
    pub entity: String,
    /// The pool or network name.
    pub name: String,
    /// The key.
    pub key: String,
    /// The suggested value (empty when there is none).
    pub value: String,
    /// What the key is.
    pub description: String,
    /// Whether a join must answer it.
    pub required: bool,
}

/// A joining member's answer to a [`Question`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// `storage-pool` or `network`.
    pub entity: String,
    /// The pool or network name.
    pub name: String,
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// Storage drivers Starling knows.
pub const POOL_DRIVERS: &[&str] = &["dir", "zfs", "lvm", "btrfs", "ceph"];
/// Network types Starling knows.
pub const NETWORK_TYPES: &[&str] = &["bridge", "macvlan", "physical", "sriov", "ovn"];

/// Member-specific keys of a pool driver: (key, required).
pub fn pool_keys(driver: &str) -> Vec<(&'static str, bool)> {
    // A `dir` pool's source defaults to a directory in the member's data directory (as LXD's
    // defaults to one under /var/lib/lxd); a ceph pool's is the cluster's.
    let mut keys = vec![
        ("source", !matches!(driver, "ceph" | "dir")),
        ("size", false),
    ];
    match driver {
        "zfs" => keys.push(("zfs.pool_name", false)),
        "lvm" => keys.extend([("lvm.vg_name", false), ("lvm.thinpool_name", false)]),
        _ => {}
    }
    keys
}

/// Member-specific keys of a network type: (key, required).
pub fn network_keys(network_type: &str) -> Vec<(&'static str, bool)> {
    match network_type {
        "bridge" => vec![
            ("bridge.external_interfaces", false),
            ("bgp.ipv4.nexthop", false),
            ("bgp.ipv6.nexthop", false),
        ],
        "macvlan" | "physical" | "sriov" => vec![("parent", true)],
        _ => vec![("bgp.ipv4.nexthop", false), ("bgp.ipv6.nexthop", false)],
    }
}

/// The questions a member joining `state` must answer.
pub fn questions(state: &ClusterState) -> Vec<Question> {
    Asked::of(state).questions()
}

/// What the questions are asked about: each pool's name and driver, each network's name and
/// type. Copied out of the state cheaply, so the questions (several per pool and network,
/// with their text) can be built where they hold nothing up: a cluster with thousands of
/// networks asks thousands of questions.
#[derive(Clone, Debug, Default)]
pub struct Asked {
    pools: Vec<(String, String)>,
    networks: Vec<(String, String)>,
}

impl Asked {
    /// The pools and networks of `state`.
    pub fn of(state: &ClusterState) -> Asked {
        Asked {
            pools: (state.pools.values())
                .map(|pool| (pool.name.clone(), pool.driver.clone()))
                .collect(),
            networks: (state.networks.values())
                .map(|network| (network.name.clone(), network.network_type.clone()))
                .collect(),
        }
    }

    /// The questions, pools first, each in name order.
    pub fn questions(&self) -> Vec<Question> {
        let mut questions = Vec::new();
        for (pool, driver) in &self.pools {
            for (key, required) in pool_keys(driver) {
                let value = if key == "zfs.pool_name" || key == "lvm.vg_name" {
                    pool.clone()
                } else {
                    String::new()
                };
                questions.push(Question {
                    entity: "storage-pool".to_string(),
                    name: pool.clone(),
                    key: key.to_string(),
                    value,
                    description: format!("\"{key}\" property for storage pool \"{pool}\""),
                    required,
                });
            }
        }
        for (network, network_type) in &self.networks {
            for (key, required) in network_keys(network_type) {
                questions.push(Question {
                    entity: "network".to_string(),
                    name: network.clone(),
                    key: key.to_string(),
                    value: String::new(),
                    description: format!("\"{key}\" property for network \"{network}\""),
                    required,
                });
            }
        }
        questions
    }
}

/// Checks a joiner's answers: every required question answered, nothing unknown answered.
pub fn check_answers(state: &ClusterState, answers: &[Answer]) -> Result<(), String> {
    let questions = questions(state);
    let asked = |answer: &Answer| {
        questions
            .iter()
            .any(|q| q.entity == answer.entity && q.name == answer.name && q.key == answer.key)
    };
    if let Some(unknown) = answers.iter().find(|answer| !asked(answer)) {
        return Err(format!(
            "no member-specific key {} \"{}\" {}: see cluster.info().member_config for the questions",
            unknown.entity, unknown.name, unknown.key
        ));
    }
    let missing: Vec<String> = questions
        .iter()
        .filter(|question| question.required)
        .filter(|question| {
            !answers.iter().any(|answer| {
                answer.entity == question.entity
                    && answer.name == question.name
                    && answer.key == question.key
                    && !answer.value.is_empty()
            })
        })
        .map(|question| format!("{} \"{}\" {}", question.entity, question.name, question.key))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing member-specific configuration: {}",
            missing.join(", ")
        ))
    }
}

/// Records a new member's answers in the pools and networks.
pub fn record_answers(state: &mut ClusterState, member: &str, answers: &[Answer]) {
    for answer in answers {
        let slot: Option<&mut BTreeMap<String, BTreeMap<String, String>>> =
            match answer.entity.as_str() {
                "storage-pool" => state
                    .pools
                    .get_mut(&answer.name)
                    .map(|pool| &mut pool.member_config),
                "network" => state
                    .networks
                    .get_mut(&answer.name)
                    .map(|network| &mut network.member_config),
                _ => None,
            };
        if let Some(member_config) = slot {
            member_config
                .entry(member.to_string())
                .or_default()
                .insert(answer.key.clone(), answer.value.clone());
        }
    }
}

/// Checks a new pool's or network's config: member-specific keys must be given per member, and
/// every existing member must answer the required ones.
pub fn check_object(
    state: &ClusterState,
    what: &str,
    keys: &[(&'static str, bool)],
    config: &BTreeMap<String, String>,
    member_config: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<(), String> {
    if let Some((key, _)) = keys.iter().find(|(key, _)| config.contains_key(*key)) {
        return Err(format!("\"{key}\" is member-specific for {what}: give it per member, not in the cluster-wide config"));
    }
    for (member, values) in member_config {
        if !state.members.contains_key(member) {
            return Err(format!(
                "member-specific config for {what} names unknown member \"{member}\""
            ));
        }
        if let Some(key) = values
            .keys()
            .find(|key| !keys.iter().any(|(known, _)| known == key))
        {
            return Err(format!("\"{key}\" is not a member-specific key of {what}"));
        }
    }
    let missing: Vec<String> = state
        .members
        .keys()
        .flat_map(|member| {
            keys.iter()
                .filter(|(_, required)| *required)
                .filter(move |(key, _)| {
                    member_config
                        .get(member)
                        .and_then(|values| values.get(*key))
                        .is_none_or(String::is_empty)
                })
                .map(move |(key, _)| format!("{member}: {key}"))
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{what} needs member-specific values: {}",
            missing.join(", ")
        ))
    }
}
