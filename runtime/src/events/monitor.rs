//! Serving events: a client's monitor (`starling monitor`), and another member's relay
//! subscription. Both read this member's bus and send what they asked for, one frame per
//! event, until the reader goes away; a reader that falls behind gets a `gap` event.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use starling_store::Registered;
use starling_transport::Responder;

use super::bus::{Envelope, Received, Source};
use super::{Event, EventType};
use crate::member::Member;
use crate::protocol::Reply;
use crate::Error;

/// How often an idle stream says it is still there (the reader's silence timeout is longer).
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// What a relay subscription asks a member for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Want {
    /// Events that happened on the member asked.
    pub own: bool,
    /// Events it relays from others (a hub's).
    pub relayed: bool,
    /// Lifecycle events from the log (for a member whose copy of the log does not follow).
    pub derived: bool,
}

impl Want {
    fn takes(&self, envelope: &Envelope, subscriber: &str) -> bool {
        if envelope.origin == subscriber {
            return false;
        }
        match envelope.source {
            Source::Local => self.own,
            Source::Relayed => self.relayed,
            Source::Derived => self.derived,
        }
    }
}

/// Who reads a stream, and what it takes.
enum Reader<'a> {
    /// A monitor: every event of these types (all when empty).
    Monitor(&'a [EventType]),
    /// A member's relay subscription.
    Member { subscriber: &'a str, want: &'a Want },
}

impl Reader<'_> {
    /// Whether it may take derived (lifecycle) events.
    fn may_take_derived(&self) -> bool {
        match self {
            Reader::Monitor(types) => types.is_empty() || types.contains(&EventType::Lifecycle),
            Reader::Member { want, .. } => want.derived,
        }
    }

    fn takes(&self, envelope: &Envelope) -> bool {
        match self {
            Reader::Monitor(types) => {
                envelope.event.kind == EventType::Gap
                    || types.is_empty()
                    || types.contains(&envelope.event.kind)
            }
            Reader::Member { subscriber, want } => want.takes(envelope, subscriber),
        }
    }
}

impl Member {
    /// Streams this member's events of `types` to a client until it goes away.
    pub(crate) async fn serve_monitor(
        &self,
        types: &[String],
        fingerprint: &str,
        responder: &mut Responder,
    ) -> Reply {
        let types: Result<Vec<EventType>, String> =
            types.iter().map(|text| EventType::parse(text)).collect();
        match types {
            Ok(types) => {
                self.stream_events(Reader::Monitor(&types), fingerprint, responder)
                    .await
            }
            Err(error) => Reply::Refused(Error::Refused(error)),
        }
    }

    /// Streams to member `subscriber` the events it wants, until it goes away.
    pub(crate) async fn serve_relay(
        &self,
        subscriber: &str,
        want: &Want,
        fingerprint: &str,
        responder: &mut Responder,
    ) -> Reply {
        self.stream_events(Reader::Member { subscriber, want }, fingerprint, responder)
            .await
    }

    async fn stream_events(
        &self,
        reader: Reader<'_>,
        fingerprint: &str,
        responder: &mut Responder,
    ) -> Reply {
        let mut events = self.inner.events.subscribe(reader.may_take_derived());
        // Told at once that the stream is open: a reader knows from then on it misses nothing.
        if responder.send(&Reply::Ack).await.is_err() {
            return Reply::Ack;
        }
        let gone = responder.client_gone();
        tokio::pin!(gone);
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        loop {
            let frame = tokio::select! {
                received = events.next() => match received {
                    Received::Event(envelope) if reader.takes(&envelope) => {
                        Reply::Event(envelope.event.clone())
                    }
                    Received::Event(_) => continue,
                    Received::Missed(missed) => Reply::Event(Event::gap(&self.name(), missed)),
                    Received::Closed => return Reply::Ack,
                },
                _ = keepalive.tick() => {
                    // A certificate revoked meanwhile ends the stream.
                    if matches!(
                        self.registered(fingerprint),
                        Registered::Revoked | Registered::Unknown
                    ) {
                        return Reply::Refused(crate::trust::revoked());
                    }
                    Reply::Ack
                }
                _ = &mut gone => return Reply::Ack,
                _ = self.stopping() => return Reply::Ack,
            };
            if responder.send(&frame).await.is_err() {
                return Reply::Ack;
            }
        }
    }
}
