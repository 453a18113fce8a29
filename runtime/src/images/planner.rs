//! The image replication planner: a pure function of the images, their holders, the members and
//! `cluster.images_minimal_replica`, returning the copies to start. The leader runs it every
//! round and whenever an image or a member changes; copies already under way count as holders
//! in the making, so a round never starts the same copy twice.
//!
//! # Rules
//! - The target is `cluster.images_minimal_replica` online holders (`-1`: every online member),
//!   at most the online members. Offline holders do not count; extra holders are kept.
//! - New holders come first from failure domains with no holder of the image, then from the
//!   members holding the fewest images, then by name.
//! - Each copy is fed by an online holder, the one feeding the fewest copies (those under way
//!   and those planned this round; then by name), so copies of one image spread over its
//!   holders instead of all coming from one member.
//! - A holder feeds at most [`FEEDS_MAX`] copies at once. The copies left over wait for the
//!   next plan, which the leader makes as soon as a copy ends: by then its receiver holds the
//!   image and feeds copies too, so one image reaches many members as a tree (1 → 3 → 9),
//!   not as a fan of copies all sharing one sender.

use std::collections::{BTreeMap, BTreeSet};

/// A member as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Member name.
    pub name: String,
    /// Failure domain.
    pub failure_domain: String,
    /// Whether it answers heartbeats.
    pub online: bool,
}

/// A copy to start: `to` fetches `fingerprint` from `from` (then from the other holders if
/// `from` fails).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    /// The image.
    pub fingerprint: String,
    /// The member to copy from first.
    pub from: String,
    /// Every online holder, `from` first: where to resume if a source fails.
    pub sources: Vec<String>,
    /// The member receiving it.
    pub to: String,
}

/// Copies one member feeds at once.
pub const FEEDS_MAX: usize = 2;

/// The holders of an image in the order to copy from: those feeding the fewest copies first
/// (`feeding`: member → copies under way from it), then by name.
pub fn order_sources<'a>(
    holders: impl IntoIterator<Item = &'a String>,
    feeding: &BTreeMap<String, usize>,
) -> Vec<String> {
    let mut ordered: Vec<&String> = holders.into_iter().collect();
    ordered.sort_by_key(|name| (feeding.get(*name).copied().unwrap_or(0), (*name).clone()));
    ordered.into_iter().cloned().collect()
}

/// Plans the copies that bring every image to `minimum` online holders.
///
/// `holders`: image fingerprint → members holding a verified copy. `in_flight`: copies under way
/// (fingerprint, receiving member). `feeding`: member → copies under way from it.
pub fn plan(
    holders: &BTreeMap<String, BTreeSet<String>>,
    peers: &[Peer],
    minimum: i64,
    in_flight: &BTreeSet<(String, String)>,
    feeding: &BTreeMap<String, usize>,
) -> Vec<Copy> {
    let online: Vec<&Peer> = peers.iter().filter(|peer| peer.online).collect();
    let target = if minimum < 0 {
        online.len()
    } else {
        (minimum as usize).min(online.len())
    };
    let mut images_held: BTreeMap<&str, usize> = BTreeMap::new();
    for names in holders.values() {
        for name in names {
            *images_held.entry(name.as_str()).or_default() += 1;
        }
    }
    for (_, to) in in_flight {
        *images_held.entry(to.as_str()).or_default() += 1;
    }
    let mut sending: BTreeMap<String, usize> = feeding.clone();
    let mut copies = Vec::new();
    for (fingerprint, names) in holders {
        let sources: Vec<&Peer> = online
            .iter()
            .copied()
            .filter(|peer| names.contains(&peer.name))
            .collect();
        if sources.is_empty() {
            // No online holder: nothing to copy from until one is back.
            continue;
        }
        let receiving: BTreeSet<&str> = in_flight
            .iter()
            .filter(|(image, _)| image == fingerprint)
            .map(|(_, to)| to.as_str())
            .collect();
        let mut have = sources.len() + receiving.len();
        let mut domains: BTreeSet<&str> = online
            .iter()
            .filter(|peer| names.contains(&peer.name) || receiving.contains(peer.name.as_str()))
            .map(|peer| peer.failure_domain.as_str())
            .collect();
        let mut candidates: Vec<&Peer> = online
            .iter()
            .copied()
            .filter(|peer| !names.contains(&peer.name) && !receiving.contains(peer.name.as_str()))
            .collect();
        while have < target && !candidates.is_empty() {
            let best = candidates
                .iter()
                .enumerate()
                .min_by_key(|(_, peer)| {
                    (
                        domains.contains(peer.failure_domain.as_str()),
                        images_held.get(peer.name.as_str()).copied().unwrap_or(0),
                        peer.name.clone(),
                    )
                })
                .map(|(position, _)| position);
            let Some(position) = best else {
                break;
            };
            let ordered = order_sources(sources.iter().map(|peer| &peer.name), &sending);
            let from = ordered[0].clone();
            if sending.get(&from).copied().unwrap_or(0) >= FEEDS_MAX {
                // Every holder is busy: the rest waits for the next plan.
                break;
            }
            let to = candidates.remove(position);
            *sending.entry(from.clone()).or_default() += 1;
            *images_held.entry(to.name.as_str()).or_default() += 1;
            domains.insert(to.failure_domain.as_str());
            have += 1;
            copies.push(Copy {
                fingerprint: fingerprint.clone(),
                from,
                sources: ordered,
                to: to.name.clone(),
            });
        }
    }
    copies
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(list: &[(&str, &str, bool)]) -> Vec<Peer> {
        list.iter()
            .map(|(name, domain, online)| Peer {
                name: name.to_string(),
                failure_domain: domain.to_string(),
                online: *online,
            })
            .collect()
    }

    fn holders(list: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        list.iter()
            .map(|(fingerprint, names)| {
                (
                    fingerprint.to_string(),
                    names.iter().map(|name| name.to_string()).collect(),
                )
            })
            .collect()
    }

    fn targets(copies: &[Copy]) -> Vec<&str> {
        copies.iter().map(|copy| copy.to.as_str()).collect()
    }

    const NONE: &BTreeSet<(String, String)> = &BTreeSet::new();
    const IDLE: &BTreeMap<String, usize> = &BTreeMap::new();

    /// Goal: a new image goes to the minimum, one copy per missing holder, spread over failure
    /// domains first.
    #[test]
    fn spreads_over_failure_domains() {
        let peers = peers(&[
            ("m1", "a", true),
            ("m2", "a", true),
            ("m3", "b", true),
            ("m4", "b", true),
            ("m5", "c", true),
        ]);
        let copies = plan(&holders(&[("f", &["m1"])]), &peers, 3, NONE, IDLE);
        assert_eq!(targets(&copies), ["m3", "m5"]);
        assert!(copies.iter().all(|copy| copy.from == "m1"));
    }

    /// Goal: `-1` means every online member; offline members get nothing and are no source.
    #[test]
    fn every_online_member_with_minus_one() {
        let peers = peers(&[
            ("m1", "d", true),
            ("m2", "d", true),
            ("m3", "d", false),
            ("m4", "d", true),
        ]);
        let copies = plan(&holders(&[("f", &["m1", "m3"])]), &peers, -1, NONE, IDLE);
        assert_eq!(targets(&copies), ["m2", "m4"]);
    }

    /// Goal: a holder that goes offline no longer counts: another member gets a copy from a
    /// surviving holder; with no online holder nothing is planned.
    #[test]
    fn offline_holder_is_replaced() {
        let mut peers = peers(&[
            ("m1", "d", true),
            ("m2", "d", true),
            ("m3", "d", true),
            ("m4", "d", true),
        ]);
        peers[1].online = false;
        let copies = plan(
            &holders(&[("f", &["m1", "m2", "m3"])]),
            &peers,
            3,
            NONE,
            IDLE,
        );
        assert_eq!(targets(&copies), ["m4"]);
        assert_eq!(copies[0].sources, ["m1", "m3"]);
        peers[0].online = false;
        peers[2].online = false;
        assert!(plan(
            &holders(&[("f", &["m1", "m2", "m3"])]),
            &peers,
            3,
            NONE,
            IDLE
        )
        .is_empty());
    }

    /// Goal: copies under way count, so the next round plans nothing more; extra holders are
    /// kept (nothing is planned to remove them).
    #[test]
    fn in_flight_copies_count() {
        let peers = peers(&[("m1", "d", true), ("m2", "d", true), ("m3", "d", true)]);
        let in_flight = BTreeSet::from([("f".to_string(), "m2".to_string())]);
        let copies = plan(&holders(&[("f", &["m1"])]), &peers, 3, &in_flight, IDLE);
        assert_eq!(targets(&copies), ["m3"]);
        let in_flight = BTreeSet::from([
            ("f".to_string(), "m2".to_string()),
            ("f".to_string(), "m3".to_string()),
        ]);
        assert!(plan(&holders(&[("f", &["m1"])]), &peers, 3, &in_flight, IDLE).is_empty());
        assert!(plan(
            &holders(&[("f", &["m1", "m2", "m3"])]),
            &peers,
            1,
            NONE,
            IDLE
        )
        .is_empty());
    }

    /// Goal: copies of one image spread over its holders, and new holders are the members
    /// holding the fewest images.
    #[test]
    fn sources_and_targets_are_spread() {
        let peers = peers(&[
            ("m1", "d", true),
            ("m2", "d", true),
            ("m3", "d", true),
            ("m4", "d", true),
            ("m5", "d", true),
        ]);
        let copies = plan(
            &holders(&[("f", &["m1", "m2"]), ("g", &["m3"])]),
            &peers,
            -1,
            NONE,
            IDLE,
        );
        let from_f: Vec<&str> = copies
            .iter()
            .filter(|copy| copy.fingerprint == "f")
            .map(|copy| copy.from.as_str())
            .collect();
        assert_eq!(from_f.len(), 3);
        assert!(
            from_f.contains(&"m1") && from_f.contains(&"m2"),
            "{from_f:?}"
        );
        let to_g: Vec<&str> = copies
            .iter()
            .filter(|copy| copy.fingerprint == "g")
            .map(|copy| copy.to.as_str())
            .collect();
        // m3, its only holder, feeds two at once; the others wait for the next plan.
        assert_eq!(to_g.len(), FEEDS_MAX);
    }

    /// Goal: a holder feeding [`FEEDS_MAX`] copies already (under way) is given no more; a
    /// less busy holder is preferred.
    #[test]
    fn busy_holders_feed_no_more() {
        let peers = peers(&[
            ("m1", "d", true),
            ("m2", "d", true),
            ("m3", "d", true),
            ("m4", "d", true),
        ]);
        let busy = BTreeMap::from([("m1".to_string(), FEEDS_MAX)]);
        assert!(plan(&holders(&[("f", &["m1"])]), &peers, -1, NONE, &busy).is_empty());
        let copies = plan(&holders(&[("f", &["m1", "m2"])]), &peers, -1, NONE, &busy);
        assert_eq!(targets(&copies), ["m3", "m4"]);
        assert!(copies.iter().all(|copy| copy.from == "m2"), "{copies:?}");
        assert_eq!(copies[0].sources, ["m2", "m1"]);
    }

    /// Goal: with the plan made again as copies end, one holder reaches every member as a tree:
    /// 1 → 3 → 9 holders in two generations of copies, never more than [`FEEDS_MAX`] copies
    /// from one member at once.
    #[test]
    fn copies_grow_as_a_tree() {
        let names: Vec<String> = (1..=9).map(|i| format!("m{i}")).collect();
        let list: Vec<(&str, &str, bool)> = names.iter().map(|n| (n.as_str(), "d", true)).collect();
        let peers = peers(&list);
        let mut held = holders(&[("f", &["m1"])]);
        let mut generations = 0;
        loop {
            let copies = plan(&held, &peers, -1, NONE, IDLE);
            if copies.is_empty() {
                break;
            }
            let mut per_source: BTreeMap<&str, usize> = BTreeMap::new();
            for copy in &copies {
                *per_source.entry(copy.from.as_str()).or_default() += 1;
            }
            assert!(
                per_source.values().all(|n| *n <= FEEDS_MAX),
                "{per_source:?}"
            );
            for copy in &copies {
                held.get_mut("f").unwrap().insert(copy.to.clone());
            }
            generations += 1;
        }
        assert_eq!(held["f"].len(), 9);
        assert_eq!(generations, 2);
    }

    /// Goal: sources are ordered by how many copies each feeds, then by name.
    #[test]
    fn sources_ordered_by_load() {
        let holders = ["m1".to_string(), "m2".to_string(), "m3".to_string()];
        let feeding = BTreeMap::from([("m1".to_string(), 2), ("m3".to_string(), 1)]);
        assert_eq!(order_sources(&holders, &feeding), ["m2", "m3", "m1"]);
        assert_eq!(order_sources(&holders, IDLE), ["m1", "m2", "m3"]);
    }

    /// Goal: the minimum is capped by the online members.
    #[test]
    fn minimum_capped_by_online_members() {
        let peers = peers(&[("m1", "d", true), ("m2", "d", true)]);
        let copies = plan(&holders(&[("f", &["m1"])]), &peers, 3, NONE, IDLE);
        assert_eq!(targets(&copies), ["m2"]);
    }
}
