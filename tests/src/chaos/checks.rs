//! The checkers besides linearizability: the set (no acknowledged add lost, nothing added
//! that nobody asked for) and the counter (no increment applied twice, none acknowledged and
//! lost). Each takes the history and the final reads and returns what it found wrong.

use std::collections::BTreeSet;

use super::history::{Answer, Call, Operation, Outcome};
use super::linearizable::{self, Entry, RegisterCall, Verdict};

/// One problem a checker found: the violation count is the number of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which check (`linearizable`, `set`, `counter`, `recovery`, `roles`).
    pub check: &'static str,
    /// What exactly, with the operations involved.
    pub what: String,
}

/// The figures of the register check, for the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegisterFigures {
    /// Registers checked.
    pub keys: usize,
    /// Operations that took part in the search (`ok` and `info`).
    pub entries: usize,
    /// Registers whose search gave up at its bound.
    pub unknown: Vec<String>,
}

/// Checks every register in `operations` for linearizability, visiting at most `states_max`
/// states per register.
pub fn registers(operations: &[Operation], states_max: usize) -> (Vec<Violation>, RegisterFigures) {
    let mut by_key: std::collections::BTreeMap<String, Vec<Entry>> = Default::default();
    for operation in operations {
        if let Some((key, entry)) = register_entry(operation) {
            by_key.entry(key).or_default().push(entry);
        }
    }
    let mut violations = Vec::new();
    let mut figures = RegisterFigures {
        keys: by_key.len(),
        ..RegisterFigures::default()
    };
    for (key, entries) in by_key {
        figures.entries += entries.len();
        let started = std::time::Instant::now();
        let (verdict, placements) = linearizable::check_measured(&entries, states_max);
        tracing::info!(
            %key,
            operations = entries.len(),
            placements,
            took_ms = started.elapsed().as_millis() as u64,
            linearizable = matches!(verdict, Verdict::Linearizable),
            "register checked"
        );
        match verdict {
            Verdict::Linearizable => {}
            Verdict::Unknown { states } => {
                tracing::warn!(%key, states, "the linearizability search gave up");
                figures.unknown.push(key);
            }
            Verdict::NotLinearizable(stuck) => violations.push(Violation {
                check: "linearizable",
                what: format!(
                    "register {key}: no linearization; after {} operations the register held \
                     {:?} and operation #{} ({:?}, invoked at {:.3}s, ok at {:.3}s) cannot come next",
                    stuck.placed,
                    stuck.value,
                    stuck.blocked.id,
                    stuck.blocked.call,
                    seconds(stuck.blocked.invoke_ns),
                    seconds(stuck.blocked.ok_ns.unwrap_or_default()),
                ),
            }),
        }
    }
    (violations, figures)
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The register operation `operation` is, as the search needs it; `None` for other calls,
/// failed operations and reads with no answer.
fn register_entry(operation: &Operation) -> Option<(String, Entry)> {
    let outcome = operation.outcome();
    let ok_ns = operation.ok_at();
    let answer = match &outcome {
        Outcome::Fail { .. } => return None,
        Outcome::Ok { answer } => Some(answer.clone()),
        Outcome::Info { .. } => None,
    };
    let (key, call) = match (&operation.call, answer) {
        (Call::Read { key }, Some(Answer::Value(value))) => {
            (key.clone(), RegisterCall::Read(value))
        }
        (Call::MemberRead { member, key }, Some(Answer::Value(value))) => {
            (member_register(member, key), RegisterCall::Read(value))
        }
        (Call::Read { .. } | Call::MemberRead { .. }, _) => return None,
        (Call::Write { key, value }, _) => (key.clone(), RegisterCall::Write(*value)),
        (Call::MemberWrite { member, key, value }, _) => {
            (member_register(member, key), RegisterCall::Write(*value))
        }
        (Call::Cas { key, expected, new }, answer) => {
            let swapped = match answer {
                Some(Answer::Swapped(swapped)) => Some(swapped),
                _ => None,
            };
            let call = RegisterCall::Cas {
                expected: *expected,
                new: *new,
                swapped,
            };
            (key.clone(), call)
        }
        _ => return None,
    };
    let entry = Entry {
        id: operation.id,
        call,
        invoke_ns: operation.invoke_ns,
        ok_ns,
    };
    Some((key, entry))
}

/// The register a member config key is, named apart from the `kv` keys.
pub fn member_register(member: &str, key: &str) -> String {
    format!("member {member} {key}")
}

/// The set's figures, for the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetFigures {
    /// Adds acknowledged.
    pub acknowledged: usize,
    /// Adds with an unknown outcome.
    pub unknown: usize,
    /// Unknown adds present in the final read.
    pub unknown_present: usize,
    /// Elements in the final read.
    pub read: usize,
}

/// Checks the set: every acknowledged add is in `final_read`, every element read was added
/// (acknowledged or unknown, never failed or never asked), and none is read twice.
pub fn set(operations: &[Operation], final_read: &[u64]) -> (Vec<Violation>, SetFigures) {
    let mut acknowledged = BTreeSet::new();
    let mut unknown = BTreeSet::new();
    let mut failed = BTreeSet::new();
    for operation in operations {
        let Call::Add { element } = operation.call else {
            continue;
        };
        match operation.outcome() {
            Outcome::Ok { .. } => acknowledged.insert(element),
            Outcome::Info { .. } => unknown.insert(element),
            Outcome::Fail { .. } => failed.insert(element),
        };
    }
    let mut violations = Vec::new();
    let mut read = BTreeSet::new();
    for element in final_read {
        if !read.insert(*element) {
            violations.push(Violation {
                check: "set",
                what: format!("element {element} read twice"),
            });
        }
    }
    let lost: Vec<u64> = acknowledged.difference(&read).copied().collect();
    if !lost.is_empty() {
        violations.push(Violation {
            check: "set",
            what: format!(
                "{} acknowledged adds lost: {}",
                lost.len(),
                first_few(&lost)
            ),
        });
    }
    let from_nowhere: Vec<u64> = read
        .iter()
        .filter(|element| !acknowledged.contains(element) && !unknown.contains(element))
        .copied()
        .collect();
    if !from_nowhere.is_empty() {
        let failed_too: Vec<u64> = from_nowhere
            .iter()
            .filter(|element| failed.contains(element))
            .copied()
            .collect();
        violations.push(Violation {
            check: "set",
            what: format!(
                "{} elements read that no add could have put there ({} of them from adds \
                 that failed): {}",
                from_nowhere.len(),
                failed_too.len(),
                first_few(&from_nowhere)
            ),
        });
    }
    let figures = SetFigures {
        acknowledged: acknowledged.len(),
        unknown: unknown.len(),
        unknown_present: unknown.intersection(&read).count(),
        read: read.len(),
    };
    (violations, figures)
}

/// Checks the counter: each acknowledged increment answered a value no other did, and the
/// final value is at least the acknowledged increments and at most those plus the unknown
/// ones (an increment applied twice, or one acknowledged and lost, breaks one of these).
pub fn counter(operations: &[Operation], final_value: i64) -> Vec<Violation> {
    let mut answers = BTreeSet::new();
    let mut violations = Vec::new();
    let mut acknowledged = 0i64;
    let mut unknown = 0i64;
    for operation in operations {
        if operation.call != Call::Incr {
            continue;
        }
        match operation.outcome() {
            Outcome::Ok {
                answer: Answer::Counter(value),
            } => {
                acknowledged += 1;
                if !answers.insert(value) {
                    violations.push(Violation {
                        check: "counter",
                        what: format!(
                            "two increments answered {value} (operation #{})",
                            operation.id
                        ),
                    });
                }
                if value > final_value {
                    violations.push(Violation {
                        check: "counter",
                        what: format!(
                            "increment #{} answered {value}, above the final value {final_value}",
                            operation.id
                        ),
                    });
                }
            }
            Outcome::Ok { answer } => violations.push(Violation {
                check: "counter",
                what: format!("increment #{} answered {answer:?}", operation.id),
            }),
            Outcome::Info { .. } => unknown += 1,
            Outcome::Fail { .. } => {}
        }
    }
    if final_value < acknowledged || final_value > acknowledged + unknown {
        violations.push(Violation {
            check: "counter",
            what: format!(
                "final value {final_value}, but {acknowledged} increments were acknowledged \
                 and {unknown} have an unknown outcome"
            ),
        });
    }
    violations
}

fn first_few(elements: &[u64]) -> String {
    let shown: Vec<String> = elements.iter().take(20).map(u64::to_string).collect();
    let more = elements.len().saturating_sub(20);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::chaos::history::test_operation as operation;

    fn ok(answer: Answer) -> Option<Outcome> {
        Some(Outcome::Ok { answer })
    }

    fn fail() -> Option<Outcome> {
        Some(Outcome::Fail {
            error: "refused".into(),
        })
    }

    /// A write of `value` to register `r`.
    fn write(id: usize, value: i64, outcome: Option<Outcome>) -> Operation {
        let key = "r".to_string();
        operation(id, Call::Write { key, value }, outcome)
    }

    fn add(id: usize, element: u64, outcome: Option<Outcome>) -> Operation {
        operation(id, Call::Add { element }, outcome)
    }

    #[test]
    fn set_with_everything_acknowledged_present_passes() {
        let history = [
            add(0, 1, ok(Answer::Done)),
            add(1, 2, None),
            add(2, 3, None),
            add(3, 4, fail()),
        ];
        let (violations, figures) = set(&history, &[1, 2]);
        assert_eq!(violations, []);
        assert_eq!(figures.unknown_present, 1);
    }

    #[test]
    fn set_finds_lost_duplicate_and_unasked_elements() {
        let history = [add(0, 1, ok(Answer::Done)), add(1, 2, fail())];
        let (violations, _) = set(&history, &[2, 2, 9]);
        let checks: Vec<&str> = violations.iter().map(|v| v.what.as_str()).collect();
        assert_eq!(violations.len(), 3, "{checks:?}");
        assert!(checks[0].contains("read twice"));
        assert!(checks[1].contains("1 acknowledged adds lost: 1"));
        assert!(checks[2].contains("2 elements read") && checks[2].contains("1 of them"));
    }

    #[test]
    fn counter_checks_duplicates_and_bounds() {
        let incr = |id, outcome| operation(id, Call::Incr, outcome);
        let good = [
            incr(0, ok(Answer::Counter(1))),
            incr(1, None),
            incr(2, ok(Answer::Counter(3))),
        ];
        assert_eq!(counter(&good, 3), []);
        assert_eq!(counter(&good, 2).len(), 1, "3 answered, above the final 2");
        assert_eq!(
            counter(&good, 1).len(),
            2,
            "3 above the final 1, which is below 2 acks"
        );
        let twice = [
            incr(0, ok(Answer::Counter(1))),
            incr(1, ok(Answer::Counter(1))),
        ];
        assert_eq!(counter(&twice, 2).len(), 1);
        let applied_twice = [incr(0, ok(Answer::Counter(1)))];
        assert_eq!(counter(&applied_twice, 2).len(), 1);
    }

    /// The register check reads the history as the search needs it: failed operations and
    /// unanswered reads left out, open operations as `info`.
    #[test]
    fn register_history_is_read_right() {
        let key = || "r".to_string();
        let history = [
            write(0, 1, ok(Answer::Done)),
            write(1, 2, fail()),
            operation(2, Call::Read { key: key() }, None),
            write(3, 3, None),
            operation(4, Call::Read { key: key() }, ok(Answer::Value(Some(3)))),
        ];
        let (violations, figures) = registers(&history, 1_000);
        assert_eq!(violations, []);
        assert_eq!(figures.entries, 3);
        let lost = [
            write(0, 1, ok(Answer::Done)),
            write(1, 2, fail()),
            operation(2, Call::Read { key: key() }, ok(Answer::Value(Some(2)))),
        ];
        let (violations, _) = registers(&lost, 1_000);
        assert_eq!(violations.len(), 1, "a failed write cannot be read");
    }
}
