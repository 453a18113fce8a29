//! The built-in placement rules, as LXD has them: which members may take an instance
//! ([`candidates`]) and which of them takes it when nobody chose ([`choose_least_loaded`]).
//!
//! # Rules
//! - A member takes new instances only while `Online`: offline, evacuated, pending and blocked
//!   members are left out; so is the instance's current member for a move.
//! - Its architecture must be the instance's (`amd64` and `x86_64`, `arm64` and `aarch64` are
//!   the same); an instance with no architecture runs anywhere.
//! - `scheduler.instance`: `all` members are chosen automatically, for their groups and by
//!   name; `group` members only for their groups and by name; `manual` members only by name.
//! - `--target NAME` takes that member whatever its scheduler, or fails saying why it cannot;
//!   `--target @GROUP` takes the members of the group whose scheduler is `all` or `group`.
//! - Among candidates, the fewest instances wins; ties are broken at random (the document's
//!   rule; LXD's code takes the lowest id).

use super::{Exclusion, ExclusionReason, MemberView, PlacementError, SchedulerMode, Target};

/// The members that may take an instance of `architecture` for `target`, and every other
/// member with the reason it was left out. `exclude_current` is the instance's member for a
/// move. Fails for a named member that is missing or unusable, an unknown group, and when no
/// candidate is left.
pub fn candidates<'m>(
    members: &'m [MemberView],
    architecture: &str,
    target: &Target,
    exclude_current: Option<&str>,
) -> Result<(Vec<&'m MemberView>, Vec<Exclusion>), PlacementError> {
    if let Target::Member(name) = target {
        return named_member(members, name, architecture, exclude_current);
    }
    if let Target::Group(group) = target {
        if !members.iter().any(|member| member.groups.contains(group)) {
            return Err(PlacementError::UnknownGroup {
                group: group.clone(),
            });
        }
    }
    let mut chosen = Vec::new();
    let mut exclusions = Vec::new();
    for member in members {
        match automatic_exclusion(member, architecture, target, exclude_current) {
            Some(reason) => exclusions.push(Exclusion {
                member: member.name.clone(),
                reason,
            }),
            None => chosen.push(member),
        }
    }
    if chosen.is_empty() {
        return Err(PlacementError::NoCandidate { exclusions });
    }
    Ok((chosen, exclusions))
}

/// The candidate with the fewest instances; among several, `random(n)` picks the index (taken
/// modulo `n`). `None` only when there is no candidate.
pub fn choose_least_loaded(
    candidates: &[impl std::borrow::Borrow<MemberView>],
    random: &mut impl FnMut(usize) -> usize,
) -> Option<String> {
    let fewest = candidates
        .iter()
        .map(|member| member.borrow().instance_count)
        .min()?;
    let tied: Vec<&MemberView> = candidates
        .iter()
        .map(|member| member.borrow())
        .filter(|member| member.instance_count == fewest)
        .collect();
    let index = if tied.len() == 1 {
        0
    } else {
        random(tied.len()) % tied.len()
    };
    Some(tied[index].name.clone())
}

/// Whether a member running `member_arch` can run an instance of `wanted`.
pub fn architecture_matches(member_arch: &str, wanted: &str) -> bool {
    wanted.is_empty() || canonical_architecture(member_arch) == canonical_architecture(wanted)
}

/// The kernel name of an architecture, for the Debian and Go names users also type.
fn canonical_architecture(name: &str) -> &str {
    match name {
        "amd64" | "x86-64" => "x86_64",
        "arm64" => "aarch64",
        "armhf" | "armv7" => "armv7l",
        "i386" | "i586" => "i686",
        "ppc64el" => "ppc64le",
        other => other,
    }
}

/// `--target NAME`: that member alone, or why it cannot be used.
fn named_member<'m>(
    members: &'m [MemberView],
    name: &str,
    architecture: &str,
    exclude_current: Option<&str>,
) -> Result<(Vec<&'m MemberView>, Vec<Exclusion>), PlacementError> {
    let Some(member) = members.iter().find(|member| member.name == name) else {
        return Err(PlacementError::UnknownMember {
            name: name.to_string(),
        });
    };
    let reason = if exclude_current == Some(name) {
        Some(ExclusionReason::CurrentLocation)
    } else if let Some(reason) = ExclusionReason::for_status(&member.status) {
        Some(reason)
    } else {
        architecture_exclusion(member, architecture)
    };
    match reason {
        Some(reason) => Err(PlacementError::TargetNotUsable {
            member: name.to_string(),
            reason,
        }),
        None => Ok((vec![member], Vec::new())),
    }
}

/// Why `member` cannot be chosen automatically (no target, or a group), if it cannot.
fn automatic_exclusion(
    member: &MemberView,
    architecture: &str,
    target: &Target,
    exclude_current: Option<&str>,
) -> Option<ExclusionReason> {
    if let Target::Group(group) = target {
        if !member.groups.contains(group) {
            return Some(ExclusionReason::NotInGroup {
                group: group.clone(),
            });
        }
    }
    if exclude_current == Some(member.name.as_str()) {
        return Some(ExclusionReason::CurrentLocation);
    }
    if member.move_failed {
        return Some(ExclusionReason::MoveFailed);
    }
    if let Some(reason) = ExclusionReason::for_status(&member.status) {
        return Some(reason);
    }
    if let Some(reason) = architecture_exclusion(member, architecture) {
        return Some(reason);
    }
    match (member.scheduler, target) {
        (SchedulerMode::Manual, _) => Some(ExclusionReason::SchedulerManual),
        (SchedulerMode::Group, Target::Group(_)) => None,
        (SchedulerMode::Group, _) => Some(ExclusionReason::SchedulerGroupOnly),
        (SchedulerMode::All, _) => None,
    }
}

fn architecture_exclusion(member: &MemberView, architecture: &str) -> Option<ExclusionReason> {
    if architecture_matches(&member.architecture, architecture) {
        None
    } else {
        Some(ExclusionReason::Architecture {
            member_arch: member.architecture.clone(),
            wanted: architecture.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, status: &str, count: u64) -> MemberView {
        MemberView {
            name: name.to_string(),
            status: status.to_string(),
            architecture: "x86_64".to_string(),
            groups: vec!["default".to_string()],
            instance_count: count,
            ..MemberView::default()
        }
    }

    fn names<'a>(members: &[&'a MemberView]) -> Vec<&'a str> {
        members.iter().map(|member| member.name.as_str()).collect()
    }

    /// Goal: each status other than Online excludes with its own reason, in member order.
    #[test]
    fn statuses_exclude_with_their_reason() {
        let members = [
            member("m1", "Online", 0),
            member("m2", "Offline", 0),
            member("m3", "Evacuated", 0),
            member("m4", "Pending", 0),
            member("m5", "Blocked", 0),
            member("m6", "Upgrading", 0),
        ];
        let (chosen, exclusions) = candidates(&members, "", &Target::None, None).unwrap();
        assert_eq!(names(&chosen), ["m1"]);
        let reasons: Vec<String> = exclusions.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            reasons,
            [
                "m2: offline",
                "m3: evacuated",
                "m4: pending (still joining)",
                "m5: blocked (version mismatch)",
                "m6: status is Upgrading",
            ]
        );
    }

    /// Goal: architecture aliases match; an instance with no architecture runs anywhere.
    #[test]
    fn architecture_aliases() {
        assert!(architecture_matches("x86_64", "amd64"));
        assert!(architecture_matches("aarch64", "arm64"));
        assert!(architecture_matches("aarch64", ""));
        assert!(!architecture_matches("aarch64", "x86_64"));
    }

    /// Goal: the fewest instances wins, and a tie is settled by the random source alone.
    #[test]
    fn least_loaded_and_ties() {
        let members = [
            member("m1", "Online", 3),
            member("m2", "Online", 1),
            member("m3", "Online", 1),
        ];
        assert_eq!(
            choose_least_loaded(&members, &mut |_| 0).as_deref(),
            Some("m2")
        );
        assert_eq!(
            choose_least_loaded(&members, &mut |_| 1).as_deref(),
            Some("m3")
        );
        // An out-of-range index wraps instead of panicking.
        assert_eq!(
            choose_least_loaded(&members, &mut |_| 7).as_deref(),
            Some("m3")
        );
        let none: [MemberView; 0] = [];
        assert_eq!(choose_least_loaded(&none, &mut |_| 0), None);
    }

    /// Goal: for a move, the current member is never a candidate, and naming it fails.
    #[test]
    fn move_excludes_current_member() {
        let members = [member("m1", "Online", 0), member("m2", "Online", 5)];
        let (chosen, exclusions) = candidates(&members, "", &Target::None, Some("m1")).unwrap();
        assert_eq!(names(&chosen), ["m2"]);
        assert_eq!(exclusions[0].reason, ExclusionReason::CurrentLocation);
        let error = candidates(&members, "", &Target::Member("m1".into()), Some("m1")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "Cluster member m1 cannot take the instance: the instance is already on it"
        );
    }

    /// Goal: a member a move has just failed to is left out of automatic placement (with its
    /// reason), even though it is still recorded online and holds the fewest instances.
    #[test]
    fn a_failed_destination_is_left_out() {
        let mut dead = member("m2", "Online", 0);
        dead.move_failed = true;
        let members = [member("m1", "Online", 0), dead, member("m3", "Online", 4)];
        let (chosen, exclusions) = candidates(&members, "", &Target::None, Some("m1")).unwrap();
        assert_eq!(names(&chosen), ["m3"]);
        let reasons: Vec<String> = exclusions.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            reasons,
            [
                "m1: the instance is already on it",
                "m2: a move of the instance to it has just failed",
            ]
        );
    }
}
