//! Stall watch: says in the log when this member's async runtime ran late.
//!
//! Raft's heartbeat, the QUIC endpoint and every request run on the member's async runtime.
//! A task that holds a worker thread for tens of milliseconds (CPU-heavy work or a blocking
//! call where none belongs) delays all of them; past the election timeout the followers elect
//! a new leader although nothing failed. etcd says "slow fdatasync" or "apply took too long"
//! for the same reason: the operator sees why leadership moved.
//!
//! Two clocks tick every [`TICK`]: a task on the runtime and a plain OS thread. A late task
//! with an on-time thread means the runtime was held up (a task kept a worker); both late
//! means the whole process did not run (the machine is overloaded, the process was stopped,
//! the VM paused). [`StallMeter`] decides what to report, at most once per [`REPORT_EVERY`],
//! counting the stalls in between.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::member::Member;

/// How often both clocks tick.
pub const TICK: Duration = Duration::from_millis(10);
/// How late a tick must be to count as a stall: longer than a heartbeat interval.
pub const STALL_MIN: Duration = Duration::from_millis(50);
/// At most one report per this long; the stalls in between are counted in the next one.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Who was held up in a stall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// The async runtime alone: a task kept a worker thread.
    Runtime,
    /// The whole process: the machine is overloaded, or the process or VM was paused.
    Process,
}

/// One report: the stalls since the last one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StallReport {
    /// Stalls counted (the one that triggered the report included).
    pub stalls: u32,
    /// The longest, in milliseconds.
    pub worst_ms: u64,
    /// Who was held up in the longest.
    pub held: Held,
}

/// The stalls seen since the last report, and when that was.
#[derive(Debug, Default)]
pub struct StallMeter {
    last_report: Option<Instant>,
    stalls: u32,
    worst: Duration,
    held: Option<Held>,
}

impl StallMeter {
    /// Records a tick of the runtime's clock at `now`, `late` past when it was due, while the
    /// thread's clock was at most `thread_late` late over the same time; answers a report when
    /// one is due.
    pub fn tick(
        &mut self,
        now: Instant,
        late: Duration,
        thread_late: Duration,
    ) -> Option<StallReport> {
        if late >= STALL_MIN {
            self.stalls += 1;
            if late > self.worst {
                self.worst = late;
                // The thread lost most of the same time: the process did not run.
                self.held = Some(if thread_late * 2 >= late {
                    Held::Process
                } else {
                    Held::Runtime
                });
            }
        }
        let due = self
            .last_report
            .is_none_or(|last| now.duration_since(last) >= REPORT_EVERY);
        let held = self.held?;
        if !due {
            return None;
        }
        let report = StallReport {
            stalls: self.stalls,
            worst_ms: self.worst.as_millis() as u64,
            held,
        };
        *self = StallMeter {
            last_report: Some(now),
            ..StallMeter::default()
        };
        Some(report)
    }
}

/// Starts both clocks of `member`; they stop when the member does.
pub(crate) fn spawn(member: &Member) {
    let thread_late_ms = Arc::new(AtomicU64::new(0));
    let stopped = Arc::new(AtomicBool::new(false));
    let (late_ms, stop) = (thread_late_ms.clone(), stopped.clone());
    let thread = std::thread::Builder::new()
        .name("starling-stall-clock".into())
        .spawn(move || {
            let mut due = Instant::now() + TICK;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                let now = Instant::now();
                late_ms.fetch_max(
                    now.duration_since(due).as_millis() as u64,
                    Ordering::Relaxed,
                );
                due = now + TICK;
            }
        });
    if let Err(error) = thread {
        tracing::warn!(%error, "no stall watch: cannot start its thread");
        return;
    }
    let member = member.clone();
    tokio::spawn(async move {
        let mut meter = StallMeter::default();
        let mut due = Instant::now() + TICK;
        // One subscription to the shutdown for the task's life, not one per tick.
        let stopping = member.stopping();
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = &mut stopping => break,
            }
            let now = Instant::now();
            let late = now.duration_since(due);
            if late >= STALL_MIN {
                // After a pause of the whole process this task may run before the thread
                // does: give the thread two ticks to record how late it was.
                tokio::time::sleep(TICK * 2).await;
            }
            let thread_late = Duration::from_millis(thread_late_ms.swap(0, Ordering::Relaxed));
            due = Instant::now() + TICK;
            let Some(report) = meter.tick(now, late, thread_late) else {
                continue;
            };
            let why = match report.held {
                Held::Runtime => "a task kept a worker thread of the async runtime",
                Held::Process => {
                    "the whole process did not run (an overloaded machine, a paused process or VM)"
                }
            };
            tracing::warn!(
                stalls = report.stalls,
                worst_ms = report.worst_ms,
                "this member stalled {} time(s) past {} ms since the last report, at worst {} ms: {why}; \
                 a stall past the election timeout makes the followers elect a new leader",
                report.stalls,
                STALL_MIN.as_millis(),
                report.worst_ms
            );
        }
        stopped.store(true, Ordering::Relaxed);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    #[test]
    fn on_time_ticks_report_nothing() {
        let mut meter = StallMeter::default();
        let start = Instant::now();
        for tick in 0..1_000 {
            assert_eq!(meter.tick(start + ms(tick * 10), ms(3), ms(2)), None);
        }
    }

    #[test]
    fn the_first_stall_is_reported_at_once_and_later_ones_counted_into_the_next_report() {
        let mut meter = StallMeter::default();
        let start = Instant::now();
        assert_eq!(
            meter.tick(start, ms(120), ms(1)),
            Some(StallReport {
                stalls: 1,
                worst_ms: 120,
                held: Held::Runtime
            })
        );
        // Within the report interval: counted, not reported.
        assert_eq!(meter.tick(start + ms(1_000), ms(60), ms(0)), None);
        assert_eq!(meter.tick(start + ms(2_000), ms(300), ms(290)), None);
        assert_eq!(meter.tick(start + ms(3_000), ms(5), ms(0)), None);
        // Once the interval passed, the next tick reports them, whether or not it is late.
        assert_eq!(
            meter.tick(start + REPORT_EVERY + ms(1), ms(2), ms(0)),
            Some(StallReport {
                stalls: 2,
                worst_ms: 300,
                held: Held::Process
            })
        );
        // And then nothing is left to report.
        assert_eq!(meter.tick(start + REPORT_EVERY * 3, ms(2), ms(0)), None);
    }

    #[test]
    fn a_late_thread_means_the_process_was_held_up() {
        let mut meter = StallMeter::default();
        let report = meter.tick(Instant::now(), ms(400), ms(390));
        assert_eq!(report.map(|report| report.held), Some(Held::Process));
        let mut meter = StallMeter::default();
        let report = meter.tick(Instant::now(), ms(400), ms(20));
        assert_eq!(report.map(|report| report.held), Some(Held::Runtime));
    }

    #[test]
    fn a_short_delay_is_no_stall() {
        let mut meter = StallMeter::default();
        assert_eq!(meter.tick(Instant::now(), STALL_MIN - ms(1), ms(0)), None);
        assert!(meter.tick(Instant::now(), STALL_MIN, ms(0)).is_some());
    }
}
