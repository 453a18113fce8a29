//! The event stream, as LXD's: `lifecycle` (what changed), `logging` (scripts' `log.*` lines)
//! and `operation` (long work: its start, progress and end), each with `type`, `timestamp`,
//! `location`, `project` and `metadata`.
//!
//! - `bus.rs`: a member's events, a bounded broadcast; a reader that falls behind is told how
//!   many events it missed (a `gap` event) instead of holding memory for it.
//! - `relay.rs`: which members this member takes events from (pure: `plan`), and the
//!   subscriptions that carry them out. Lifecycle events come from the log (every replica
//!   derives them itself, `starling_store::lifecycle`); only the others travel.
//! - `monitor.rs`: a client's `starling monitor` stream, and the relay's serving side.

pub mod bus;
pub mod monitor;
pub mod relay;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use bus::Source;

/// The kinds of events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// Something changed (LXD's lifecycle actions).
    Lifecycle,
    /// A log line.
    Logging,
    /// Long work started, moved on or ended.
    Operation,
    /// The reader fell behind and missed events (not one of LXD's types; always shown).
    Gap,
}

impl EventType {
    /// LXD's word.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Lifecycle => "lifecycle",
            EventType::Logging => "logging",
            EventType::Operation => "operation",
            EventType::Gap => "gap",
        }
    }

    /// The type named `text` (`lifecycle`, `logging` or `operation`).
    pub fn parse(text: &str) -> Result<EventType, String> {
        match text {
            "lifecycle" => Ok(EventType::Lifecycle),
            "logging" => Ok(EventType::Logging),
            "operation" => Ok(EventType::Operation),
            other => Err(format!(
                "unknown event type \"{other}\": lifecycle, logging or operation"
            )),
        }
    }
}

/// One event. `metadata` is JSON text (the wire is bincode, which cannot carry free JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Its kind.
    pub kind: EventType,
    /// When it happened, nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// The member it happened on.
    pub location: String,
    /// The project it concerns (empty: none).
    pub project: String,
    /// The event's own fields, as LXD has them for its type, as JSON text.
    pub metadata: String,
}

use crate::token::now_ns;

/// `ns` as RFC 3339 with nanoseconds, as LXD prints event times.
pub fn rfc3339_ns(ns: u64) -> String {
    crate::token::rfc3339(ns, chrono::SecondsFormat::Nanos)
}

impl Event {
    /// An event of `kind` happening now on `location`.
    pub(crate) fn now(kind: EventType, location: &str, project: &str, metadata: Value) -> Event {
        Event {
            kind,
            timestamp_ns: now_ns(),
            location: location.to_string(),
            project: project.to_string(),
            metadata: metadata.to_string(),
        }
    }

    /// A lifecycle event from the log, seen on `member` now (an event about the whole cluster
    /// has no location of its own: `fallback` is given).
    pub(crate) fn lifecycle(
        lifecycle: &starling_store::lifecycle::Lifecycle,
        fallback: &str,
    ) -> Event {
        let location = if lifecycle.location.is_empty() {
            fallback
        } else {
            &lifecycle.location
        };
        Event::now(
            EventType::Lifecycle,
            location,
            &lifecycle.project,
            json!({
                "action": lifecycle.action,
                "source": lifecycle.source,
                "context": lifecycle.context,
                "project": lifecycle.project,
            }),
        )
    }

    /// A `logging` event: `level` is `info`, `warn` or `error`.
    pub(crate) fn logging(location: &str, level: &str, message: &str, context: Value) -> Event {
        Event::now(
            EventType::Logging,
            location,
            "",
            json!({ "message": message, "level": level, "context": context }),
        )
    }

    /// The notice a reader gets when it fell behind and `missed` events were dropped for it
    /// on `location`.
    pub(crate) fn gap(location: &str, missed: u64) -> Event {
        Event::now(
            EventType::Gap,
            location,
            "",
            json!({
                "missed": missed,
                "message": format!(
                    "{missed} events were dropped: this reader fell behind on member {location}"
                ),
            }),
        )
    }

    /// The metadata as JSON (an object; text that is not JSON is shown as a string).
    pub fn metadata_json(&self) -> Value {
        serde_json::from_str(&self.metadata)
            .unwrap_or_else(|_| Value::String(self.metadata.clone()))
    }

    /// LXD's JSON form of the event.
    pub fn to_json(&self) -> Value {
        json!({
            "type": self.kind.as_str(),
            "timestamp": rfc3339_ns(self.timestamp_ns),
            "location": self.location,
            "project": self.project,
            "metadata": self.metadata_json(),
        })
    }

    /// One line for people: time, member, type and what happened.
    pub fn pretty(&self) -> String {
        let metadata = self.metadata_json();
        let text = |field: &str| metadata.get(field).and_then(Value::as_str).unwrap_or("");
        let time = rfc3339_ns(self.timestamp_ns);
        let detail = match self.kind {
            EventType::Lifecycle => {
                let mut line = format!("{} {}", text("action"), text("source"));
                if let Some(context) = metadata.get("context").and_then(Value::as_object) {
                    for (key, value) in context {
                        let value = value.as_str().map_or(value.to_string(), str::to_string);
                        line.push_str(&format!(" {key}={value}"));
                    }
                }
                line
            }
            EventType::Logging => format!("{} {}", text("level").to_uppercase(), text("message")),
            EventType::Operation => {
                format!("{} {} {}", text("id"), text("status"), text("description"))
            }
            EventType::Gap => text("message").to_string(),
        };
        format!("{time} {} {} {detail}", self.location, self.kind.as_str())
    }
}

/// Long work shown as LXD's `operation` events, emitted on the member doing it: one when it
/// starts (`Running`), one per step of progress, one when it ends (`Success` or `Failure`).
pub(crate) struct Tracked {
    member: crate::member::Member,
    id: String,
    description: String,
    resources: Value,
    created_ns: u64,
}

impl Tracked {
    /// Starts showing work described as `description`, about `resources` (LXD's map of kinds
    /// to API paths).
    pub(crate) fn start(
        member: &crate::member::Member,
        description: &str,
        resources: Value,
    ) -> Tracked {
        let random = crate::token::random_u128().unwrap_or_else(|_| u128::from(now_ns()));
        let hex = format!("{random:032x}");
        let id = format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        );
        let tracked = Tracked {
            member: member.clone(),
            id,
            description: description.to_string(),
            resources,
            created_ns: now_ns(),
        };
        tracked.emit("Running", 103, json!({}), "");
        tracked
    }

    /// Shows progress (`metadata`: what is done so far).
    pub(crate) fn progress(&self, metadata: Value) {
        self.emit("Running", 103, metadata, "");
    }

    /// Shows the end: `Success`, or `Failure` with the error.
    pub(crate) fn end(self, outcome: Result<Value, String>) {
        match outcome {
            Ok(metadata) => self.emit("Success", 200, metadata, ""),
            Err(error) => self.emit("Failure", 400, json!({}), &error),
        }
    }

    fn emit(&self, status: &str, status_code: u16, metadata: Value, error: &str) {
        let name = self.member.name();
        let metadata = json!({
            "id": self.id,
            "class": "task",
            "description": self.description,
            "created_at": rfc3339_ns(self.created_ns),
            "updated_at": rfc3339_ns(now_ns()),
            "status": status,
            "status_code": status_code,
            "resources": self.resources,
            "metadata": metadata,
            "may_cancel": false,
            "err": error,
            "location": name,
        });
        let event = Event::now(EventType::Operation, &name, "", metadata);
        self.member
            .inner
            .events
            .publish(event, Source::Local, &name);
    }
}

/// Puts the lifecycle events of the entries this member applies on its bus, as they apply.
/// An event about the whole cluster shows the leader's name as its location (where it was
/// decided).
pub(crate) async fn lifecycle_to_bus(member: crate::member::Member) {
    let mut applied = member.inner.state.lifecycle();
    loop {
        let received = tokio::select! {
            received = applied.recv() => received,
            _ = member.stopping() => return,
        };
        let me = member.name();
        match received {
            // Nobody here may take it: not made at all.
            Ok(_) if !member.inner.events.derived_wanted() => {}
            Ok(lifecycle) => {
                let fallback = member.leader_name().unwrap_or_else(|| me.clone());
                let event = Event::lifecycle(&lifecycle, &fallback);
                member.inner.events.publish(event, Source::Derived, &me);
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                member
                    .inner
                    .events
                    .publish(Event::gap(&me, missed), Source::Derived, &me);
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_shows_as_lxd_does() {
        let event = Event {
            kind: EventType::Lifecycle,
            timestamp_ns: 1_700_000_000_123_456_789,
            location: "m2".into(),
            project: "default".into(),
            metadata: json!({"action": "instance-started", "source": "/1.0/instances/c1",
                              "context": {}, "project": "default"})
            .to_string(),
        };
        let shown = event.to_json();
        assert_eq!(shown["type"], "lifecycle");
        assert_eq!(shown["timestamp"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(shown["location"], "m2");
        assert_eq!(shown["metadata"]["action"], "instance-started");
        assert_eq!(
            event.pretty(),
            "2023-11-14T22:13:20.123456789Z m2 lifecycle instance-started /1.0/instances/c1"
        );
        assert!(EventType::parse("lifecycles")
            .unwrap_err()
            .contains("unknown event type"));
    }
}
