//! Real network faults: packets between loopback addresses dropped by `iptables`.
//!
//! Each member of a partition test listens on its own loopback address (127.a.b.c: all of
//! 127.0.0.0/8 reaches the loopback interface on Linux), so a rule can drop exactly the packets
//! between two members. Rules live in a chain of the test's own, hooked into `INPUT`, and are
//! removed when the [`Firewall`] is dropped, even when the test fails. Needs root and
//! `iptables` (CI installs it).
//!
//! [`Firewall::in_namespace`] makes the same chain inside a network namespace (`ip netns`),
//! where it drops what reaches that namespace's member: the chaos harness gives each member
//! one.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// A chain of DROP rules between addresses, removed on drop.
pub struct Firewall {
    chain: String,
    /// The network namespace the chain is in; `None`: this process's.
    namespace: Option<String>,
}

impl Firewall {
    /// Creates an empty chain and hooks it into `INPUT`.
    pub fn new() -> Result<Firewall> {
        Firewall::create(None)
    }

    /// Creates an empty chain in network namespace `namespace` and hooks it into its `INPUT`.
    pub fn in_namespace(namespace: &str) -> Result<Firewall> {
        Firewall::create(Some(namespace.to_string()))
    }

    fn create(namespace: Option<String>) -> Result<Firewall> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let serial = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let chain = format!("STARLING-{}-{serial}", std::process::id());
        let firewall = Firewall { chain, namespace };
        firewall.iptables(&["-N", &firewall.chain]).context(
            "partition tests drop real packets with iptables: run them as root with iptables installed",
        )?;
        firewall.iptables(&["-I", "INPUT", "-j", &firewall.chain])?;
        Ok(firewall)
    }

    /// Drops every packet from `from` to `to` (one direction; IP addresses, no ports).
    pub fn drop_one_way(&self, from: &str, to: &str) -> Result<()> {
        self.iptables(&["-A", &self.chain, "-s", from, "-d", to, "-j", "DROP"])
    }

    /// Drops every packet from `from`, whatever its destination.
    pub fn drop_from(&self, from: &str) -> Result<()> {
        self.iptables(&["-A", &self.chain, "-s", from, "-j", "DROP"])
    }

    /// Drops every packet between `a` and `b`, both ways.
    pub fn cut(&self, a: &str, b: &str) -> Result<()> {
        self.drop_one_way(a, b)?;
        self.drop_one_way(b, a)
    }

    /// Removes every rule: the network is whole again.
    pub fn heal(&self) -> Result<()> {
        self.iptables(&["-F", &self.chain])
    }

    fn iptables(&self, args: &[&str]) -> Result<()> {
        let mut command = match &self.namespace {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace, "iptables"]);
                command
            }
            None => Command::new("iptables"),
        };
        iptables(command.args(["-w", "5"]).args(args))
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = self.iptables(&["-D", "INPUT", "-j", &self.chain]);
        let _ = self.iptables(&["-F", &self.chain]);
        let _ = self.iptables(&["-X", &self.chain]);
    }
}

/// Runs `command` (iptables, perhaps inside `ip netns exec`), waiting at most 5 s for the
/// xtables lock.
fn iptables(command: &mut Command) -> Result<()> {
    let output = command.output().context("running iptables")?;
    if !output.status.success() {
        bail!(
            "{:?} failed: {}",
            command,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A loopback IP address of its own for each member of each partition test in this process:
/// 127.(pid-derived).(serial).(member + 1).
pub fn member_ip(test_serial: u32, member: usize) -> String {
    let high = 100 + (std::process::id() % 100);
    format!("127.{high}.{}.{}", test_serial % 250 + 1, member + 1)
}
