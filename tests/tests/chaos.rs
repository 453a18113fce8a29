//! The chaos harness on a short fixed-seed run: real member processes in network namespaces,
//! killed, paused, partitioned, joined and removed while clients record a history; the run
//! must find no violation. `.ci/run` runs the `starling-chaos` binary for longer; the long run
//! is `starling-chaos --time 30m --seed N` (README).
//!
//! Needs root, `ip` and `iptables`, as the partition tests do.

use std::time::{Duration, Instant};

use anyhow::Result;
use starling_tests::chaos::history::{Answer, Call, History, Outcome};
use starling_tests::chaos::{self, Options};
use starling_tests::init_tracing;
use starling_tests::processes::starling_binary;

/// Seeds that found a real bug, each with what it found; every one runs again here (for
/// [`RUN_TIME`]: a long run's fault at minute 20 is not replayed by a short one, so each bug
/// also has a test of its own, named here).
const REGRESSION_SEEDS: &[(u64, &str)] = &[
    (
        7,
        "30 m: an instance lost by two moves at once, a former leader's and its successor's \
         (moves::a_rival_moves_clean_up_never_removes_the_copy_a_move_records); a repeated \
         launch that left the instance Creating (instances: resume_create); a leader killed \
         between making a container and reporting it, its record left Creating \
         (instances::a_create_cut_short_by_its_members_death_is_recorded_as_it_is)",
    ),
    (
        3,
        "15 m: the same lost move; a second pack of a moving instance rewrote the tarball a \
         send had open (transfer::a_second_pack_leaves_a_send_of_the_first_whole)",
    ),
    (
        12,
        "30 m: a member config key read back at an older value: a set of another key carried \
         the whole map as the leader had read it (members::concurrent_changes_of_one_member_\
         all_land, instances::concurrent_sets_of_one_instance_all_land)",
    ),
];

/// How long each run injects faults.
const RUN_TIME: Duration = Duration::from_secs(30);

/// Goal: under every kind of fault the harness has, registers stay linearizable, no
/// acknowledged add is lost, no increment applies twice, the cluster recovers within the
/// bound and its roles settle. Method: a 30 s run with seed 1, then the regression seeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_chaos_run_finds_no_violation() -> Result<()> {
    init_tracing();
    let starling = starling_binary()?;
    let seeds = std::iter::once(1).chain(REGRESSION_SEEDS.iter().map(|(seed, _)| *seed));
    for seed in seeds {
        tracing::info!(seed, "--- chaos run");
        let report = chaos::run(Options {
            time: RUN_TIME,
            seed,
            members: 5,
            keep: None,
            starling: starling.clone(),
        })
        .await?;
        let summary = report.summary().join("\n");
        println!("seed {seed}\n{summary}");
        assert!(report.violations.is_empty(), "seed {seed}:\n{summary}");
        // A run that checked nothing proves nothing.
        assert!(report.ok > 100, "too few operations succeeded:\n{summary}");
        assert!(report.fault_count() >= 3, "too few faults:\n{summary}");
        assert!(
            report.registers.entries > 0 && report.set.acknowledged > 0,
            "{summary}"
        );
        assert!(report.faults.final_recovery.is_some(), "{summary}");
    }
    Ok(())
}

/// Goal: the `starling-chaos` binary exits non-zero on a violation, its last line counting
/// them, and zero on a clean history (the contract CI and the README's long run rely on).
/// Method: two kept histories checked with `--check`: a write of 1 then a read of 1 (clean),
/// and a write of 1 then a read of 2, a value nobody wrote (not linearizable).
#[test]
fn the_harness_binary_exits_non_zero_on_a_violation() -> Result<()> {
    let binary = env!("CARGO_BIN_EXE_starling-chaos");
    for (read, code, last) in [(1, 0, "0 violations"), (2, 1, "1 violations")] {
        let dir = tempfile::tempdir()?;
        let history = History::new(Instant::now());
        let key = "r1".to_string();
        let write = history.invoke(
            0,
            "m1",
            Call::Write {
                key: key.clone(),
                value: 1,
            },
        );
        history.complete(
            write,
            Outcome::Ok {
                answer: Answer::Done,
            },
        );
        let read_id = history.invoke(1, "m2", Call::Read { key });
        history.complete(
            read_id,
            Outcome::Ok {
                answer: Answer::Value(Some(read)),
            },
        );
        history.write_json_lines(&dir.path().join("history.jsonl"))?;
        std::fs::write(
            dir.path().join("final.json"),
            r#"{"seed": 0, "elements": [], "counter": 0}"#,
        )?;
        let output = std::process::Command::new(binary)
            .arg("--check")
            .arg(dir.path())
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let printed = stdout.lines().last().unwrap_or_default();
        assert_eq!(output.status.code(), Some(code), "read {read}: {stdout}");
        assert!(
            printed.ends_with(last),
            "read {read}: last line {printed:?}"
        );
    }
    Ok(())
}
