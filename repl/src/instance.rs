//! `starling launch|init|start|stop|restart|delete|list|info|exec`: lxc's instance commands
//! over the `instances.*` operations.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use serde_json::Value;
use starling_runtime::instances::ops::{CreateRequest, InstanceOperation, DEFAULT_STOP_TIMEOUT_S};
use starling_runtime::instances::stream::ExecCall;
use starling_runtime::{Client, Operation};
use starling_store::instances::Devices;

use crate::format::{self, Column, Format};

/// The instance commands (top-level, as lxc has them).
#[derive(Subcommand)]
pub enum InstanceCommand {
    /// Creates and starts an instance from an image.
    Launch(CreateArgs),
    /// Creates an instance from an image without starting it.
    Init(CreateArgs),
    /// Starts instances.
    Start {
        /// Instance names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stops instances.
    Stop {
        /// Instance names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Kill at once instead of asking init to shut down.
        #[arg(long, short)]
        force: bool,
        /// Seconds to wait for a clean shutdown before killing.
        #[arg(long, default_value_t = DEFAULT_STOP_TIMEOUT_S)]
        timeout: u64,
    },
    /// Restarts instances.
    Restart {
        /// Instance names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Kill at once instead of asking init to shut down.
        #[arg(long, short)]
        force: bool,
        /// Seconds to wait for a clean shutdown before killing.
        #[arg(long, default_value_t = DEFAULT_STOP_TIMEOUT_S)]
        timeout: u64,
    },
    /// Deletes instances.
    Delete {
        /// Instance names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Stop a running instance first.
        #[arg(long, short)]
        force: bool,
    },
    /// Lists instances.
    List,
    /// Shows an instance: its record, and its live state from its member.
    Info {
        /// Instance name.
        name: String,
    },
    /// Moves an instance to another member (a running one is stopped, moved and started).
    Move {
        /// Instance name.
        name: String,
        /// A member, or @GROUP (the cluster chooses in the group).
        #[arg(long)]
        target: String,
    },
}

/// `launch` and `init`.
#[derive(clap::Args)]
pub struct CreateArgs {
    /// Image fingerprint (or a unique prefix) or alias.
    image: String,
    /// Instance name (generated when absent).
    name: Option<String>,
    /// A member, or @GROUP.
    #[arg(long)]
    target: Option<String>,
    /// A config key: KEY=VALUE (repeatable).
    #[arg(long = "config", short = 'c')]
    config: Vec<String>,
    /// A profile, in order (repeatable; `default` when none is given).
    #[arg(long = "profile", short = 'p')]
    profiles: Vec<String>,
    /// A device key: DEVICE,KEY=VALUE (changes a profile's device; repeatable).
    #[arg(long = "device", short = 'd')]
    devices: Vec<String>,
    /// No profile at all (not even `default`).
    #[arg(long)]
    no_profiles: bool,
    /// Deleted when it stops.
    #[arg(long, short = 'e')]
    ephemeral: bool,
    /// Description.
    #[arg(long, default_value = "")]
    description: String,
}

const INSTANCE_COLUMNS: &[Column] = &[
    Column {
        header: "NAME",
        field: "name",
    },
    Column {
        header: "STATE",
        field: "state",
    },
    Column {
        header: "TYPE",
        field: "type_text",
    },
    Column {
        header: "LOCATION",
        field: "location",
    },
    Column {
        header: "PROFILES",
        field: "profiles",
    },
];

/// Runs an instance command.
pub async fn run(
    format: Format,
    project: &str,
    client: &Client,
    command: &InstanceCommand,
) -> Result<()> {
    let project = project.to_string();
    match command {
        InstanceCommand::Launch(args) | InstanceCommand::Init(args) => {
            let start = matches!(command, InstanceCommand::Launch(_));
            let request = create_request(&project, args, start)?;
            let value = client
                .operation(Operation::Instance(InstanceOperation::Create(request)))
                .await?;
            let name = value["name"].as_str().unwrap_or_default();
            if args.name.is_none() {
                println!("Instance name is: {name}");
            }
            if start {
                println!(
                    "Instance {name} launched on {}",
                    value["location"].as_str().unwrap_or("?")
                );
            } else {
                println!(
                    "Instance {name} created on {}",
                    value["location"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
        InstanceCommand::Start { names } => {
            for name in names {
                let operation = InstanceOperation::Start {
                    project: project.clone(),
                    name: name.clone(),
                };
                client.operation(Operation::Instance(operation)).await?;
            }
            Ok(())
        }
        InstanceCommand::Stop {
            names,
            force,
            timeout,
        }
        | InstanceCommand::Restart {
            names,
            force,
            timeout,
        } => {
            let restart = matches!(command, InstanceCommand::Restart { .. });
            for name in names {
                let (project, name, force, timeout_s) =
                    (project.clone(), name.clone(), *force, *timeout);
                let operation = if restart {
                    InstanceOperation::Restart {
                        project,
                        name,
                        force,
                        timeout_s,
                    }
                } else {
                    InstanceOperation::Stop {
                        project,
                        name,
                        force,
                        timeout_s,
                    }
                };
                client.operation(Operation::Instance(operation)).await?;
            }
            Ok(())
        }
        InstanceCommand::Delete { names, force } => {
            for name in names {
                let operation = InstanceOperation::Delete {
                    project: project.clone(),
                    name: name.clone(),
                    force: *force,
                };
                client.operation(Operation::Instance(operation)).await?;
            }
            Ok(())
        }
        InstanceCommand::List => {
            let value = client
                .operation(Operation::Instance(InstanceOperation::List {
                    project: project.clone(),
                }))
                .await?;
            let value = if format == Format::Table || format == Format::Csv {
                list_rows(&value)
            } else {
                value
            };
            println!("{}", format::render(&value, format, INSTANCE_COLUMNS));
            Ok(())
        }
        InstanceCommand::Info { name } => info(format, &project, client, name).await,
        InstanceCommand::Move { name, target } => {
            let operation = InstanceOperation::Move {
                project: project.clone(),
                name: name.clone(),
                target: target.clone(),
            };
            let value = with_move_progress(client, &project, name, async {
                client.operation(Operation::Instance(operation)).await
            })
            .await?;
            println!(
                "Instance {name} moved from {} to {} ({} in {:.2} s)",
                value["from"].as_str().unwrap_or("?"),
                value["location"].as_str().unwrap_or("?"),
                crate::image::human_size(value["bytes"].as_u64().unwrap_or(0)),
                value["seconds"].as_f64().unwrap_or(0.0)
            );
            Ok(())
        }
    }
}

/// Runs `work` (a move of `name`) while a progress bar, on a terminal, shows its stage and the
/// bytes the target received (read from `instances.moves()` on the leader).
pub(crate) async fn with_move_progress<T>(
    client: &Client,
    project: &str,
    name: &str,
    work: impl std::future::Future<Output = Result<T, starling_runtime::Error>>,
) -> Result<T> {
    use std::io::IsTerminal;
    let terminal = std::io::stdout().is_terminal();
    // The bar appears with the first word of the move's progress, never as an empty frame.
    let mut bar: Option<indicatif::ProgressBar> = None;
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)), if terminal => {
                let Ok(moves) = client.operation(Operation::Instance(InstanceOperation::Moves)).await else {
                    continue;
                };
                let current = moves.as_array().into_iter().flatten().find(|progress| {
                    progress["name"] == name && progress["project"] == project
                });
                if let Some(progress) = current {
                    let total = progress["total"].as_u64().unwrap_or(0);
                    let bar = bar.get_or_insert_with(|| {
                        let bar = indicatif::ProgressBar::no_length();
                        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg}") {
                            bar.set_style(style);
                        }
                        bar
                    });
                    bar.set_message(format!(
                        "moving {name} to {}: {}",
                        progress["to"].as_str().unwrap_or("?"),
                        progress["stage"].as_str().unwrap_or("")
                    ));
                    // Until the size is known (stopping, packing) the stage is all there is.
                    if total > 0 && bar.length() != Some(total) {
                        bar.set_style(bytes_style());
                        bar.set_length(total);
                    }
                    bar.set_position(progress["done"].as_u64().unwrap_or(0));
                }
            }
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(result?)
}

/// A move's bar once its size is known: the stage, then the bytes the target received.
fn bytes_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// `lxc list`'s row for an instance: `STATE` in capitals, `TYPE` as `CONTAINER` (with
/// ` (EPHEMERAL)` as lxc shows it).
fn list_rows(value: &Value) -> Value {
    let rows = value.as_array().map(|items| {
        items
            .iter()
            .map(|item| {
                let mut row = item.clone();
                if let Some(object) = row.as_object_mut() {
                    let state = item["status"].as_str().unwrap_or_default().to_uppercase();
                    let mut kind = item["type"].as_str().unwrap_or_default().to_uppercase();
                    if item["ephemeral"] == true {
                        kind.push_str(" (EPHEMERAL)");
                    }
                    object.insert("state".to_string(), Value::String(state));
                    object.insert("type_text".to_string(), Value::String(kind));
                }
                row
            })
            .collect::<Vec<_>>()
    });
    Value::Array(rows.unwrap_or_default())
}

/// `info NAME`: `Name:`, `Status:`, `Location:` ... as lxc prints them, then resources.
async fn info(format: Format, project: &str, client: &Client, name: &str) -> Result<()> {
    let record = client
        .operation(Operation::Instance(InstanceOperation::Get {
            project: project.to_string(),
            name: name.to_string(),
        }))
        .await?;
    let state = if record["status"] == "Creating" {
        Value::Null
    } else {
        client
            .operation(Operation::Instance(InstanceOperation::State {
                project: project.to_string(),
                name: name.to_string(),
            }))
            .await
            .unwrap_or(Value::Null)
    };
    if format != Format::Table {
        let mut both = record.clone();
        both["state"] = state;
        println!("{}", format::render(&both, format, &[]));
        return Ok(());
    }
    let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
    println!("Name: {}", text(&record["name"]));
    println!("Status: {}", text(&record["status"]).to_uppercase());
    println!("Type: {}", text(&record["type"]));
    println!("Architecture: {}", text(&record["architecture"]));
    println!("Location: {}", text(&record["location"]));
    if let Some(pid) = state["pid"].as_u64().filter(|pid| *pid > 0) {
        println!("PID: {pid}");
    }
    println!("Created: {}", text(&record["created_at"]));
    let message = text(&record["status_message"]);
    if !message.is_empty() {
        println!("Error: {message}");
    }
    if state["status"] == "Running" {
        println!();
        println!("Resources:");
        println!("  Processes: {}", state["processes"].as_u64().unwrap_or(0));
        let cpu_ns = state["cpu"]["usage"].as_u64().unwrap_or(0);
        println!("  CPU usage:");
        println!("    CPU usage (in seconds): {}", cpu_ns / 1_000_000_000);
        let memory = state["memory"]["usage"].as_u64().unwrap_or(0);
        println!("  Memory usage:");
        println!("    Memory (current): {}", crate::image::human_size(memory));
    }
    Ok(())
}

/// `exec NAME -- CMD...`: runs the command, its output streamed as it comes; answers its
/// exit code.
pub async fn exec(project: &str, client: &Client, name: &str, command: &[String]) -> Result<i32> {
    use std::io::Write;
    let call = ExecCall {
        project: project.to_string(),
        name: name.to_string(),
        argv: command.to_vec(),
        env: BTreeMap::new(),
        cwd: None,
    };
    let code = client
        .exec_instance(call, |stderr, bytes| {
            // A closed terminal or pipe is the reader's business: the command goes on.
            if stderr {
                let _ = std::io::stderr().write_all(bytes);
            } else {
                let mut stdout = std::io::stdout();
                let _ = stdout.write_all(bytes);
                let _ = stdout.flush();
            }
        })
        .await?;
    Ok(code)
}

/// The operation's request from `launch`/`init` arguments.
fn create_request(project: &str, args: &CreateArgs, start: bool) -> Result<CreateRequest> {
    let mut config = BTreeMap::new();
    for given in &args.config {
        let (key, value) = given
            .split_once('=')
            .ok_or_else(|| anyhow!("-c {given}: use KEY=VALUE"))?;
        config.insert(key.to_string(), value.to_string());
    }
    let mut devices = Devices::new();
    for given in &args.devices {
        let (device, pairs) = given
            .split_once(',')
            .ok_or_else(|| anyhow!("-d {given}: use DEVICE,KEY=VALUE"))?;
        for pair in pairs.split(',') {
            let Some((key, value)) = pair.split_once('=') else {
                bail!("-d {given}: use DEVICE,KEY=VALUE");
            };
            devices
                .entry(device.to_string())
                .or_default()
                .insert(key.to_string(), value.to_string());
        }
    }
    let profiles = if args.no_profiles {
        Some(Vec::new())
    } else if args.profiles.is_empty() {
        None
    } else {
        Some(args.profiles.clone())
    };
    Ok(CreateRequest {
        project: project.to_string(),
        name: args.name.clone(),
        image: args.image.clone(),
        target: args.target.clone(),
        profiles,
        config,
        devices,
        description: args.description.clone(),
        start,
        ephemeral: args.ephemeral,
    })
}
