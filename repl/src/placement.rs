//! `starling placement explain|test`: where a new instance would go, and why, creating nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use starling_runtime::placement::ops::{PlacementInput, PlacementOperation};
use starling_runtime::{Client, Operation};

use crate::format::{self, Format};

/// What a placement is asked for.
#[derive(clap::Args)]
pub struct RequestArgs {
    /// The image (fingerprint, prefix or alias).
    image: String,
    /// `NAME` or `@group`.
    #[arg(long)]
    target: Option<String>,
    /// Instance config, `KEY=VALUE` (repeatable).
    #[arg(short = 'c', long = "config")]
    config: Vec<String>,
    /// Profiles (repeatable; default: `default`).
    #[arg(short = 'p', long = "profile")]
    profiles: Vec<String>,
    /// The instance's name, as the scriptlet sees it.
    #[arg(long, default_value = "")]
    name: String,
}

/// `starling placement` subcommands.
#[derive(clap::Subcommand)]
pub enum PlacementCommand {
    /// Shows which member a new instance would go to: by which rule or by the installed
    /// scriptlet, every candidate, why others are excluded, the scriptlet's log.
    Explain(RequestArgs),
    /// As `explain`, with a scriptlet from FILE that is not installed.
    Test {
        /// The Starlark file.
        file: PathBuf,
        #[command(flatten)]
        request: RequestArgs,
    },
}

fn input(args: &RequestArgs, project: &str) -> Result<PlacementInput> {
    let mut config = BTreeMap::new();
    for pair in &args.config {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("-c {pair}: KEY=VALUE expected"))?;
        config.insert(key.to_string(), value.to_string());
    }
    Ok(PlacementInput {
        image: args.image.clone(),
        name: args.name.clone(),
        project: project.to_string(),
        target: args.target.clone().unwrap_or_default(),
        config,
        profiles: args.profiles.clone(),
    })
}

/// Prints the decision as a person reads it (table format), else as data.
fn print(value: &Value, format: Format) {
    if format != Format::Table {
        println!("{}", format::render(value, format, &[]));
        return;
    }
    println!(
        "Member: {} (chosen by {}; scriptlet: {})",
        value["member"].as_str().unwrap_or_default(),
        value["chosen_by"].as_str().unwrap_or_default(),
        value["scriptlet"].as_str().unwrap_or_default()
    );
    println!("Candidates:");
    for candidate in value["candidates"].as_array().into_iter().flatten() {
        println!(
            "  {} ({} instances)",
            candidate["name"].as_str().unwrap_or_default(),
            candidate["instances"]
        );
    }
    let excluded = value["excluded"].as_array().cloned().unwrap_or_default();
    if !excluded.is_empty() {
        println!("Excluded:");
        for member in excluded {
            println!(
                "  {}: {}",
                member["name"].as_str().unwrap_or_default(),
                member["reason"].as_str().unwrap_or_default()
            );
        }
    }
    let log = value["log"].as_array().cloned().unwrap_or_default();
    if !log.is_empty() {
        println!("Scriptlet log:");
        for line in log {
            println!(
                "  [{}] {}",
                line["level"].as_str().unwrap_or_default(),
                line["text"].as_str().unwrap_or_default()
            );
        }
    }
}

/// Runs `starling placement ...` through `client`.
pub async fn run(
    format: Format,
    client: &Client,
    project: &str,
    command: &PlacementCommand,
) -> Result<()> {
    let operation = match command {
        PlacementCommand::Explain(args) => PlacementOperation::Explain {
            request: Box::new(input(args, project)?),
        },
        PlacementCommand::Test { file, request } => PlacementOperation::Test {
            source: std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?,
            request: Box::new(input(request, project)?),
        },
    };
    let value = client.operation(Operation::Placement(operation)).await?;
    print(&value, format);
    Ok(())
}
