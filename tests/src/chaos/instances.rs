//! The instance check: after the heal, what the cluster's records say and what really runs
//! on each member agree with each other and with the history. An instance is never lost (an
//! acknowledged launch that no delete was sent for has a record, and its container on its
//! member), never comes back (an acknowledged delete leaves no record), never runs on two
//! members, never runs where its record does not place it, and its record says `Running`
//! exactly when its container runs on its member. A record that says `Running` or `Stopped`
//! has its container; one in `Error` (or `Creating`) may lack it only when the history says
//! something went wrong (a launch or a delete whose outcome was unknown or failed). The check
//! is pure ([`check`]); [`containers`] reads the members' pools.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use starling_runtime::instances::driver::{Driver, State};

use super::checks::Violation;
use super::history::{Call, Operation, Outcome};

/// An instance's record, as the leader answered it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The member it is placed on.
    pub location: String,
    /// Its recorded status (`Running`, `Stopped`, `Error`).
    pub status: String,
}

/// What the harness saw at the end: the records, and for each member the containers in its
/// pool and whether each runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Records by instance name.
    pub records: BTreeMap<String, Record>,
    /// By member: container name → whether its init runs.
    pub containers: BTreeMap<String, BTreeMap<String, bool>>,
}

/// The instance figures, for the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    /// Launches acknowledged.
    pub launched: usize,
    /// Deletes acknowledged.
    pub deleted: usize,
    /// Instance operations with an unknown outcome.
    pub unknown: usize,
    /// Records at the end.
    pub records: usize,
    /// Containers running at the end.
    pub running: usize,
}

/// What the history says of one instance.
#[derive(Default)]
struct Told {
    launch_ok: bool,
    launch_maybe: bool,
    delete_ok: bool,
    delete_maybe: bool,
}

/// Checks `seen` against the instance operations of `operations`.
pub fn check(operations: &[Operation], seen: &Seen) -> (Vec<Violation>, Figures) {
    let mut told: BTreeMap<&str, Told> = BTreeMap::new();
    let mut figures = Figures {
        records: seen.records.len(),
        ..Figures::default()
    };
    for operation in operations {
        let Some(name) = operation.call.instance() else {
            continue;
        };
        let entry = told.entry(name).or_default();
        let outcome = operation.outcome();
        match (&operation.call, &outcome) {
            (Call::Launch { .. }, Outcome::Ok { .. }) => {
                entry.launch_ok = true;
                figures.launched += 1;
            }
            (Call::Launch { .. }, Outcome::Info { .. }) => entry.launch_maybe = true,
            (Call::Delete { .. }, Outcome::Ok { .. }) => {
                entry.delete_ok = true;
                figures.deleted += 1;
            }
            (Call::Delete { .. }, Outcome::Info { .. }) => entry.delete_maybe = true,
            _ => {}
        }
        if matches!(outcome, Outcome::Info { .. }) {
            figures.unknown += 1;
        }
    }
    let mut violations = Vec::new();
    let mut flag = |what: String| {
        violations.push(Violation {
            check: "instances",
            what,
        })
    };
    for (name, history) in &told {
        let record = seen.records.get(*name);
        if history.launch_ok && !history.delete_ok && !history.delete_maybe && record.is_none() {
            flag(format!(
                "instance {name}: launched (acknowledged), never deleted, and lost"
            ));
        }
        if history.delete_ok && record.is_some() {
            flag(format!(
                "instance {name}: deleted (acknowledged), yet it has a record"
            ));
        }
    }
    for name in seen.records.keys() {
        let launched = told
            .get(name.as_str())
            .is_some_and(|history| history.launch_ok || history.launch_maybe);
        if !launched {
            flag(format!(
                "instance {name}: has a record, but no launch of it can have taken effect"
            ));
        }
    }
    let mut running_on: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (member, containers) in &seen.containers {
        for (name, running) in containers {
            if *running {
                figures.running += 1;
                running_on.entry(name).or_default().push(member);
            }
            let record = seen.records.get(name);
            if record.is_none_or(|record| &record.location != member) {
                let record = record.map_or("no record".to_string(), |record| {
                    format!("placed on {}", record.location)
                });
                let how = if *running { "runs" } else { "has files" };
                flag(format!(
                    "instance {name}: {how} on {member}, but its record says {record}"
                ));
            }
        }
    }
    for (name, members) in &running_on {
        if members.len() > 1 {
            flag(format!(
                "instance {name}: runs on {} at once",
                members.join(" and ")
            ));
        }
    }
    for (name, record) in &seen.records {
        let history = told.get(name.as_str());
        // Acknowledged and never (maybe) deleted: its files must be there, whatever the status.
        let must_exist = history.is_some_and(|history| {
            history.launch_ok && !history.delete_ok && !history.delete_maybe
        });
        let runs_there = seen
            .containers
            .get(&record.location)
            .and_then(|containers| containers.get(name))
            .copied();
        match (record.status.as_str(), runs_there) {
            ("Running", Some(true)) => {}
            ("Running", Some(false)) => flag(format!(
                "instance {name}: recorded Running on {}, but its container there is stopped",
                record.location
            )),
            ("Running", None) => flag(format!(
                "instance {name}: recorded Running on {}, which has no container of it",
                record.location
            )),
            (status, Some(true)) => flag(format!(
                "instance {name}: recorded {status}, but its container runs on {}",
                record.location
            )),
            (_, Some(false)) => {}
            ("Stopped", None) => flag(format!(
                "instance {name}: recorded Stopped on {}, which has no container of it",
                record.location
            )),
            (status, None) if must_exist => flag(format!(
                "instance {name}: launched (acknowledged), never deleted, recorded {status} on {}, \
                 which has no container of it",
                record.location
            )),
            (_, None) => {}
        }
    }
    (violations, figures)
}

/// The records, from an `instances.list` answer.
pub fn records_of(list: &Value) -> Result<BTreeMap<String, Record>, String> {
    let mut records = BTreeMap::new();
    for instance in list.as_array().ok_or("instances.list answered no list")? {
        let field = |key: &str| {
            instance[key]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("an instance record without {key}: {instance}"))
        };
        records.insert(
            field("name")?,
            Record {
                location: field("location")?,
                status: field("status")?,
            },
        );
    }
    Ok(records)
}

/// The containers in each member's pool (`<root>/<member>/storage-pools/default`), and
/// whether each runs; `shim` is the `starling` binary.
pub fn containers(
    root: &Path,
    members: &[String],
    shim: &Path,
) -> BTreeMap<String, BTreeMap<String, bool>> {
    let mut seen = BTreeMap::new();
    for member in members {
        let driver = Driver::new(pool(root, member), shim.to_path_buf());
        let mut here = BTreeMap::new();
        for key in driver.list().unwrap_or_default() {
            let running = matches!(driver.state(&key), Ok(State::Running { .. }));
            here.insert(key.name.clone(), running);
        }
        seen.insert(member.clone(), here);
    }
    seen
}

/// Member `member`'s `default` pool under `root`.
pub fn pool(root: &Path, member: &str) -> PathBuf {
    root.join(member).join("storage-pools/default")
}

/// Stops and deletes every container in the members' pools under `root` (at the end of a
/// run, and when it is interrupted): their monitors outlive the member processes.
pub fn remove_all(root: &Path, shim: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let pools: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| pool(root, &entry.file_name().to_string_lossy()))
        .filter(|pool| pool.is_dir())
        .collect();
    crate::containers::remove_containers(&pools, shim);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::history::Answer;

    use crate::chaos::history::test_operation as operation;

    fn ok() -> Option<Outcome> {
        Some(Outcome::Ok {
            answer: Answer::Done,
        })
    }

    fn info() -> Option<Outcome> {
        Some(Outcome::Info {
            error: "timed out".into(),
        })
    }

    fn launch(id: usize, name: &str, outcome: Option<Outcome>) -> Operation {
        let call = Call::Launch {
            name: name.into(),
            recreate: false,
        };
        operation(id, call, outcome)
    }

    fn delete(id: usize, name: &str, outcome: Option<Outcome>) -> Operation {
        operation(id, Call::Delete { name: name.into() }, outcome)
    }

    fn recorded(seen: &mut Seen, name: &str, member: &str, status: &str) {
        let record = Record {
            location: member.into(),
            status: status.into(),
        };
        seen.records.insert(name.into(), record);
    }

    fn running_on(seen: &mut Seen, name: &str, member: &str, running: bool) {
        recorded(
            seen,
            name,
            member,
            if running { "Running" } else { "Stopped" },
        );
        seen.containers
            .entry(member.into())
            .or_default()
            .insert(name.into(), running);
    }

    fn checks_of(operations: &[Operation], seen: &Seen) -> Vec<String> {
        check(operations, seen)
            .0
            .into_iter()
            .map(|violation| violation.what)
            .collect()
    }

    #[test]
    fn a_consistent_end_passes() {
        let operations = [
            launch(0, "a", ok()),
            launch(1, "b", ok()),
            delete(2, "b", ok()),
            launch(3, "c", info()),
            launch(4, "d", info()),
        ];
        let mut seen = Seen::default();
        running_on(&mut seen, "a", "m1", true);
        running_on(&mut seen, "c", "m2", false);
        seen.containers.entry("m3".into()).or_default();
        let (violations, figures) = check(&operations, &seen);
        assert!(violations.is_empty(), "{violations:?}");
        assert_eq!(
            (figures.launched, figures.deleted, figures.unknown),
            (2, 1, 2)
        );
        assert_eq!((figures.records, figures.running), (2, 1));
    }

    #[test]
    fn a_lost_instance_is_found() {
        let operations = [launch(0, "a", ok())];
        let violations = checks_of(&operations, &Seen::default());
        assert_eq!(violations.len(), 1);
        assert!(violations[0].contains("lost"), "{violations:?}");
        // A delete whose outcome is unknown may have removed it.
        let operations = [launch(0, "a", ok()), delete(1, "a", info())];
        assert!(checks_of(&operations, &Seen::default()).is_empty());
    }

    #[test]
    fn a_deleted_instance_does_not_come_back() {
        let operations = [launch(0, "a", ok()), delete(1, "a", ok())];
        let mut seen = Seen::default();
        running_on(&mut seen, "a", "m1", true);
        let violations = checks_of(&operations, &seen);
        assert!(
            violations.iter().any(|v| v.contains("deleted")),
            "{violations:?}"
        );
    }

    #[test]
    fn an_instance_nobody_launched_is_found() {
        let failed = Some(Outcome::Fail {
            error: "refused".into(),
        });
        let operations = [launch(0, "a", failed)];
        let mut seen = Seen::default();
        running_on(&mut seen, "a", "m1", false);
        let violations = checks_of(&operations, &seen);
        assert!(
            violations.iter().any(|v| v.contains("no launch")),
            "{violations:?}"
        );
    }

    #[test]
    fn running_twice_is_found() {
        let operations = [launch(0, "a", ok())];
        let mut seen = Seen::default();
        running_on(&mut seen, "a", "m1", true);
        seen.containers
            .entry("m2".into())
            .or_default()
            .insert("a".into(), true);
        let violations = checks_of(&operations, &seen);
        assert!(
            violations
                .iter()
                .any(|v| v.contains("runs on m1 and m2 at once")),
            "{violations:?}"
        );
        assert!(
            violations
                .iter()
                .any(|v| v.contains("runs on m2, but its record says placed on m1")),
            "{violations:?}"
        );
    }

    #[test]
    fn records_and_containers_must_agree() {
        let operations = [
            launch(0, "a", ok()),
            launch(1, "b", ok()),
            launch(2, "c", ok()),
        ];
        let mut seen = Seen::default();
        running_on(&mut seen, "a", "m1", true);
        running_on(&mut seen, "b", "m1", false);
        running_on(&mut seen, "c", "m2", true);
        // a's record says Running, its container is stopped; b's says Stopped, it runs; c's
        // member has no container of it.
        seen.containers.insert(
            "m1".into(),
            BTreeMap::from([("a".into(), false), ("b".into(), true)]),
        );
        seen.containers.insert("m2".into(), BTreeMap::new());
        let violations = checks_of(&operations, &seen);
        assert_eq!(violations.len(), 3, "{violations:?}");
        assert!(violations
            .iter()
            .any(|v| v.contains("instance a: recorded Running on m1, but")));
        assert!(violations
            .iter()
            .any(|v| v.contains("instance b: recorded Stopped, but")));
        assert!(violations
            .iter()
            .any(|v| v.contains("instance c: recorded Running on m2, which has no")));
    }

    /// The case seed 7 found in 30 minutes: an acknowledged launch whose record says
    /// `Creating` on a member without its container. A record in `Error` without a container
    /// after a launch or a delete whose outcome was unknown is what those errors said.
    #[test]
    fn an_acknowledged_launch_without_files_is_found() {
        let mut seen = Seen::default();
        recorded(&mut seen, "a", "m2", "Creating");
        let violations = checks_of(&[launch(0, "a", ok())], &seen);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].contains("recorded Creating on m2"),
            "{violations:?}"
        );
        recorded(&mut seen, "b", "m2", "Error");
        recorded(&mut seen, "c", "m3", "Error");
        let operations = [
            launch(0, "a", ok()),
            launch(1, "b", info()),
            launch(2, "c", ok()),
            delete(3, "c", info()),
        ];
        assert_eq!(checks_of(&operations, &seen).len(), 1);
    }

    #[test]
    fn records_parse_from_a_list() {
        let list = serde_json::json!([
            {"name": "a", "location": "m2", "status": "Running", "config": {}},
        ]);
        let records = records_of(&list).ok();
        assert_eq!(
            records.and_then(|records| records.get("a").cloned()),
            Some(Record {
                location: "m2".into(),
                status: "Running".into()
            })
        );
        assert!(records_of(&serde_json::json!([{"name": "a"}])).is_err());
        assert!(records_of(&serde_json::json!({})).is_err());
    }
}
