//! `starling script ...`: scripts stored in the cluster database, run when asked or on a
//! schedule (`scripts.*` in Lua).

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;
use starling_runtime::automation::scripts::{ScriptOperation, ScriptOptions};
use starling_runtime::{Client, Operation};

use crate::format::{self, Column, Format};

/// `starling script` subcommands.
#[derive(clap::Subcommand)]
pub enum ScriptCommand {
    /// Stores a script: `script add NAME FILE [--schedule SPEC] [--on EVENT]... [--member M|@GROUP]`.
    Add {
        /// Its name.
        name: String,
        /// The Lua file.
        file: PathBuf,
        #[command(flatten)]
        options: OptionArgs,
    },
    /// Lists stored scripts.
    List,
    /// Shows a stored script (YAML).
    Show {
        /// Its name.
        name: String,
    },
    /// Changes a stored script: a new FILE and/or the options given.
    Edit {
        /// Its name.
        name: String,
        /// A new Lua file.
        file: Option<PathBuf>,
        #[command(flatten)]
        options: OptionArgs,
    },
    /// Deletes a stored script (its runs stay listed).
    Delete {
        /// Its name.
        name: String,
    },
    /// Runs a stored script now and shows the run: `script run NAME [-- ARGS...]`.
    Run {
        /// Its name.
        name: String,
        /// The script's `arg[1]`...
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Lists a script's newest runs, newest last.
    Runs {
        /// Its name.
        name: String,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// The options of `script add` and `script edit`.
#[derive(clap::Args)]
pub struct OptionArgs {
    /// When it runs by itself: 5-field cron in UTC, @hourly/@daily/..., or "@every 30s"
    /// ("" removes it).
    #[arg(long)]
    schedule: Option<String>,
    /// A lifecycle event that runs it (an action such as cluster-member-offline, or a prefix
    /// ending in '*'); may be repeated; the event is the run's arg[1], as JSON. `--on ""`
    /// removes them all.
    #[arg(long = "on", value_name = "EVENT")]
    on: Vec<String>,
    /// Where it runs: a member or @group ("" for the leader, the default).
    #[arg(long)]
    member: Option<String>,
    /// A description.
    #[arg(long)]
    description: Option<String>,
    /// Longest a run may take, in seconds (60 unless given).
    #[arg(long)]
    timeout: Option<u32>,
    /// What happens to ticks missed while the cluster had no leader: run_once or skip.
    #[arg(long)]
    missed: Option<String>,
}

impl OptionArgs {
    fn options(&self, source: Option<String>) -> ScriptOptions {
        ScriptOptions {
            source,
            schedule: self.schedule.clone(),
            on: (!self.on.is_empty()).then(|| {
                self.on
                    .iter()
                    .filter(|event| !event.is_empty())
                    .cloned()
                    .collect()
            }),
            member: self.member.clone(),
            description: self.description.clone(),
            timeout_s: self.timeout,
            missed: self.missed.clone(),
        }
    }
}

const SCRIPT_COLUMNS: &[Column] = &[
    Column {
        header: "NAME",
        field: "name",
    },
    Column {
        header: "SCHEDULE",
        field: "schedule",
    },
    Column {
        header: "ON",
        field: "on",
    },
    Column {
        header: "MEMBER",
        field: "member",
    },
    Column {
        header: "DESCRIPTION",
        field: "description",
    },
];

const RUN_COLUMNS: &[Column] = &[
    Column {
        header: "ID",
        field: "id",
    },
    Column {
        header: "TICK",
        field: "tick",
    },
    Column {
        header: "MEMBER",
        field: "member",
    },
    Column {
        header: "STARTED",
        field: "started_at",
    },
    Column {
        header: "STATUS",
        field: "status",
    },
    Column {
        header: "RESULT",
        field: "result",
    },
    Column {
        header: "ERROR",
        field: "error",
    },
];

fn read(file: &PathBuf) -> Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

/// Runs `starling script ...` through `client`.
pub async fn run(format: Format, client: &Client, command: &ScriptCommand) -> Result<()> {
    let call = |operation| client.operation(Operation::Script(operation));
    let show = |value: &Value, columns| {
        let format = if format == Format::Table {
            Format::Yaml
        } else {
            format
        };
        println!("{}", format::render(value, format, columns));
    };
    match command {
        ScriptCommand::Add {
            name,
            file,
            options,
        } => {
            call(ScriptOperation::Create {
                name: name.clone(),
                options: options.options(Some(read(file)?)),
            })
            .await?;
            println!("Script {name} stored");
        }
        ScriptCommand::List => {
            let value = call(ScriptOperation::List).await?;
            println!("{}", format::render(&value, format, SCRIPT_COLUMNS));
        }
        ScriptCommand::Show { name } => {
            let value = call(ScriptOperation::Get { name: name.clone() }).await?;
            show(&value, SCRIPT_COLUMNS);
        }
        ScriptCommand::Edit {
            name,
            file,
            options,
        } => {
            let source = file.as_ref().map(read).transpose()?;
            call(ScriptOperation::Update {
                name: name.clone(),
                options: options.options(source),
            })
            .await?;
            println!("Script {name} changed");
        }
        ScriptCommand::Delete { name } => {
            call(ScriptOperation::Delete { name: name.clone() }).await?;
            println!("Script {name} deleted");
        }
        ScriptCommand::Run { name, args } => {
            let value = call(ScriptOperation::Run {
                name: name.clone(),
                args: args.clone(),
            })
            .await?;
            show(&value, RUN_COLUMNS);
            if value["status"] != "ok" {
                anyhow::bail!(
                    "run {} of script {name} ended {}",
                    value["id"],
                    value["status"].as_str().unwrap_or("?")
                );
            }
        }
        ScriptCommand::Runs { name, limit } => {
            let value = call(ScriptOperation::Runs {
                name: name.clone(),
                limit: *limit,
            })
            .await?;
            println!("{}", format::render(&value, format, RUN_COLUMNS));
        }
    }
    Ok(())
}
