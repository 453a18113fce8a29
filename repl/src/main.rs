//! `starling`: the daemon, the command line and the REPL in one binary.
//!
//! Every subcommand is a thin layer over [`starling_runtime::Operation`]s sent through a
//! [`starling_runtime::Client`]; the daemon is [`starling_runtime::Member`].
//!
//! # Layout
//! - `main.rs`: arguments and dispatch.
//! - `format.rs`: table, json, yaml and csv output.
//! - `console.rs`: the REPL.
//! - `demo.rs`: the first-time local cluster.
//! - `bench.rs`: the write/read benchmark.

mod bench;
mod console;
mod demo;
mod format;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::Value;
use starling_runtime::{Client, Member, MemberConfig, Operation, RaftTimings, StartMode};

use crate::format::{Column, Format};

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
    /// Trust tokens for remote clients.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Remotes this client can reach.
    #[command(subcommand)]
    Remote(RemoteCommand),
    /// Runs Lua code on the member and prints its result as JSON.
    Exec {
        /// Lua source.
        code: String,
    },
    /// Runs a Lua file on the member and prints its result as JSON.
    Run {
        /// The file.
        file: PathBuf,
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
    /// On a stopped member: make it the only voter, when the majority is gone for good.
    RecoverFromQuorumLoss,
    /// Revokes the join token for a name.
    RevokeToken {
        /// The name the token was issued for.
        name: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Prints a key's effective value.
    Get {
        /// The key.
        key: String,
    },
    /// Sets a key: `set KEY=VALUE` or `set KEY VALUE`.
    Set {
        /// KEY=VALUE, or KEY.
        key: String,
        /// VALUE when given separately.
        value: Option<String>,
    },
    /// Unsets a key.
    Unset {
        /// The key.
        key: String,
    },
    /// Shows every key.
    Show,
}

#[derive(Subcommand)]
enum TrustCommand {
    /// Prints a token that lets a remote client become trusted.
    Add {
        /// A name for the client.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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

fn init_logging(cli: &Cli) {
    let default = if matches!(cli.command, Command::Daemon(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STARLING_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},openraft=warn")));
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
        Command::Remote(RemoteCommand::Add { address, token }) => {
            Client::add_remote(&config_dir(&cli), address, token).await?;
            println!("Remote {address} added: use `starling --remote {address} ...`");
            Ok(())
        }
        Command::Cluster(ClusterCommand::RecoverFromQuorumLoss) => recover(&cli),
        Command::Waitready { timeout } => waitready(&cli, Duration::from_secs(*timeout)).await,
        Command::Repl => console::run(connect(&cli).await?, config_dir(&cli).join("history")).await,
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
        Command::Trust(TrustCommand::Add { name }) => {
            let value = client
                .operation(Operation::TrustAdd { name: name.clone() })
                .await?;
            println!("{}", field(&value, "token")?);
            Ok(())
        }
        Command::Exec { code } => exec(client, code, "exec").await,
        Command::Run { file } => {
            let source = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let chunk_name = file
                .file_name()
                .map_or("script".into(), |name| name.to_string_lossy().into_owned());
            exec(client, &source, &chunk_name).await
        }
        _ => Err(anyhow!("this command does not talk to a member")),
    }
}

async fn cluster(cli: &Cli, client: &Client, command: &ClusterCommand) -> Result<()> {
    match command {
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
            let value = client
                .operation(Operation::ClusterAdd { name: name.clone() })
                .await?;
            println!("{}", field(&value, "token")?);
            Ok(())
        }
        ClusterCommand::ListTokens => print_value(
            cli,
            &client.operation(Operation::ClusterTokens).await?,
            TOKEN_COLUMNS,
        ),
        ClusterCommand::RecoverFromQuorumLoss => recover(cli),
        ClusterCommand::RevokeToken { name } => {
            client
                .operation(Operation::ClusterRevokeToken { name: name.clone() })
                .await?;
            Ok(())
        }
    }
}

async fn config(cli: &Cli, client: &Client, command: &ConfigCommand) -> Result<()> {
    match command {
        ConfigCommand::Get { key } => {
            let value = client
                .operation(Operation::ConfigGet { key: key.clone() })
                .await?;
            println!("{}", value.as_str().unwrap_or_default());
        }
        ConfigCommand::Set { key, value } => {
            let (key, value) = match (key.split_once('='), value) {
                (_, Some(value)) => (key.clone(), value.clone()),
                (Some((key, value)), None) => (key.to_string(), value.to_string()),
                (None, None) => {
                    bail!("give a value: `config set {key}=VALUE` or `config set {key} VALUE`")
                }
            };
            client
                .operation(Operation::ConfigSet { key, value })
                .await?;
        }
        ConfigCommand::Unset { key } => {
            client
                .operation(Operation::ConfigUnset { key: key.clone() })
                .await?;
        }
        ConfigCommand::Show => {
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
        }
    } else {
        StartMode::Restart
    };
    let member = Member::start(MemberConfig {
        dir,
        mode,
        timings: RaftTimings::default(),
    })
    .await?;
    wait_for_signal().await;
    member.shutdown().await;
    Ok(())
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
    let mut last_error = anyhow!("not tried");
    while Instant::now() < deadline {
        match connect(cli).await {
            Ok(client) => {
                let result = client.operation(Operation::ClusterInfo).await;
                client.close();
                match result {
                    Ok(_) => return Ok(()),
                    Err(error) => last_error = error.into(),
                }
            }
            Err(error) => last_error = error,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "the member is not ready after {}s: {last_error}",
        timeout.as_secs()
    )
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
