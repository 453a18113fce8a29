//! A member's events: a bounded broadcast. Each reader has its own place in a ring of
//! [`BUS_CAPACITY`] events; one that falls further behind is told how many it missed and goes
//! on from the oldest kept, so a slow monitor costs the member no memory beyond the ring.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::Event;

/// Events kept for the slowest reader.
pub const BUS_CAPACITY: usize = 1_024;

/// How an event came onto this member's bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// It happened here (a log line, an operation), and only here knows of it.
    Local,
    /// From the log: every replica derives it itself (a lifecycle event).
    Derived,
    /// Relayed from another member.
    Relayed,
}

/// An event on the bus, with where it came from.
#[derive(Debug)]
pub(crate) struct Envelope {
    /// The event.
    pub(crate) event: Event,
    /// How it came here.
    pub(crate) source: Source,
    /// The member whose bus had it first: it is never relayed back there.
    pub(crate) origin: String,
}

/// A member's event bus. Cheap to clone.
#[derive(Clone)]
pub(crate) struct EventBus {
    sender: broadcast::Sender<Arc<Envelope>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            sender: broadcast::channel(BUS_CAPACITY).0,
        }
    }
}

/// What a reader gets next.
pub(crate) enum Received {
    /// An event.
    Event(Arc<Envelope>),
    /// This many events were dropped for this reader.
    Missed(u64),
    /// The bus is gone (the member stopped).
    Closed,
}

/// One reader of the bus.
pub(crate) struct Reader {
    receiver: broadcast::Receiver<Arc<Envelope>>,
}

impl Reader {
    /// The next event, or how many were missed.
    pub(crate) async fn next(&mut self) -> Received {
        match self.receiver.recv().await {
            Ok(envelope) => Received::Event(envelope),
            Err(broadcast::error::RecvError::Lagged(missed)) => Received::Missed(missed),
            Err(broadcast::error::RecvError::Closed) => Received::Closed,
        }
    }
}

impl EventBus {
    /// Puts an event on the bus (no reader: nobody is watching, which is fine).
    pub(crate) fn publish(&self, event: Event, source: Source, origin: &str) {
        let _ = self.sender.send(Arc::new(Envelope {
            event,
            source,
            origin: origin.to_string(),
        }));
    }

    /// A reader of the events published from now on.
    pub(crate) fn subscribe(&self) -> Reader {
        Reader {
            receiver: self.sender.subscribe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventType;

    /// Goal: a reader that falls behind is told how many events it missed and goes on with
    /// the newest kept; the bus holds no more than its ring for it.
    #[tokio::test]
    async fn a_slow_reader_is_told_what_it_missed() {
        let bus = EventBus::default();
        let mut reader = bus.subscribe();
        let total = BUS_CAPACITY + 10;
        for number in 0..total {
            let event = Event::now(EventType::Logging, "m1", "", serde_json::json!(number));
            bus.publish(event, Source::Local, "m1");
        }
        match reader.next().await {
            Received::Missed(missed) => assert_eq!(missed, 10),
            _ => panic!("no gap notice"),
        }
        match reader.next().await {
            Received::Event(envelope) => assert_eq!(envelope.event.metadata, "10"),
            _ => panic!("no event after the gap"),
        }
    }
}
