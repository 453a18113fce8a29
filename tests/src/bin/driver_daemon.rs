//! A stand-in daemon for the container driver's `kill -9` test: starts a container through the
//! driver, prints init's PID, then waits to be killed.
//!
//! `driver_daemon <pool dir> <starling binary> <project> <name>`

use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use starling_runtime::instances::driver::{ContainerSpec, Driver, InstanceKey};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [pool, shim, project, name] = args.as_slice() else {
        return Err(anyhow!(
            "usage: driver_daemon <pool dir> <starling binary> <project> <name>"
        ));
    };
    let driver = Driver::new(PathBuf::from(pool), PathBuf::from(shim));
    let pid = driver.start(&InstanceKey::new(project, name), &ContainerSpec::new(name))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{pid}")?;
    stdout.flush()?;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
