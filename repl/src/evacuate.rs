//! `starling cluster evacuate|restore NAME`: asks for confirmation on a terminal (unless
//! `--force`), runs the operation on the leader and draws a progress bar from the member's
//! evacuation record (instances done / total, the instance moving now).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Result};
use serde_json::Value;
use starling_runtime::evacuation::ops::EvacuationOperation;
use starling_runtime::instances::ops::InstanceOperation;
use starling_runtime::{Client, Operation};

/// Asks `question` on a terminal; `true` without asking when not on one or with `force`.
fn confirmed(question: &str, force: bool) -> Result<bool> {
    if force || !std::io::stdin().is_terminal() {
        return Ok(true);
    }
    print!("{question} (yes/no) [default=no]: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "yes"))
}

/// Runs an evacuation (`restore` false) or a restore of `member`.
pub async fn run(
    client: &Client,
    member: &str,
    action: Option<String>,
    force: bool,
    restore: bool,
) -> Result<()> {
    let verb = if restore { "restore" } else { "evacuate" };
    if !confirmed(
        &format!("Are you sure you want to {verb} cluster member \"{member}\"?"),
        force,
    )? {
        bail!("{verb} of \"{member}\" cancelled");
    }
    let operation = if restore {
        EvacuationOperation::Restore {
            member: member.to_string(),
            action,
        }
    } else {
        EvacuationOperation::Evacuate {
            member: member.to_string(),
            action,
        }
    };
    let work = client.operation(Operation::Evacuation(operation));
    let summary = with_progress(client, member, verb, work).await?;
    print_summary(member, verb, &summary);
    Ok(())
}

fn names(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| match item {
            Value::String(name) => name.clone(),
            other => match (
                other["name"].as_str(),
                other["to"].as_str(),
                other["reason"].as_str(),
            ) {
                (Some(name), Some(to), _) => format!("{name} -> {to}"),
                (Some(name), _, Some(reason)) => format!("{name}: {reason}"),
                _ => other.to_string(),
            },
        })
        .collect()
}

fn print_summary(member: &str, verb: &str, summary: &Value) {
    let done = if verb == "restore" {
        "restored"
    } else {
        "evacuated"
    };
    println!("Member {member} {done}");
    for (what, field) in [
        ("Moved", "moved"),
        ("Stopped", "stopped"),
        ("Started", "started"),
        ("Failed", "failed"),
    ] {
        let list = names(&summary[field]);
        if !list.is_empty() {
            println!("  {what}: {}", list.join(", "));
        }
    }
}

/// Runs `work` while a progress bar (on a terminal) shows the record's progress.
async fn with_progress(
    client: &Client,
    member: &str,
    verb: &str,
    work: impl std::future::Future<Output = Result<Value, starling_runtime::Error>>,
) -> Result<Value> {
    let on_terminal = std::io::stdout().is_terminal();
    // Drawn from the first record read, so it never shows an empty 0/0 bar.
    let mut bar: Option<indicatif::ProgressBar> = None;
    let new_bar = |total: u64| {
        let bar = indicatif::ProgressBar::new(total);
        let style =
            indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("{verb} {member}"));
        bar
    };
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)), if on_terminal => {
                let show = Operation::Evacuation(EvacuationOperation::Show { member: member.to_string() });
                let Ok(record) = client.operation(show).await else { continue };
                // Until this operation's record begins, the member's last one (or none) shows.
                if record["kind"] != verb || record["running"] != true {
                    continue;
                }
                let moving = client
                    .operation(Operation::Instance(InstanceOperation::Moves))
                    .await
                    .unwrap_or_default();
                let current: Vec<String> = moving
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|progress| format!(
                        "{} ({})",
                        progress["name"].as_str().unwrap_or("?"),
                        progress["stage"].as_str().unwrap_or("")
                    ))
                    .collect();
                let total = record["total"].as_u64().unwrap_or(0);
                let bar = bar.get_or_insert_with(|| new_bar(total));
                bar.set_length(total);
                bar.set_position(record["done"].as_u64().unwrap_or(0));
                bar.set_message(current.join(", "));
            }
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(result?)
}
