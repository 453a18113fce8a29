//! A member's events: a bounded broadcast. Each reader has its own place in a ring of
//! [`BUS_CAPACITY`] events; one that falls further behind is told how many it missed and goes
//! on from the oldest kept, so a slow monitor costs the member no memory beyond the ring.

use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Readers that may take derived (lifecycle) events: while there are none, they are not
    /// made at all (every applied write has one, and nobody else reads them here).
    derived_readers: Arc<AtomicUsize>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            sender: broadcast::channel(BUS_CAPACITY).0,
            derived_readers: Arc::default(),
        }
    }
}

/// Counts a reader that may take derived events for as long as it lives.
struct DerivedReader(Arc<AtomicUsize>);

impl Drop for DerivedReader {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
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
    _derived: Option<DerivedReader>,
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

    /// A reader of the events published from now on; `takes_derived`: it may take derived
    /// (lifecycle) events, which are published only while such a reader exists.
    pub(crate) fn subscribe(&self, takes_derived: bool) -> Reader {
        let derived = takes_derived.then(|| {
            self.derived_readers.fetch_add(1, Ordering::SeqCst);
            DerivedReader(self.derived_readers.clone())
        });
        Reader {
            receiver: self.sender.subscribe(),
            _derived: derived,
        }
    }

    /// Whether a reader that may take derived events exists (else making one is wasted work).
    pub(crate) fn derived_wanted(&self) -> bool {
        self.derived_readers.load(Ordering::SeqCst) > 0
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
        let mut reader = bus.subscribe(false);
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

    /// Goal: derived events are wanted exactly while a reader that may take them lives.
    #[test]
    fn derived_events_are_wanted_while_a_reader_may_take_them() {
        let bus = EventBus::default();
        let _other = bus.subscribe(false);
        assert!(!bus.derived_wanted());
        let first = bus.subscribe(true);
        let second = bus.clone().subscribe(true);
        assert!(bus.derived_wanted());
        drop(first);
        assert!(bus.derived_wanted());
        drop(second);
        assert!(!bus.derived_wanted());
    }
}
