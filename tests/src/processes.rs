//! Real `starling` processes: start, `SIGKILL`, restart, and the command line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::{free_address, wait_for};

/// The `starling` binary built from the workspace these tests belong to.
///
/// `STARLING_BIN` names a binary to use instead. Otherwise the first call in a test process
/// runs `cargo test --workspace --no-run` on this workspace, in the test executable's target
/// directory and profile: a no-op after `cargo test --workspace` (the README's test command,
/// which builds the binary first), and the guarantee that `cargo test -p starling-tests` never
/// runs a stale binary. It is that command and not `cargo build -p starling` because cargo
/// resolves dependency features by the packages and targets a command selects: `build -p
/// starling` would build the runtime and its dependencies a second time, beside the test
/// build, in another feature set (gigabytes of disk on a CI machine).
pub fn starling_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("STARLING_BIN") {
        return Ok(PathBuf::from(path));
    }
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| build_current_binary().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(|error| anyhow!("{error}"))
}

/// A cluster of member processes under one temporary directory.
pub struct ProcessCluster {
    /// Holds the members' data directories, their logs and the client's configuration.
    root: tempfile::TempDir,
    /// The `starling` binary the processes run ([`starling_binary`]).
    binary: PathBuf,
    /// Child process of member `i` (`m{i+1}`), `None` while it is down.
    children: Vec<Option<Child>>,
    /// Where members run; `None`: in this network namespace, on loopback.
    placement: Option<Arc<dyn MemberPlacement>>,
    /// Async worker threads each member runs (`daemon --workers`); `None`: the default.
    workers: Option<usize>,
}

/// Where member processes run when not on loopback beside the harness: the chaos harness
/// puts each in a network namespace of its own (`chaos::netns`).
pub trait MemberPlacement: Send + Sync {
    /// The IP address member `index` listens on (made ready for it if need be).
    fn ip(&self, index: usize) -> Result<String>;
    /// The command that runs `program` as member `index` (`ip netns exec NS program`).
    fn command(&self, index: usize, program: &Path) -> Result<Command>;
}

/// The port every member listens on when it has an IP address of its own (each namespace is
/// empty, so any port is free there).
pub const PLACED_MEMBER_PORT: u16 = 7443;

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The test harness shows what a test printed only when it fails: then the members'
        // last warnings say what went wrong inside them (their logs go with the directory).
        // The chaos harness (a placed cluster) copies whole logs instead.
        if self.placement.is_some() {
            return;
        }
        for index in 0..self.children.len() {
            let log = self.log(index);
            let warnings: Vec<&str> = log
                .lines()
                .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
                .collect();
            let shown = &warnings[warnings.len().saturating_sub(LOG_WARNINGS_SHOWN)..];
            if !shown.is_empty() {
                println!("--- m{}: last warnings of {}", index + 1, warnings.len());
                for line in shown {
                    println!("{line}");
                }
            }
        }
    }
}

/// How many of a member's last warnings a dropped [`ProcessCluster`] prints.
const LOG_WARNINGS_SHOWN: usize = 12;

impl ProcessCluster {
    /// An empty cluster (no member yet).
    pub fn new() -> Result<ProcessCluster> {
        Ok(ProcessCluster {
            root: tempfile::tempdir()?,
            binary: starling_binary()?,
            children: Vec::new(),
            placement: None,
            workers: None,
        })
    }

    /// The same cluster whose members run `workers` async worker threads each.
    pub fn with_workers(mut self, workers: usize) -> ProcessCluster {
        self.workers = Some(workers);
        self
    }

    /// An empty cluster of `binary`'s members, which run where `placement` puts them. Its
    /// drop prints nothing (the chaos harness keeps the logs whole instead).
    pub fn with_placement(
        binary: PathBuf,
        placement: Arc<dyn MemberPlacement>,
    ) -> Result<ProcessCluster> {
        Ok(ProcessCluster {
            root: tempfile::tempdir()?,
            binary,
            children: Vec::new(),
            placement: Some(placement),
            workers: None,
        })
    }

    /// The directory holding the members' data directories (`m1`, ...) and logs (`m1.log`).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The address a new member `index` listens on.
    fn listen_address(&self, index: usize) -> Result<String> {
        match &self.placement {
            Some(placement) => Ok(format!("{}:{PLACED_MEMBER_PORT}", placement.ip(index)?)),
            None => Ok(free_address()),
        }
    }

    /// The `starling` binary the cluster runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Data directory of member `index`.
    pub fn dir(&self, index: usize) -> PathBuf {
        self.root.path().join(format!("m{}", index + 1))
    }

    /// `starling --dir <member index> args...`, with this cluster's client configuration.
    fn cli_command(&self, index: usize, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("--dir")
            .arg(self.dir(index))
            .args(args)
            .env("STARLING_CONFIG_DIR", self.config_dir())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        command
    }

    /// Runs `starling --dir <member index> args...` and returns its output.
    pub fn cli(&self, index: usize, args: &[&str]) -> Result<Output> {
        self.cli_command(index, args)
            .output()
            .with_context(|| format!("running starling {args:?}"))
    }

    /// Starts `starling --dir <member index> args...` with its stdout and stderr piped, for a
    /// test that reads its output as it comes.
    pub fn spawn_cli(&self, index: usize, args: &[&str]) -> Result<Child> {
        self.cli_command(index, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting starling {args:?}"))
    }

    /// Starts `starling --dir <member index> args...` on a pseudo-terminal, as an operator
    /// at a terminal runs it.
    pub fn cli_on_terminal(
        &self,
        index: usize,
        args: &[&str],
    ) -> Result<crate::terminal::Terminal> {
        crate::terminal::Terminal::spawn(self.cli_command(index, args))
    }

    /// Where the CLI run by [`ProcessCluster::cli`] keeps its client certificate and remotes.
    pub fn config_dir(&self) -> PathBuf {
        self.root.path().join("client")
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn cli_ok(&self, index: usize, args: &[&str]) -> Result<String> {
        let output = self.cli(index, args)?;
        if !output.status.success() {
            bail!(
                "starling {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `starling --dir <member index> args...` with `input` on its stdin; returns its
    /// stdout.
    pub fn cli_with_stdin(&self, index: usize, args: &[&str], input: &str) -> Result<String> {
        let mut child = self
            .cli_command(index, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting starling {args:?}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            std::io::Write::write_all(&mut stdin, input.as_bytes())?;
        }
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "starling {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs Lua through member `index` (`starling exec`) and reads its JSON answer.
    pub fn lua(&self, index: usize, code: &str) -> Result<serde_json::Value> {
        let out = self.cli_ok(index, &["exec", code])?;
        serde_json::from_str(out.trim()).with_context(|| format!("the answer to {code}: {out}"))
    }

    /// Runs a CLI command that must fail, and not by a panic; returns its stderr.
    pub fn cli_fails(&self, index: usize, args: &[&str]) -> Result<String> {
        let output = self.cli(index, args)?;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if output.status.success() {
            bail!(
                "starling {args:?} succeeded but should have failed: {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        if stderr.contains("panicked") {
            bail!("starling {args:?} panicked: {stderr}");
        }
        Ok(stderr)
    }

    /// `cluster info --format json` through member `index`.
    pub fn info(&self, index: usize) -> Result<Value> {
        Ok(serde_json::from_str(&self.cli_ok(
            index,
            &["cluster", "info", "--format", "json"],
        )?)?)
    }

    /// The address member `index` listens on, from its `member.json`.
    pub fn address(&self, index: usize) -> Result<String> {
        let path = self.dir(index).join("member.json");
        let file: Value = serde_json::from_str(
            &std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?;
        file["address"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{} has no address", path.display()))
    }

    /// `cluster list --format json` through member `index`.
    pub fn members(&self, index: usize) -> Result<Value> {
        Ok(serde_json::from_str(&self.cli_ok(
            index,
            &["cluster", "list", "--format", "json"],
        )?)?)
    }

    fn spawn(&self, index: usize, args: &[&str]) -> Result<Child> {
        let dir = self.dir(index);
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))?;
        let mut command = match &self.placement {
            Some(placement) => placement.command(index, &self.binary)?,
            None => Command::new(&self.binary),
        };
        command.arg("--dir").arg(&dir).args(args);
        if let (Some(workers), Some(&"daemon")) = (self.workers, args.first()) {
            command.args(["--workers", &workers.to_string()]);
        }
        command
            // Plain log lines, so that tests can search them.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting a member process")
    }

    /// Waits until member `index` answers.
    pub fn wait_ready(&self, index: usize) -> Result<()> {
        self.cli_ok(index, &["waitready", "--timeout", "30"])
            .map(|_| ())
    }

    /// Bootstraps `m1` and joins members up to `count`.
    pub async fn start(count: usize) -> Result<ProcessCluster> {
        ProcessCluster::new()?.started(count)
    }

    /// Bootstraps `m1` and joins members up to `count` in this (empty) cluster.
    pub fn started(mut self, count: usize) -> Result<ProcessCluster> {
        let listen = self.listen_address(0)?;
        let child = self.spawn(
            0,
            &["daemon", "--name", "m1", "--listen", &listen, "--bootstrap"],
        )?;
        self.children.push(Some(child));
        self.wait_ready(0)?;
        for index in 1..count {
            self.join(index)?;
        }
        Ok(self)
    }

    /// Starts member `index` as a background daemon joining with `token`, without waiting for
    /// it to answer (the caller waits, with its own deadline).
    pub fn spawn_join(&mut self, index: usize, token: &str) -> Result<()> {
        let name = format!("m{}", index + 1);
        let listen = self.listen_address(index)?;
        let args = [
            "daemon", "--name", &name, "--listen", &listen, "--join", token,
        ];
        let child = self.spawn(index, &args)?;
        if self.children.len() <= index {
            self.children.resize_with(index + 1, || None);
        }
        self.children[index] = Some(child);
        Ok(())
    }

    /// The process id of member `index`, if this cluster started it and it has not exited.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.children.get(index)?.as_ref().map(Child::id)
    }

    /// CPU time (user and system) process `pid` has used so far.
    pub fn cpu_time(pid: u32) -> Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command (in parentheses, which may hold spaces): utime and stime
        // are the 12th and 13th after it, in clock ticks.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        let fields: Vec<u64> = after
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|field| field.parse().ok())
            .collect();
        anyhow::ensure!(fields.len() == 2, "unreadable /proc/{pid}/stat: {stat}");
        // SAFETY: sysconf takes an integer and returns one.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok(Duration::from_millis(
            (fields[0] + fields[1]) * 1000 / ticks,
        ))
    }

    /// Whether member `index` has a process this cluster started and has not seen exit.
    pub fn is_running(&mut self, index: usize) -> bool {
        let Some(Some(child)) = self.children.get_mut(index) else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(_)) | Err(_) => {
                self.children[index] = None;
                false
            }
        }
    }

    /// Waits up to `timeout` for member `index` to exit by itself (a removed member does);
    /// answers whether it did.
    pub fn reap(&mut self, index: usize, timeout: Duration) -> Result<bool> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if !self.is_running(index) {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(!self.is_running(index))
    }

    /// Joins member `index` with a fresh token from `m1` (or the first running member).
    pub fn join(&mut self, index: usize) -> Result<()> {
        let via = self
            .children
            .iter()
            .position(Option::is_some)
            .ok_or_else(|| anyhow!("no member runs"))?;
        self.join_via(index, via)
    }

    /// Joins member `index` with a fresh token from member `via`.
    pub fn join_via(&mut self, index: usize, via: usize) -> Result<()> {
        let args = self.join_arguments(index, via, &[])?;
        self.start_joined(index, &args)
    }

    /// `daemon --name mN --listen ADDRESS --join TOKEN EXTRA...`, with a token from `via`.
    fn join_arguments(&self, index: usize, via: usize, extra: &[&str]) -> Result<Vec<String>> {
        let name = format!("m{}", index + 1);
        let token = self
            .cli_ok(via, &["cluster", "add", &name])?
            .trim()
            .to_string();
        let mut args: Vec<String> = [
            "daemon",
            "--name",
            &name,
            "--listen",
            &self.listen_address(index)?,
            "--join",
            &token,
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|arg| arg.to_string()));
        Ok(args)
    }

    /// Tries to join member `index` in the foreground with `extra` daemon arguments; returns
    /// the output of a refused join (the daemon exits), or kills and reports a running one.
    pub fn try_join(&mut self, index: usize, extra: &[&str]) -> Result<Output> {
        let args = self.join_arguments(index, 0, extra)?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = self.spawn_cli(index, &args)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while child.try_wait()?.is_none() {
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                bail!("the join of m{} neither failed nor was stopped", index + 1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(child.wait_with_output()?)
    }

    /// Joins member `index` as a background daemon with `extra` daemon arguments.
    pub fn join_with(&mut self, index: usize, extra: &[&str]) -> Result<()> {
        let args = self.join_arguments(index, 0, extra)?;
        self.start_joined(index, &args)
    }

    /// Starts member `index` with `args` and waits until it answers.
    fn start_joined(&mut self, index: usize, args: &[String]) -> Result<()> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = self.spawn(index, &args)?;
        if self.children.len() <= index {
            self.children.resize_with(index + 1, || None);
        }
        self.children[index] = Some(child);
        self.wait_ready(index)
    }

    /// `SIGKILL`s member `index`.
    pub fn kill(&mut self, index: usize) -> Result<()> {
        if let Some(mut child) = self.children.get_mut(index).and_then(Option::take) {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Sends `signal` (a name `kill` knows: `STOP`, `CONT`, ...) to member `index`.
    pub fn signal(&self, index: usize, signal: &str) -> Result<()> {
        let child = self
            .children
            .get(index)
            .and_then(Option::as_ref)
            .ok_or_else(|| anyhow!("member {index} is not running"))?;
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -{signal} failed");
        }
        Ok(())
    }

    /// Sends `SIGTERM` to member `index` and waits (up to `timeout`) for it to exit.
    pub fn terminate(
        &mut self,
        index: usize,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus> {
        let mut child = self.children[index]
            .take()
            .ok_or_else(|| anyhow!("member {index} is not running"))?;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                bail!("member {index} did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restarts member `index` from its data directory.
    pub fn restart(&mut self, index: usize) -> Result<()> {
        let child = self.spawn(index, &["daemon"])?;
        if self.children.len() <= index {
            self.children.resize_with(index + 1, || None);
        }
        self.children[index] = Some(child);
        Ok(())
    }

    /// Index of the member that is leader, asked through member `via`.
    pub async fn leader(&self, via: usize) -> Result<usize> {
        wait_for("a leader", Duration::from_secs(20), || async {
            let members = self.members(via).ok()?;
            let leader = crate::with_role(&members, "database-leader")
                .into_iter()
                .next()?;
            leader
                .trim_start_matches('m')
                .parse::<usize>()
                .ok()
                .map(|number| number - 1)
        })
        .await
    }

    /// Waits until, through member `via`, there are `voters` voters and `standbys` stand-bys
    /// and no membership change is under way.
    pub async fn wait_roles(&self, via: usize, voters: usize, standbys: usize) -> Result<Value> {
        let what = format!("{voters} voters and {standbys} stand-bys");
        wait_for(&what, Duration::from_secs(30), || async {
            let members = self.members(via).ok()?;
            let info: Value =
                serde_json::from_str(&self.cli_ok(via, &["exec", "return cluster.info()"]).ok()?)
                    .ok()?;
            let settled = crate::with_role(&members, "database").len() == voters
                && crate::with_role(&members, "database-standby").len() == standbys
                && info["roles_settled"] == true;
            settled.then_some(members)
        })
        .await
    }

    /// The log of member `index` (for failure messages).
    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(self.dir(index).with_extension("log")).unwrap_or_default()
    }
}

/// Builds `starling` from this workspace (see [`starling_binary`]).
fn build_current_binary() -> Result<PathBuf> {
    let plan = BuildPlan::new()?;
    tracing::info!(
        workspace = %plan.workspace.display(),
        "building the starling binary of this workspace: cargo test --workspace --no-run"
    );
    plan.build()
}

/// How to build `starling` the way `cargo test --workspace` does, for this workspace.
struct BuildPlan {
    /// The cargo that runs the tests.
    cargo: std::ffi::OsString,
    /// The workspace these tests belong to.
    workspace: PathBuf,
    /// The test executable's target directory.
    target_dir: PathBuf,
    /// The test executable's profile (`cargo test` builds the test and dev profiles in `debug`).
    profile: String,
}

impl BuildPlan {
    fn new() -> Result<BuildPlan> {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or_else(|| anyhow!("the tests crate has no parent directory"))?
            .to_path_buf();
        // Test executables live in <target>/<profile directory>/deps.
        let test_executable = std::env::current_exe()?;
        let profile_dir = test_executable
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| anyhow!("unexpected test path {}", test_executable.display()))?;
        let build_dir = profile_dir
            .parent()
            .ok_or_else(|| anyhow!("unexpected test path {}", test_executable.display()))?
            .to_path_buf();
        let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(other) => other.to_string(),
        };
        Ok(BuildPlan {
            cargo: std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into()),
            workspace,
            target_dir: build_dir,
            profile,
        })
    }

    /// `cargo` in this workspace, without the variables cargo set for the test process:
    /// build scripts rerun when those change (ring's does on `CARGO_MANIFEST_DIR`), and a
    /// dependency built again here would be built again by the next ordinary build.
    fn cargo(&self) -> Command {
        let mut command = Command::new(&self.cargo);
        command.current_dir(&self.workspace).stdin(Stdio::null());
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let set_for_tests = [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_BIN_",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ];
            if set_for_tests.iter().any(|prefix| name.starts_with(prefix)) {
                command.env_remove(name.as_ref());
            }
        }
        command
    }

    /// Runs `cargo test --workspace --no-run`; returns where the `starling` binary is.
    fn build(&self) -> Result<PathBuf> {
        let mut command = self.cargo();
        command.args(["test", "--workspace", "--no-run"]);
        // `cargo test` builds tests in the test profile and binaries in dev by default;
        // naming dev would put the tests in dev too, another set of units.
        match self.profile.as_str() {
            "dev" => {}
            "release" => {
                command.arg("--release");
            }
            other => {
                command.args(["--profile", other]);
            }
        }
        command
            .arg("--target-dir")
            .arg(&self.target_dir)
            .args(["--message-format", "json-render-diagnostics"]);
        let output = command
            .output()
            .context("running cargo test --workspace --no-run")?;
        if !output.status.success() {
            bail!(
                "cargo test --workspace --no-run failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let executable = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|message| {
                message["reason"] == "compiler-artifact"
                    && message["target"]["name"] == "starling"
                    && message["target"]["kind"][0] == "bin"
                    && message["profile"]["test"] == false
            })
            .find_map(|message| message["executable"].as_str().map(PathBuf::from))
            .ok_or_else(|| {
                anyhow!("cargo test --workspace --no-run reported no starling executable")
            })?;
        Ok(executable)
    }
}
