//! When a scheduled script runs (pure: no clock, no IO; times are milliseconds since the Unix
//! epoch, UTC).
//!
//! A schedule is a 5-field cron expression (`*/5 * * * *`), a nickname (`@hourly`, `@daily`,
//! `@weekly`, `@monthly`, `@yearly`), or `@every <duration>` (`500ms`, `10s`, `5m`, `2h`, `1d`;
//! at least 100 ms), whose ticks fall on multiples of the duration since the epoch, so every
//! member computes the same ticks. [`due`] decides, from the last tick claimed, what the
//! scheduler does now: nothing until a tick, run the latest tick that is due, or record it
//! skipped when it was missed (later than the grace) and the script says `missed = skip`.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use starling_store::scripts::Missed;

/// The shortest `@every` interval.
pub const EVERY_MIN_MS: u64 = 100;
/// Ticks looked at, at most, to find the latest due one of a cron schedule (a week of
/// minutes): past that the scheduler takes the last one it reached.
const TICKS_SCANNED_MAX: usize = 10_080;

/// A parsed schedule.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// A cron expression or nickname.
    Cron(Box<croner::Cron>),
    /// Every this many milliseconds, aligned on the epoch.
    Every(u64),
}

impl Schedule {
    /// Parses `spec`, with an error that says what is accepted.
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let spec = spec.trim();
        if let Some(duration) = spec.strip_prefix("@every") {
            let interval = parse_duration(duration.trim()).map_err(|error| {
                format!("schedule \"{spec}\": {error} (for example \"@every 30s\")")
            })?;
            if interval < EVERY_MIN_MS {
                return Err(format!(
                    "schedule \"{spec}\": the interval must be at least {EVERY_MIN_MS} ms"
                ));
            }
            return Ok(Schedule::Every(interval));
        }
        if spec.split_whitespace().count() > 5 {
            return Err(format!(
                "schedule \"{spec}\": a cron expression has 5 fields (minute hour day-of-month month day-of-week)"
            ));
        }
        croner::Cron::from_str(spec)
            .map(|cron| Schedule::Cron(Box::new(cron)))
            .map_err(|error| {
                format!(
                    "schedule \"{spec}\" is not a 5-field cron expression, @hourly/@daily/@weekly/@monthly/@yearly or @every <duration>: {error}"
                )
            })
    }

    /// The first tick strictly after `after_ms`.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        match self {
            Schedule::Every(interval) => (after_ms / interval + 1).checked_mul(*interval),
            Schedule::Cron(cron) => {
                let after = DateTime::<Utc>::from_timestamp_millis(i64::try_from(after_ms).ok()?)?;
                let next = cron.find_next_occurrence(&after, false).ok()?;
                u64::try_from(next.timestamp_millis()).ok()
            }
        }
    }
}

/// A duration such as `500ms`, `10s`, `5m`, `2h`, `1d`, in milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let digits = text.chars().take_while(char::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("\"{text}\" is not a duration"))?;
    let scale = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "\"{other}\" is not a unit of duration: use ms, s, m, h or d"
            ))
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("\"{text}\" is too long a duration"))
}

/// What the scheduler does about one script now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing before `at` (ms), the next tick.
    Wait {
        /// The next tick.
        at: u64,
    },
    /// Claim `tick` and run it.
    Run {
        /// The tick.
        tick: u64,
    },
    /// Claim `tick` as skipped: it was missed and the script says `missed = skip`.
    Skip {
        /// The tick.
        tick: u64,
    },
    /// The schedule has no tick to come.
    Never,
}

/// What to do about a script whose last claimed tick is `last` (`None`: never, ticks count
/// from `created_ms`), at `now_ms`; a tick later than `grace_ms` was missed.
pub fn due(
    schedule: &Schedule,
    created_ms: u64,
    last: Option<u64>,
    now_ms: u64,
    missed: Missed,
    grace_ms: u64,
) -> Due {
    let from = last.unwrap_or(created_ms);
    let Some(mut tick) = schedule.next_after(from) else {
        return Due::Never;
    };
    if tick > now_ms {
        return Due::Wait { at: tick };
    }
    // The latest tick that is due: the ones before it are not run (a missed stretch runs once).
    for _ in 0..TICKS_SCANNED_MAX {
        match schedule.next_after(tick) {
            Some(next) if next <= now_ms => tick = next,
            _ => break,
        }
    }
    if now_ms - tick > grace_ms && missed == Missed::Skip {
        Due::Skip { tick }
    } else {
        Due::Run { tick }
    }
}

/// How long the scheduler waits before its next round, at `now_ms`: until `next_tick_ms`, the
/// earliest tick to come of any script, but never longer than `period` (new schedules and
/// triggered runs are looked at every period) and never less than a millisecond (a tick is
/// due only once the clock has reached it).
pub fn wait_before_next_round(
    now_ms: u64,
    next_tick_ms: Option<u64>,
    period: std::time::Duration,
) -> std::time::Duration {
    match next_tick_ms {
        Some(at) => std::time::Duration::from_millis(at.saturating_sub(now_ms).max(1)).min(period),
        None => period,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;

    /// Goal: the scheduler wakes for the earliest tick, not at its next poll: a tick 3 ms
    /// away is waited for 3 ms, one further than a period is waited for a period, one due
    /// now (or past) for a millisecond, and without ticks to come for a period.
    #[test]
    fn the_scheduler_wakes_at_the_next_tick_within_a_period() {
        use std::time::Duration;
        let period = Duration::from_millis(20);
        assert_eq!(
            wait_before_next_round(1_000, Some(1_003), period),
            Duration::from_millis(3)
        );
        assert_eq!(wait_before_next_round(1_000, Some(1_500), period), period);
        assert_eq!(
            wait_before_next_round(1_000, Some(1_000), period),
            Duration::from_millis(1)
        );
        assert_eq!(
            wait_before_next_round(1_000, Some(900), period),
            Duration::from_millis(1)
        );
        assert_eq!(wait_before_next_round(1_000, None, period), period);
    }

    #[test]
    fn every_ticks_on_multiples_of_its_interval() {
        let every = Schedule::parse("@every 1s").unwrap();
        assert_eq!(every.next_after(0), Some(1_000));
        assert_eq!(every.next_after(1_000), Some(2_000));
        assert_eq!(every.next_after(1_999), Some(2_000));
        assert!(matches!(
            Schedule::parse("@every 250ms"),
            Ok(Schedule::Every(250))
        ));
        assert!(matches!(
            Schedule::parse("@every 2h"),
            Ok(Schedule::Every(7_200_000))
        ));
    }

    #[test]
    fn cron_and_nicknames_are_in_utc() {
        let every_five = Schedule::parse("*/5 * * * *").unwrap();
        // 2026-01-01T00:03:00Z → 00:05.
        let start = 1_767_225_600_000 + 3 * MINUTE;
        assert_eq!(
            every_five.next_after(start),
            Some(1_767_225_600_000 + 5 * MINUTE)
        );
        let hourly = Schedule::parse("@hourly").unwrap();
        assert_eq!(
            hourly.next_after(start),
            Some(1_767_225_600_000 + 60 * MINUTE)
        );
        let daily = Schedule::parse("@daily").unwrap();
        assert_eq!(
            daily.next_after(start),
            Some(1_767_225_600_000 + 24 * 60 * MINUTE)
        );
    }

    #[test]
    fn bad_schedules_say_what_is_accepted() {
        for (spec, expected) in [
            ("@every", "not a duration"),
            ("@every 5 parsecs", "not a unit of duration"),
            ("@every 10ms", "at least 100 ms"),
            ("61 * * * *", "5-field cron"),
            ("* * * * * *", "has 5 fields"),
            ("sometimes", "5-field cron"),
        ] {
            let error = Schedule::parse(spec).unwrap_err();
            assert!(error.contains(expected), "{spec}: {error}");
        }
    }

    #[test]
    fn the_latest_due_tick_runs_once_or_is_skipped_when_missed() {
        let every = Schedule::parse("@every 1s").unwrap();
        let run_once = Missed::RunOnce;
        assert_eq!(
            due(&every, 500, None, 900, run_once, 2_000),
            Due::Wait { at: 1_000 }
        );
        assert_eq!(
            due(&every, 500, None, 1_010, run_once, 2_000),
            Due::Run { tick: 1_000 }
        );
        assert_eq!(
            due(&every, 500, Some(1_000), 1_500, run_once, 2_000),
            Due::Wait { at: 2_000 }
        );
        // No leader from 1.5 s to 10.2 s: the ticks 2..10 s run once, as 10 s.
        assert_eq!(
            due(&every, 500, Some(1_000), 10_200, run_once, 2_000),
            Due::Run { tick: 10_000 }
        );
        assert_eq!(
            due(&every, 500, Some(1_000), 10_200, Missed::Skip, 100),
            Due::Skip { tick: 10_000 }
        );
        // On time, a skipping script runs.
        assert_eq!(
            due(&every, 500, Some(1_000), 2_050, Missed::Skip, 100),
            Due::Run { tick: 2_000 }
        );
    }

    /// Property tests: any schedule text is parsed or refused, and a parsed schedule fires
    /// when its fields say.
    mod properties {
        use super::*;
        use chrono::{Datelike, Timelike};
        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::sample::select;

        /// 2000-01-01 to 2100-01-01, in ms.
        const YEAR_2000_MS: u64 = 946_684_800_000;
        const YEAR_2100_MS: u64 = 4_102_444_800_000;

        /// Cron-like text: five or so fields of the pieces cron knows, and some it does not.
        fn cron_ish() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                select(
                    &[
                        "*", "*/5", "1-5", "1,3", "0", "59", "60", "L", "5L", "W", "15W", "1#2",
                        "?", "MON", "JAN-MAR", "SUN-SAT", "-", "/", ",", "x", "*/0", "7"
                    ][..]
                )
                .prop_map(str::to_string),
                (0..100u32).prop_map(|number| number.to_string()),
            ];
            let field = vec(piece, 1..3).prop_map(|pieces| pieces.concat());
            prop_oneof![
                vec(field, 4..7).prop_map(|fields| fields.join(" ")),
                select(
                    &[
                        "@hourly",
                        "@daily",
                        "@weekly",
                        "@monthly",
                        "@yearly",
                        "@annually",
                        "@reboot",
                        "@every",
                        "@every 0s",
                        "@every 99ms",
                        "@every 1x"
                    ][..]
                )
                .prop_map(str::to_string),
                "@every [0-9]{1,22} ?(ms|s|m|h|d|y)?",
                ".{0,30}",
            ]
        }

        /// The time at `ms` since the epoch.
        fn at(ms: u64) -> DateTime<Utc> {
            DateTime::<Utc>::from_timestamp_millis(ms as i64).expect("a time in range")
        }

        proptest! {
            /// Goal: any schedule text is parsed or refused with a message that quotes it,
            /// never panics; a parsed one gives a next tick after any time (or none), soon.
            #[test]
            fn any_text_is_a_schedule_or_refused(
                spec in cron_ish(),
                now_ms in YEAR_2000_MS..YEAR_2100_MS,
            ) {
                match Schedule::parse(&spec) {
                    Ok(schedule) => {
                        if let Some(next) = schedule.next_after(now_ms) {
                            prop_assert!(next > now_ms, "{} after {}: {}", spec, now_ms, next);
                        }
                    }
                    Err(error) => prop_assert!(error.contains(spec.trim()), "{}", error),
                }
            }

            /// Goal: a cron expression fires at the first minute after now that matches its
            /// fields. Method: fixed or `*` minute, hour, day of month (1 to 28) and month;
            /// the tick matches them, and no minute between now and it does (checked minute
            /// by minute when only the minute and hour are fixed: at most a day).
            #[test]
            fn a_cron_expression_fires_at_its_fields(
                minute in prop::option::of(0..60u32),
                hour in prop::option::of(0..24u32),
                day in prop::option::of(1..29u32),
                month in prop::option::of(1..13u32),
                now_ms in YEAR_2000_MS..YEAR_2100_MS,
            ) {
                let field = |value: Option<u32>| value.map_or("*".to_string(), |v| v.to_string());
                let spec = format!("{} {} {} {} *", field(minute), field(hour), field(day), field(month));
                let schedule = Schedule::parse(&spec).expect("a valid expression");
                let next = schedule.next_after(now_ms).expect("a next tick");
                prop_assert!(next > now_ms);
                prop_assert!(next - now_ms <= 366 * 86_400_000, "{}: {} after {}", spec, next, now_ms);
                let tick = at(next);
                let matches = |time: DateTime<Utc>| {
                    time.second() == 0
                        && time.timestamp_subsec_millis() == 0
                        && minute.is_none_or(|m| time.minute() == m)
                        && hour.is_none_or(|h| time.hour() == h)
                        && day.is_none_or(|d| time.day() == d)
                        && month.is_none_or(|m| time.month() == m)
                };
                prop_assert!(matches(tick), "{}: {}", spec, tick);
                if day.is_none() && month.is_none() {
                    let mut minute_ms = (now_ms / 60_000 + 1) * 60_000;
                    while minute_ms < next {
                        prop_assert!(!matches(at(minute_ms)), "{}: {} matches before {}", spec, at(minute_ms), tick);
                        minute_ms += 60_000;
                    }
                }
            }

            /// Goal: `@every` ticks on the multiples of its interval, and the scheduler runs
            /// the latest tick that is due, once. Method: any interval, creation time and
            /// last claim; `due` at any later time.
            #[test]
            fn every_runs_the_latest_due_multiple(
                interval_ms in EVERY_MIN_MS..100_000,
                created_ms in 0..10_000_000u64,
                claimed in prop::option::of(0..1_000u64),
                elapsed_ms in 0..10_000_000u64,
            ) {
                let spec = format!("@every {interval_ms}ms");
                let schedule = Schedule::parse(&spec).expect("a valid interval");
                let last = claimed.map(|ticks| (created_ms / interval_ms + ticks) * interval_ms);
                let from = last.unwrap_or(created_ms);
                let now_ms = from + elapsed_ms;
                let next = (from / interval_ms + 1) * interval_ms;
                prop_assert_eq!(schedule.next_after(from), Some(next));
                let latest = now_ms / interval_ms * interval_ms;
                let expected = if next > now_ms {
                    Due::Wait { at: next }
                } else if (latest - next) / interval_ms > TICKS_SCANNED_MAX as u64 {
                    // Past the scan limit the scheduler takes the last tick it reached.
                    Due::Run { tick: next + TICKS_SCANNED_MAX as u64 * interval_ms }
                } else {
                    Due::Run { tick: latest }
                };
                prop_assert_eq!(due(&schedule, created_ms, last, now_ms, Missed::RunOnce, u64::MAX), expected);
            }
        }
    }
}
