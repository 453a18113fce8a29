//! `starling monitor`: the cluster's events as they happen, one per line (pretty or JSON) or
//! as YAML documents, flushed as each arrives.

use std::io::Write;

use anyhow::Result;
use starling_runtime::Client;

use crate::format::{render, Format};

/// Shows events until the member goes away or the user stops it.
pub async fn run(format: Format, client: &Client, types: &[String]) -> Result<()> {
    let mut stdout = std::io::stdout();
    let mut failed = None;
    client
        .monitor(types, |event| {
            let text = match format {
                Format::Json => event.to_json().to_string(),
                Format::Yaml => format!("{}\n---", render(&event.to_json(), Format::Yaml, &[])),
                Format::Table | Format::Pretty | Format::Csv => event.pretty(),
            };
            let written = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
            if let Err(error) = written {
                // A closed pipe (`monitor | head`) ends the monitor.
                failed = Some(error);
                return false;
            }
            true
        })
        .await?;
    match failed {
        Some(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Some(error) => Err(error.into()),
        None => Ok(()),
    }
}
