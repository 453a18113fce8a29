//! `starling`: the daemon, the command line and the REPL in one binary.
//!
//! Every subcommand is a thin layer over [`starling_runtime::Operation`]s sent through a
//! [`starling_runtime::Client`]; the daemon is [`starling_runtime::Member`].
//!
//! # Layout
//! - `main.rs`: arguments and dispatch.
//! - `format.rs`: table, json, yaml and csv output.
//! - `image.rs`, `profile.rs`, `project.rs`: `starling image|profile|project ...`, as lxc's.
//! - `keys.rs`: `KEY=VALUE` arguments, with `-` for a value read from stdin.
//! - `console.rs`: the REPL.
//! - `demo.rs`: the first-time local cluster.
//! - `bench.rs`: the write/read benchmark.
//! - `failover.rs`: the failover benchmark.
//! - `bench_instances.rs`: launch and exec latency with real containers.

/// mimalloc instead of glibc's allocator: a member's write path allocates and frees many small
/// buffers across threads, where glibc's spent 10 % of the leader's CPU at 64 writers (`perf`).
/// Counted per thread: placement scriptlets are bounded by what their thread allocates.
#[global_allocator]
static ALLOCATOR: starling_runtime::counting_alloc::Counting<mimalloc::MiMalloc> =
    starling_runtime::counting_alloc::Counting(mimalloc::MiMalloc);

mod bench;
mod bench_evacuation;
mod bench_images;
mod bench_instances;
mod bench_placement;
mod console;
mod demo;
mod evacuate;
mod failover;
mod format;
mod group;
mod image;
mod instance;
mod keys;
mod monitor;
mod placement;
mod profile;
mod project;
mod stored;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::Value;
use starling_runtime::{Client, Member, MemberConfig, Operation, RaftTimings, StartMode};
use starling_store::member_config::Answer;

use crate::format::{Column, Format};
use starling_runtime::instances::ops::InstanceOperation;

/// Starling: a clustering control plane driven by scripts.
#[derive(Parser)]
#[command(name = "starling", version, about)]
struct Cli {
    /// Data directory of the local member to talk to.
    #[arg(long, global = true, env = "STARLING_DIR")]
    dir: Option<PathBuf>,
    /// Talk to a remote member at HOST:PORT (added before with `starling remote add`).
    #[arg(long, global = true)]
    remote: Option<String>,
    /// Where the client keeps its certificate and remotes.
    #[arg(long, global = true, env = "STARLING_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// The project (instances, profiles).
    #[arg(long, global = true, default_value = "default")]
    project: String,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "table")]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a member: bootstrap a cluster, join one, or restart from --dir.
    Daemon(DaemonArgs),
    /// Waits until the member serves requests.
    Waitready {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Cluster members and join tokens.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Global configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Trusted client certificates and their tokens (as `lxc config trust`).
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Images: import, list, show, delete, aliases (as `lxc image`).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Where a new instance would go and why (`explain`), or with a scriptlet not installed
    /// (`test`); creates nothing.
    #[command(subcommand)]
    Placement(placement::PlacementCommand),
    /// Scripts stored in the cluster database, run when asked or on a schedule.
    #[command(subcommand)]
    Script(stored::ScriptCommand),
    /// Profiles of the project of --project (as `lxc profile`).
    #[command(subcommand)]
    Profile(profile::ProfileCommand),
    /// Projects (as `lxc project`).
    #[command(subcommand)]
    Project(project::ProjectCommand),
    /// Remotes this client can reach.
    #[command(subcommand)]
    Remote(RemoteCommand),
    /// Runs Lua code on the member and prints its result as JSON; or, as
    /// `exec INSTANCE -- COMMAND...`, runs a command in an instance and exits with its code.
    Exec {
        /// Lua source (or the instance, when a command follows `--`).
        code: String,
        /// The command to run in the instance, after `--`.
        #[arg(last = true)]
        command: Vec<String>,
    },
    #[command(flatten)]
    Instance(instance::InstanceCommand),
    /// Runs a Lua file on the member and prints its result as JSON.
    Run {
        /// The file.
        file: PathBuf,
        /// Arguments after `--`: the script's `arg[1]`, `arg[2]`... (`arg[0]` is the file's
        /// name).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Shows the cluster's events as they happen, from every member (as `lxc monitor`):
    /// `--format pretty` (the default: a line each), `json` (an object per line) or `yaml`.
    Monitor {
        /// Only events of this type: lifecycle, logging, operation (may be repeated).
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
    },
    /// Opens the interactive Lua REPL on the member.
    Repl,
    /// Starts a local 3-member cluster under one directory and opens the REPL on it.
    Demo {
        /// Number of members.
        #[arg(long, default_value_t = 3)]
        members: usize,
    },
    /// Measures write and read latency on a 3-member cluster of real processes.
    Bench(bench::BenchArgs),
    /// Measures failover: leader kill to next write, voter kill to Offline and to promotion.
    BenchFailover(failover::FailoverArgs),
    /// Measures an image import and its copies to the other members, against the floor of an
    /// export over the same transport.
    BenchImages(bench_images::ImageBenchArgs),
    /// Measures one placement decision (built-in rule, and a 50-line scriptlet) at 50 and
    /// 1,000 members, in process.
    BenchPlacement(bench_placement::PlacementBenchArgs),
    /// Measures moves, evacuations and restores of real containers (needs root), beside
    /// stopping and starting the same instances in place.
    BenchEvacuation(bench_evacuation::EvacuationBenchArgs),
    /// Measures `launch` to Running and `exec NAME -- true` with real containers (needs root),
    /// beside the same command line running Lua and `true` on the host.
    BenchInstances(bench_instances::InstanceBenchArgs),
    /// Internal: the container driver's shim (a container's monitor, and `exec` into it), run
    /// by the daemon re-executing this binary. Not for people.
    #[command(name = "__shim", hide = true, subcommand)]
    Shim(ShimCommand),
}

/// The container driver's shim (`starling_runtime::instances::driver::shim`).
#[derive(Subcommand)]
enum ShimCommand {
    /// Starts a container and becomes its monitor.
    Start {
        /// The start configuration, as JSON.
        config: String,
    },
    /// Runs a command in a running container.
    Exec {
        /// The descriptor to report how the command ended on.
        #[arg(long)]
        report_fd: i32,
        /// The exec configuration, as JSON.
        config: String,
    },
    /// Forks an `exec` shim for each request on the socket (the member's exec server).
    ExecServer {
        /// The socket descriptor the daemon passed.
        #[arg(long)]
        socket_fd: i32,
    },
}

#[derive(clap::Args)]
struct DaemonArgs {
    /// Member name (bootstrap and join).
    #[arg(long)]
    name: Option<String>,
    /// Address to listen on, IP:PORT (bootstrap and join).
    #[arg(long)]
    listen: Option<String>,
    /// Create a new cluster.
    #[arg(long, conflicts_with = "join")]
    bootstrap: bool,
    /// Join a cluster with this token.
    #[arg(long)]
    join: Option<String>,
    /// Answer to a member-specific question when joining: ENTITY/NAME/KEY=VALUE
    /// (e.g. storage-pool/local/source=/dev/sdb). Repeatable.
    #[arg(long = "member-config", requires = "join")]
    member_config: Vec<String>,
    /// A YAML file with the answers when joining: `member_config: [{entity, name, key, value}]`.
    #[arg(long, requires = "join")]
    preseed: Option<PathBuf>,
    /// Most the Raft log's files may take on disk, in MiB (default 65536; its segments are
    /// preallocated 16 MiB at a time). A log that fills it takes the member out of service.
    #[arg(long)]
    db_map_mib: Option<usize>,
    /// Leave the host's cgroup migrations in the kernel's default mode. By default the daemon
    /// mounts a named cgroup hierarchy with `favordynmods` (Linux 6.0+), which spares every
    /// container start and `exec` a wait of up to ~20 ms, at the cost of slightly slower forks
    /// and exits host-wide (see ARCHITECTURE.md).
    #[arg(long)]
    no_favordynmods: bool,
    /// Threads that run the member's async work: the network, Raft, requests (default: one
    /// per logical CPU). Members sharing a machine run faster with fewer (see ARCHITECTURE.md,
    /// "Async workers"); the log writer, scripts and blocking I/O have threads of their own.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Lists members.
    List,
    /// Shows one member.
    Show {
        /// Member name.
        name: String,
    },
    /// Prints a join token for a new member (and nothing else).
    Add {
        /// Name the new member will have.
        name: String,
    },
    /// Lists outstanding join tokens.
    ListTokens,
    /// Shows the cluster database's status: leader, Raft term and indexes, database size.
    Info,
    /// On a stopped member: make it the only voter, when the majority is gone for good.
    RecoverFromQuorumLoss,
    /// Revokes the join token for a name.
    RevokeToken {
        /// The name the token was issued for.
        name: String,
    },
    /// Changes a member from YAML on stdin (the fields `cluster show` prints).
    Edit {
        /// Member name.
        name: String,
    },
    /// Sets a member config key: `set NAME KEY=VALUE` or `set NAME KEY VALUE`.
    Set {
        /// Member name.
        name: String,
        /// KEY=VALUE, or KEY.
        key: String,
        /// VALUE when given separately.
        value: Option<String>,
    },
    /// Unsets a member config key.
    Unset {
        /// Member name.
        name: String,
        /// The key.
        key: String,
    },
    /// Prints a member config key, or its description or failure_domain.
    Get {
        /// Member name.
        name: String,
        /// The key.
        key: String,
    },
    /// Adds or removes user roles (event-hub, ovn-chassis).
    #[command(subcommand)]
    Role(RoleCommand),
    /// Renames a member.
    Rename {
        /// Current name.
        name: String,
        /// New name.
        new_name: String,
    },
    /// Removes a member from the cluster.
    Remove {
        /// Member name.
        name: String,
        /// Remove an offline or broken member without its cooperation.
        #[arg(long)]
        force: bool,
    },
    /// Gives a member a vote now (at cluster.max_voters a voter gives its vote up).
    Promote {
        /// Member name.
        name: String,
        /// The voter that gives its vote up (default: the one the role planner would choose).
        #[arg(long)]
        replace: Option<String>,
    },
    /// A voter gives its vote to the best candidate and becomes a stand-by (or a spare).
    Demote {
        /// Member name.
        name: String,
    },
    /// Moves leadership to a voter (default: the most caught-up one).
    TransferLeader {
        /// Member name.
        name: Option<String>,
    },
    /// Evacuates a member for maintenance: its instances move to other members (or stop), and
    /// nothing new is placed on it until it is restored.
    Evacuate {
        /// Member name.
        name: String,
        /// auto, migrate, live-migrate or stop (default: each instance's cluster.evacuate).
        #[arg(long)]
        action: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Restores an evacuated member: instances that came from it move back, those it stopped
    /// start again.
    Restore {
        /// Member name.
        name: String,
        /// skip: only make the member usable again.
        #[arg(long)]
        action: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Shows a member's latest evacuation or restore.
    Evacuation {
        /// Member name.
        name: String,
    },
    /// Shows a member's live state, read from the member itself.
    State {
        /// Member name.
        name: String,
    },
    /// Cluster groups (as `lxc cluster group`).
    #[command(subcommand)]
    Group(group::GroupCommand),
}

#[derive(Subcommand)]
enum RoleCommand {
    /// Adds roles: `role add NAME ROLE[,ROLE]`.
    Add {
        /// Member name.
        name: String,
        /// Comma-separated roles.
        roles: String,
    },
    /// Removes roles: `role remove NAME ROLE[,ROLE]`.
    Remove {
        /// Member name.
        name: String,
        /// Comma-separated roles.
        roles: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Prints a key's effective value: `get KEY` (global) or `get INSTANCE KEY`.
    Get {
        /// KEY, or INSTANCE KEY.
        #[arg(num_args = 1..=2, required = true)]
        args: Vec<String>,
    },
    /// Sets a key. Global: `set KEY=VALUE` (one argument) or `set KEY VALUE`. An instance's:
    /// `set INSTANCE KEY=VALUE [KEY=VALUE...]` (the first argument is an instance name: no `=`
    /// and no `.`, which every global key has; every other argument has a `=`). A value of `-`
    /// is read from stdin (`cat f.star | starling config set instances.placement.scriptlet=-`).
    Set {
        /// KEY=VALUE; KEY VALUE; or INSTANCE KEY=VALUE...
        #[arg(num_args = 1.., required = true)]
        args: Vec<String>,
    },
    /// Unsets a key: `unset KEY` (global) or `unset INSTANCE KEY`.
    Unset {
        /// KEY, or INSTANCE KEY.
        #[arg(num_args = 1..=2, required = true)]
        args: Vec<String>,
    },
    /// Shows every global key, or an instance's config: `show [INSTANCE]`.
    Show {
        /// The instance.
        instance: Option<String>,
    },
}

/// What `config set ARGS...` means (see [`ConfigCommand::Set`]).
#[derive(Debug, PartialEq)]
enum ConfigTarget {
    /// A global key.
    Global(String, String),
    /// An instance's keys.
    Instance(String, Vec<(String, String)>),
}

fn config_target(args: &[String]) -> Result<ConfigTarget> {
    match args {
        [one] => match one.split_once('=') {
            Some((key, value)) => Ok(ConfigTarget::Global(key.to_string(), value.to_string())),
            None => bail!("give a value: `config set {one}=VALUE` or `config set {one} VALUE`"),
        },
        // Every global key has a `.` (`cluster.*`, `user.*`, `instances.*`) and no instance
        // name can (a host name): `config set user.eq a=b` stays global.
        [first, rest @ ..]
            if !first.contains(['=', '.']) && rest.iter().all(|arg| arg.contains('=')) =>
        {
            let pairs = rest
                .iter()
                .filter_map(|arg| arg.split_once('='))
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect();
            Ok(ConfigTarget::Instance(first.clone(), pairs))
        }
        [key, value] => Ok(ConfigTarget::Global(key.clone(), value.clone())),
        _ => bail!("`config set` takes KEY=VALUE, KEY VALUE, or INSTANCE KEY=VALUE [KEY=VALUE...]"),
    }
}

#[derive(Subcommand)]
enum TrustCommand {
    /// Prints a token that lets a remote client become trusted.
    Add {
        /// A name for the client.
        name: String,
    },
    /// Lists trusted client certificates.
    List,
    /// Stops trusting a client certificate (by name or fingerprint).
    Remove {
        /// The client's name, or its fingerprint (at least 12 hex digits).
        name: String,
    },
    /// Lists outstanding trust tokens.
    ListTokens,
    /// Revokes the trust token for a name.
    RevokeToken {
        /// The name the token was issued for.
        name: String,
    },
}

#[derive(Subcommand)]
enum RemoteCommand {
    /// Makes this client trusted by the member at ADDRESS, using a token from `trust add`.
    Add {
        /// HOST:PORT of a member.
        address: String,
        /// The trust token.
        token: String,
    },
}

const MEMBER_COLUMNS: &[Column] = &[
    Column {
        header: "NAME",
        field: "server_name",
    },
    Column {
        header: "URL",
        field: "url",
    },
    Column {
        header: "ROLES",
        field: "roles",
    },
    Column {
        header: "ARCHITECTURE",
        field: "architecture",
    },
    Column {
        header: "FAILURE DOMAIN",
        field: "failure_domain",
    },
    Column {
        header: "DESCRIPTION",
        field: "description",
    },
    Column {
        header: "STATUS",
        field: "status",
    },
    Column {
        header: "MESSAGE",
        field: "message",
    },
];

const TOKEN_COLUMNS: &[Column] = &[
    Column {
        header: "NAME",
        field: "server_name",
    },
    Column {
        header: "TOKEN",
        field: "token",
    },
    Column {
        header: "EXPIRES AT",
        field: "expires_at",
    },
];

const TRUST_COLUMNS: &[Column] = &[
    Column {
        header: "NAME",
        field: "name",
    },
    Column {
        header: "TYPE",
        field: "type",
    },
    Column {
        header: "FINGERPRINT",
        field: "fingerprint",
    },
    Column {
        header: "ADDED AT",
        field: "added_at",
    },
];

fn main() -> ExitCode {
    // No transparent huge pages for Starling's processes: mimalloc asks for them on its
    // regions, and the kernel then zeroes 2 MiB at each first touch, which cost a joining
    // member 120 ms of its start (and RSS it does not use). Containers get the system's
    // policy back before their programs run (`setup::prepare_exec`).
    // SAFETY: PR_SET_THP_DISABLE takes integers only.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let mut cli = Cli::parse();
    // `pretty` is the monitor's; any other command shows it as a table.
    match cli.command {
        Command::Monitor { .. } if cli.format == Format::Table => cli.format = Format::Pretty,
        Command::Monitor { .. } => {}
        _ if cli.format == Format::Pretty => cli.format = Format::Table,
        _ => {}
    }
    // The shim forks: it must run before anything starts a thread (no logging, no runtime).
    if let Command::Shim(command) = &cli.command {
        return shim(command);
    }
    init_logging(&cli);
    // `exec` (Lua, or a command in an instance) is one request and its answer: a runtime on
    // this thread alone starts no worker threads, which is a third of its start-up here.
    let mut builder = match &cli.command {
        Command::Exec { .. } => tokio::runtime::Builder::new_current_thread(),
        // One worker per CPU unless `--workers` says (see ARCHITECTURE.md, "Async workers").
        Command::Daemon(args) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(workers) = args.workers {
                builder.worker_threads(usize::from(workers));
            }
            builder
        }
        // Its members run in this process.
        Command::Demo { .. } => tokio::runtime::Builder::new_multi_thread(),
        _ => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(client_workers(cpus()));
            builder
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The logical CPUs this process may run on (its affinity and cgroup quota), at least one.
pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Async worker threads of a client command (every command but `daemon`, `demo` and `exec`) on a
/// machine with `cpus` logical CPUs: half of them, at least one. A client's work is a few
/// connections; each idle worker is woken for every task scheduled while it sleeps, and such
/// wake-ups (context switches) were the largest cost of a write on the test machine, where
/// clients share the CPUs with members.
fn client_workers(cpus: usize) -> usize {
    (cpus / 2).max(1)
}

fn shim(command: &ShimCommand) -> ExitCode {
    use starling_runtime::instances::driver::shim;
    let code = match command {
        ShimCommand::Start { config } => shim::run_start(config),
        ShimCommand::Exec { report_fd, config } => shim::run_exec(config, *report_fd),
        ShimCommand::ExecServer { socket_fd } => shim::run_exec_server(*socket_fd),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}

fn init_logging(cli: &Cli) {
    let default = if matches!(cli.command, Command::Daemon(_)) {
        "info"
    } else {
        "warn"
    };
    // The REPL's `log.*` lines go to the member (its log and its logging events), not into
    // the prompt.
    let quiet = if matches!(cli.command, Command::Repl) {
        ",script=off"
    } else {
        ""
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STARLING_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default},openraft=warn{quiet}"))
    });
    // The demo's members run in this process under the REPL: their logs go to a file in the
    // demo directory, never into the prompt.
    if matches!(cli.command, Command::Demo { .. }) {
        let dir = cli_dir(cli, "starling-demo");
        let file = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("demo.log"))
        });
        match file {
            Ok(file) => {
                tracing_subscriber::fmt()
                    .with_env_filter(filter)
                    .with_ansi(false)
                    .with_writer(std::sync::Mutex::new(file))
                    .init();
                return;
            }
            Err(error) => eprintln!("cannot open the demo's log file: {error}"),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn dispatch(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Daemon(args) => daemon(&cli, args).await,
        Command::Demo { members } => {
            demo::run(&cli_dir(&cli, "starling-demo"), *members, &config_dir(&cli)).await
        }
        Command::Bench(args) => bench::run(args).await,
        Command::BenchFailover(args) => failover::run(args).await,
        Command::BenchImages(args) => bench_images::run(args).await,
        Command::BenchEvacuation(args) => bench_evacuation::run(args).await,
        Command::BenchInstances(args) => bench_instances::run(args).await,
        Command::BenchPlacement(args) => bench_placement::run(args),
        Command::Remote(RemoteCommand::Add { address, token }) => {
            Client::add_remote(&config_dir(&cli), address, token).await?;
            println!("Remote {address} added: use `starling --remote {address} ...`");
            Ok(())
        }
        Command::Cluster(ClusterCommand::RecoverFromQuorumLoss) => recover(&cli),
        Command::Waitready { timeout } => waitready(&cli, Duration::from_secs(*timeout)).await,
        Command::Repl => console::run(connect(&cli).await?, config_dir(&cli).join("history")).await,
        Command::Exec { code, command } if !command.is_empty() => {
            let client = connect(&cli).await?;
            let result = instance::exec(&cli.project, &client, code, command).await;
            client.close();
            // The command's exit code is this process's.
            std::process::exit(result?);
        }
        _ => {
            let client = connect(&cli).await?;
            let result = client_command(&cli, &client).await;
            client.close();
            result
        }
    }
}

async fn client_command(cli: &Cli, client: &Client) -> Result<()> {
    match &cli.command {
        Command::Cluster(command) => cluster(cli, client, command).await,
        Command::Config(command) => config(cli, client, command).await,
        Command::Trust(command) => trust(cli, client, command).await,
        Command::Image(command) => image::run(cli.format, client, command).await,
        Command::Exec { code, .. } => exec(client, code, "exec").await,
        Command::Monitor { types } => monitor::run(cli.format, client, types).await,
        Command::Instance(command) => {
            instance::run(cli.format, &cli.project, client, command).await
        }
        Command::Placement(command) => {
            placement::run(cli.format, client, &cli.project, command).await
        }
        Command::Script(command) => stored::run(cli.format, client, command).await,
        Command::Profile(command) => profile::run(cli.format, &cli.project, client, command).await,
        Command::Project(command) => project::run(cli.format, client, command).await,
        Command::Run { file, args } => {
            let source = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let chunk_name = file
                .file_name()
                .map_or("script".into(), |name| name.to_string_lossy().into_owned());
            let value = client
                .exec_with_args(&source, &chunk_name, args, |line| println!("{line}"))
                .await?;
            println!("{}", serde_json::to_string(&value)?);
            Ok(())
        }
        _ => Err(anyhow!("this command does not talk to a member")),
    }
}

async fn trust(cli: &Cli, client: &Client, command: &TrustCommand) -> Result<()> {
    match command {
        TrustCommand::Add { name } => {
            let value = client
                .operation(Operation::TrustAdd { name: name.clone() })
                .await?;
            println!("{}", field(&value, "token")?);
            Ok(())
        }
        TrustCommand::List => print_value(
            cli,
            &client.operation(Operation::TrustList).await?,
            TRUST_COLUMNS,
        ),
        TrustCommand::Remove { name } => {
            client
                .operation(Operation::TrustRemove { name: name.clone() })
                .await?;
            Ok(())
        }
        TrustCommand::ListTokens => print_value(
            cli,
            &client.operation(Operation::TrustTokens).await?,
            TOKEN_COLUMNS,
        ),
        TrustCommand::RevokeToken { name } => {
            client
                .operation(Operation::TrustRevokeToken { name: name.clone() })
                .await?;
            Ok(())
        }
    }
}

async fn cluster(cli: &Cli, client: &Client, command: &ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Group(command) => group::run(cli.format, client, command).await,
        ClusterCommand::Info => {
            let value = client.operation(Operation::ClusterInfo).await?;
            let format = if cli.format == Format::Table {
                Format::Yaml
            } else {
                cli.format
            };
            println!("{}", format::render(&value, format, &[]));
            Ok(())
        }
        ClusterCommand::List => print_value(
            cli,
            &client.operation(Operation::ClusterMembers).await?,
            MEMBER_COLUMNS,
        ),
        ClusterCommand::Show { name } => {
            let value = client
                .operation(Operation::ClusterMember { name: name.clone() })
                .await?;
            let format = if cli.format == Format::Table {
                Format::Yaml
            } else {
                cli.format
            };
            println!("{}", format::render(&value, format, MEMBER_COLUMNS));
            Ok(())
        }
        ClusterCommand::Add { name } => {
            println!("{}", client.join_token(name).await?);
            Ok(())
        }
        ClusterCommand::ListTokens => print_value(
            cli,
            &client.operation(Operation::ClusterTokens).await?,
            TOKEN_COLUMNS,
        ),
        ClusterCommand::RecoverFromQuorumLoss => recover(cli),
        ClusterCommand::Edit { name } => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading YAML from stdin")?;
            let edit: starling_runtime::operation::MemberEdit = parse_edit(&text)?;
            client
                .operation(Operation::ClusterEdit {
                    name: name.clone(),
                    edit,
                })
                .await?;
            Ok(())
        }
        ClusterCommand::Set { name, key, value } => {
            let (key, value) = key_value(key, value.as_deref())?;
            client
                .operation(Operation::ClusterSet {
                    name: name.clone(),
                    key,
                    value,
                })
                .await?;
            Ok(())
        }
        ClusterCommand::Unset { name, key } => {
            client
                .operation(Operation::ClusterUnset {
                    name: name.clone(),
                    key: key.clone(),
                })
                .await?;
            Ok(())
        }
        ClusterCommand::Get { name, key } => {
            let value = client
                .operation(Operation::ClusterGet {
                    name: name.clone(),
                    key: key.clone(),
                })
                .await?;
            println!("{}", value.as_str().unwrap_or_default());
            Ok(())
        }
        ClusterCommand::Role(RoleCommand::Add { name, roles }) => {
            for role in roles.split(',').filter(|role| !role.is_empty()) {
                client
                    .operation(Operation::ClusterRoleAdd {
                        name: name.clone(),
                        role: role.to_string(),
                    })
                    .await?;
            }
            Ok(())
        }
        ClusterCommand::Role(RoleCommand::Remove { name, roles }) => {
            for role in roles.split(',').filter(|role| !role.is_empty()) {
                client
                    .operation(Operation::ClusterRoleRemove {
                        name: name.clone(),
                        role: role.to_string(),
                    })
                    .await?;
            }
            Ok(())
        }
        ClusterCommand::Rename { name, new_name } => {
            client
                .operation(Operation::ClusterRename {
                    from: name.clone(),
                    to: new_name.clone(),
                })
                .await?;
            Ok(())
        }
        ClusterCommand::Remove { name, force } => {
            client
                .operation(Operation::ClusterRemove {
                    name: name.clone(),
                    force: *force,
                })
                .await?;
            println!("Member {name} removed");
            Ok(())
        }
        ClusterCommand::Promote { name, replace } => {
            let value = client
                .operation(Operation::ClusterPromote {
                    name: name.clone(),
                    replace: replace.clone(),
                })
                .await?;
            print_voters(name, "promoted", &value);
            Ok(())
        }
        ClusterCommand::Demote { name } => {
            let value = client
                .operation(Operation::ClusterDemote { name: name.clone() })
                .await?;
            print_voters(name, "demoted", &value);
            Ok(())
        }
        ClusterCommand::TransferLeader { name } => {
            let value = client
                .operation(Operation::ClusterTransferLeadership { name: name.clone() })
                .await?;
            let leader = value["leader"].as_str().unwrap_or("?");
            println!("Leader: {leader}");
            Ok(())
        }
        ClusterCommand::Evacuate {
            name,
            action,
            force,
        } => evacuate::run(client, name, action.clone(), *force, false).await,
        ClusterCommand::Restore {
            name,
            action,
            force,
        } => evacuate::run(client, name, action.clone(), *force, true).await,
        ClusterCommand::Evacuation { name } => {
            let value = client
                .operation(Operation::Evacuation(
                    starling_runtime::evacuation::ops::EvacuationOperation::Show {
                        member: name.clone(),
                    },
                ))
                .await?;
            let format = if cli.format == Format::Table {
                Format::Yaml
            } else {
                cli.format
            };
            println!("{}", format::render(&value, format, &[]));
            Ok(())
        }
        ClusterCommand::State { name } => {
            let value = client
                .operation(Operation::ClusterMemberState { name: name.clone() })
                .await?;
            let format = if cli.format == Format::Table {
                Format::Yaml
            } else {
                cli.format
            };
            println!("{}", format::render(&value, format, &[]));
            Ok(())
        }
        ClusterCommand::RevokeToken { name } => {
            client
                .operation(Operation::ClusterRevokeToken { name: name.clone() })
                .await?;
            Ok(())
        }
    }
}

/// An instance's record (`instances.get`), in the `--project` project.
async fn instance_record(cli: &Cli, client: &Client, name: &str) -> Result<Value> {
    Ok(client
        .operation(Operation::Instance(InstanceOperation::Get {
            project: cli.project.clone(),
            name: name.to_string(),
        }))
        .await?)
}

async fn config(cli: &Cli, client: &Client, command: &ConfigCommand) -> Result<()> {
    match command {
        ConfigCommand::Get { args } => match args.as_slice() {
            [key] => {
                let value = client
                    .operation(Operation::ConfigGet { key: key.clone() })
                    .await?;
                println!("{}", value.as_str().unwrap_or_default());
            }
            [instance, key] => {
                let record = instance_record(cli, client, instance).await?;
                println!("{}", record["config"][key].as_str().unwrap_or_default());
            }
            _ => bail!("`config get` takes KEY or INSTANCE KEY"),
        },
        ConfigCommand::Set { args } => match config_target(args)? {
            ConfigTarget::Global(key, value) => {
                let value = keys::read_stdin_values(vec![(key.clone(), value)])?
                    .remove(&key)
                    .unwrap_or_default();
                client
                    .operation(Operation::ConfigSet { key, value })
                    .await?;
            }
            ConfigTarget::Instance(name, pairs) => {
                let values = keys::read_stdin_values(pairs.clone())?;
                for (key, _) in pairs {
                    let value = values.get(&key).cloned().unwrap_or_default();
                    client
                        .operation(Operation::Instance(InstanceOperation::Set {
                            project: cli.project.clone(),
                            name: name.clone(),
                            key,
                            value: Some(value),
                        }))
                        .await?;
                }
            }
        },
        ConfigCommand::Unset { args } => match args.as_slice() {
            [key] => {
                client
                    .operation(Operation::ConfigUnset { key: key.clone() })
                    .await?;
            }
            [instance, key] => {
                client
                    .operation(Operation::Instance(InstanceOperation::Set {
                        project: cli.project.clone(),
                        name: instance.clone(),
                        key: key.clone(),
                        value: None,
                    }))
                    .await?;
            }
            _ => bail!("`config unset` takes KEY or INSTANCE KEY"),
        },
        ConfigCommand::Show {
            instance: Some(instance),
        } => {
            let record = instance_record(cli, client, instance).await?;
            let format = if cli.format == Format::Table {
                Format::Yaml
            } else {
                cli.format
            };
            println!("{}", format::render(&record["config"], format, &[]));
        }
        ConfigCommand::Show { instance: None } => {
            let value = client.operation(Operation::ConfigAll).await?;
            let format = if cli.format == Format::Table {
                Format::Yaml
            } else {
                cli.format
            };
            let columns = &[
                Column {
                    header: "KEY",
                    field: "key",
                },
                Column {
                    header: "VALUE",
                    field: "value",
                },
            ];
            let value = if format == Format::Csv {
                config_rows(&value)
            } else {
                value
            };
            println!("{}", format::render(&value, format, columns));
        }
    }
    Ok(())
}

/// `KEY=VALUE`, or `KEY` and `VALUE` given apart, as `lxc` takes them.
fn key_value(key: &str, value: Option<&str>) -> Result<(String, String)> {
    match (key.split_once('='), value) {
        (_, Some(value)) => Ok((key.to_string(), value.to_string())),
        (Some((key, value)), None) => Ok((key.to_string(), value.to_string())),
        (None, None) => bail!("give a value: `{key}=VALUE` or `{key} VALUE`"),
    }
}

/// The YAML of `cluster edit`: the fields of `cluster show`; fields that cannot change
/// (server_name, status, ...) are ignored, as `lxc` does.
fn parse_edit(text: &str) -> Result<starling_runtime::operation::MemberEdit> {
    let value: Value = serde_yaml::from_str(text).context("the input is not YAML")?;
    let object = value
        .as_object()
        .ok_or_else(|| anyhow!("expected a YAML mapping of member fields"))?;
    let mut fields = serde_json::Map::new();
    for key in ["description", "failure_domain", "config", "groups", "roles"] {
        if let Some(field) = object.get(key) {
            fields.insert(key.to_string(), field.clone());
        }
    }
    let operation = Operation::from_call(
        "cluster.edit",
        &[Value::String(String::new()), Value::Object(fields)],
    )?;
    match operation {
        Operation::ClusterEdit { edit, .. } => Ok(edit),
        _ => bail!("unexpected operation"),
    }
}

fn config_rows(value: &Value) -> Value {
    let rows = value.as_object().map(|map| {
        map.iter()
            .map(|(key, value)| serde_json::json!({"key": key, "value": value}))
            .collect::<Vec<_>>()
    });
    Value::Array(rows.unwrap_or_default())
}

async fn exec(client: &Client, source: &str, chunk_name: &str) -> Result<()> {
    let value = client
        .exec(source, chunk_name, |line| println!("{line}"))
        .await?;
    println!("{}", serde_json::to_string(&value)?);
    Ok(())
}

fn print_value(cli: &Cli, value: &Value, columns: &[Column]) -> Result<()> {
    println!("{}", format::render(value, cli.format, columns));
    Ok(())
}

fn field<'a>(value: &'a Value, name: &str) -> Result<&'a str> {
    value
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the member's answer has no {name}"))
}

async fn daemon(cli: &Cli, args: &DaemonArgs) -> Result<()> {
    let dir = cli
        .dir
        .clone()
        .ok_or_else(|| anyhow!("--dir is required: the member's data directory"))?;
    let need = |value: &Option<String>, what: &str| {
        value.clone().ok_or_else(|| anyhow!("{what} is required"))
    };
    let mode = if args.bootstrap {
        StartMode::Bootstrap {
            name: need(&args.name, "--name")?,
            listen: need(&args.listen, "--listen")?,
        }
    } else if let Some(token) = &args.join {
        StartMode::Join {
            name: need(&args.name, "--name")?,
            listen: need(&args.listen, "--listen")?,
            token: token.clone(),
            member_config: join_answers(args)?,
        }
    } else {
        StartMode::Restart
    };
    if !args.no_favordynmods {
        favor_dynamic_modifications();
    }
    tracing::info!(
        workers = tokio::runtime::Handle::current().metrics().num_workers(),
        "async runtime started"
    );
    let mut store = starling_store::StoreOptions::default();
    if let Some(mib) = args.db_map_mib {
        store.log_map_size_bytes = mib.saturating_mul(1024 * 1024);
    }
    let member = Member::start(MemberConfig {
        dir,
        mode,
        timings: RaftTimings::default(),
        store,
    })
    .await?;
    tokio::select! {
        _ = wait_for_signal() => {
            member.stop_instances().await;
            member.leave_gracefully().await;
            member.shutdown().await;
        }
        _ = member.stopped() => {
            eprintln!("This member was removed from the cluster; its data directory was reset. Join again with a new token.");
        }
        cause = member.wait_out_of_service() => {
            member.shutdown().await;
            bail!("the database cannot write ({cause}): this member stopped; free space (or raise --db-map-mib) and start it again");
        }
    }
    Ok(())
}

/// Switches the host's cgroup migrations to `favordynmods` mode (the driver's `dynmods`
/// module); a host that cannot is told in the log, and the member runs as it is.
fn favor_dynamic_modifications() {
    use starling_runtime::instances::driver::dynmods;
    match dynmods::favor_dynamic_modifications() {
        Ok(dynmods::Outcome::Mounted) => tracing::info!(
            mount = dynmods::MOUNT_POINT,
            "cgroup migrations switched to favordynmods mode (a named hierarchy mounted with it)"
        ),
        Ok(dynmods::Outcome::AlreadyOn) => {
            tracing::debug!("cgroup migrations are in favordynmods mode already")
        }
        Err(error) => tracing::warn!(
            %error,
            "could not switch cgroup migrations to favordynmods mode (needs root and Linux 6.0+): \
             each container start and exec may wait for an RCU grace period"
        ),
    }
}

/// Answers to the member-specific questions, from `--preseed` and `--member-config`.
fn join_answers(args: &DaemonArgs) -> Result<Vec<Answer>> {
    let mut answers = Vec::new();
    if let Some(path) = &args.preseed {
        #[derive(serde::Deserialize)]
        struct Preseed {
            #[serde(default)]
            member_config: Vec<Answer>,
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let preseed: Preseed = serde_yaml::from_str(&text)
            .with_context(|| format!("{} is not a valid preseed", path.display()))?;
        answers.extend(preseed.member_config);
    }
    for given in &args.member_config {
        let parsed = given.split_once('=').and_then(|(path, value)| {
            let mut parts = path.splitn(3, '/');
            Some(Answer {
                entity: parts.next()?.to_string(),
                name: parts.next()?.to_string(),
                key: parts.next()?.to_string(),
                value: value.to_string(),
            })
        });
        answers.push(
            parsed.ok_or_else(|| anyhow!("--member-config {given}: use ENTITY/NAME/KEY=VALUE"))?,
        );
    }
    Ok(answers)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// What `cluster promote` and `cluster demote` print: whether anything changed, and the voters.
fn print_voters(name: &str, done: &str, value: &Value) {
    let voters: Vec<&str> = value["voters"]
        .as_array()
        .map(|voters| voters.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if value["changed"].as_bool() == Some(false) {
        let state = if voters.contains(&name) {
            "already votes"
        } else {
            "does not vote"
        };
        println!("Member {name} {state}; voters: {}", voters.join(", "));
    } else {
        println!("Member {name} {done}; voters: {}", voters.join(", "));
    }
}

fn recover(cli: &Cli) -> Result<()> {
    let dir = cli
        .dir
        .as_deref()
        .ok_or_else(|| anyhow!("--dir is required: the stopped member's data directory"))?;
    let data = starling_runtime::datadir::DataDir::new(dir);
    let file = data.load_member()?;
    let node = starling_store::Node {
        addr: file.address.clone(),
    };
    let recovery = starling_store::recover::recover_as_sole_voter(&data.database(), file.id, node)?;
    println!(
        "{} is now the only voter (log index {}, term {}). Start it with `starling daemon --dir {}`; \
         remove the {} other members with `starling cluster remove NAME --force`, or let them rejoin.",
        file.name,
        recovery.last_index,
        recovery.term,
        dir.display(),
        recovery.members.saturating_sub(1)
    );
    Ok(())
}

async fn waitready(cli: &Cli, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        // An attempt can outlast the time left (connecting alone may wait 3 s): bound it.
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ready_once(cli)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => last_error = Some(error),
            Err(_) => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }
    let why = match (last_error, member_address(cli)) {
        (Some(error), _) => format!("{error:#}"),
        (None, Some(address)) => format!("no answer from {address} (is its daemon running?)"),
        (None, None) => "no answer".to_string(),
    };
    bail!(
        "the member is not ready after {}s: {why}",
        timeout.as_secs()
    )
}

/// One `waitready` attempt: connect, ask for the members (answered by the leader, so the
/// cluster has one; `cluster.info()` would also build every join question), then whether the
/// member has looked at its containers (adopted those a previous daemon started).
async fn ready_once(cli: &Cli) -> Result<()> {
    let client = connect(cli).await?;
    let mut result = client.operation(Operation::ClusterMembers).await;
    if result.is_ok() {
        result = client.operation(Operation::MemberReady).await;
    }
    client.close();
    result.map(|_| ()).map_err(Into::into)
}

/// The address the command line talks to, for messages.
fn member_address(cli: &Cli) -> Option<String> {
    if let Some(address) = &cli.remote {
        return Some(address.clone());
    }
    let data = starling_runtime::datadir::DataDir::new(cli.dir.as_deref()?);
    data.load_member().ok().map(|file| file.address)
}

async fn connect(cli: &Cli) -> Result<Client> {
    if let Some(address) = &cli.remote {
        return Ok(Client::remote(&config_dir(cli), address).await?);
    }
    let dir = cli
        .dir
        .as_deref()
        .ok_or_else(|| anyhow!("say which member to talk to: --dir DIR or --remote HOST:PORT"))?;
    Ok(Client::local(dir).await?)
}

fn cli_dir(cli: &Cli, default: &str) -> PathBuf {
    cli.dir.clone().unwrap_or_else(|| PathBuf::from(default))
}

fn config_dir(cli: &Cli) -> PathBuf {
    if let Some(dir) = &cli.config_dir {
        return dir.clone();
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(".").to_path_buf());
    home.join(".config").join("starling")
}

#[cfg(test)]
mod tests {
    use super::{client_workers, config_target, Cli, ConfigTarget};
    use clap::Parser;

    /// Goal: a client runs half the CPUs' async workers, never none, and the daemon's
    /// `--workers` outside 1..=1024 is refused naming the option.
    #[test]
    fn client_workers_are_half_the_cpus() {
        assert_eq!(client_workers(0), 1);
        assert_eq!(client_workers(1), 1);
        assert_eq!(client_workers(2), 1);
        assert_eq!(client_workers(3), 1);
        assert_eq!(client_workers(16), 8);
        let parsed = Cli::try_parse_from(["starling", "daemon", "--workers", "3"]);
        assert!(parsed.is_ok(), "{:?}", parsed.err());
        for bad in ["0", "1025", "x"] {
            let error = Cli::try_parse_from(["starling", "daemon", "--workers", bad])
                .err()
                .map(|error| error.to_string())
                .unwrap_or_default();
            assert!(error.contains("--workers"), "{bad}: {error}");
        }
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| arg.to_string()).collect()
    }

    /// Goal: `config set` tells a global key from an instance's as documented: one argument
    /// with `=` is global, `KEY VALUE` is global, `INSTANCE KEY=VALUE...` is an instance's,
    /// and a global value holding `=` goes in one argument.
    #[test]
    fn config_set_global_or_instance() {
        let global = |key: &str, value: &str| ConfigTarget::Global(key.into(), value.into());
        assert_eq!(
            config_target(&args(&["user.a=1"])).unwrap(),
            global("user.a", "1")
        );
        assert_eq!(
            config_target(&args(&["user.a", "1"])).unwrap(),
            global("user.a", "1")
        );
        assert_eq!(
            config_target(&args(&["user.a=x=y"])).unwrap(),
            global("user.a", "x=y")
        );
        assert_eq!(
            config_target(&args(&["c1", "limits.cpu=2", "user.b=-"])).unwrap(),
            ConfigTarget::Instance(
                "c1".into(),
                vec![
                    ("limits.cpu".into(), "2".into()),
                    ("user.b".into(), "-".into())
                ]
            )
        );
        assert!(config_target(&args(&["user.a"])).is_err());
        assert!(config_target(&args(&["a", "b", "c"])).is_err());
    }
}
