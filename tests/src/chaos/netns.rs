//! [`Network`]: a network namespace per member, each joined to a bridge in the harness's
//! namespace by a veth pair, and iptables DROP rules inside the namespaces for partitions.
//!
//! Names carry the harness's process id (`sc<pid>br`, `sc<pid>h3`, `starling-chaos-<pid>-m3`),
//! so runs side by side do not clash; the subnet (`10.x.y.0/24`) is derived from the process
//! id and skipped when an interface already uses it. The bridge has `.1` (the harness's
//! clients reach the members through it), member `i` has `.(10 + i)`. Everything is removed
//! when the [`Network`] is dropped, on error and panic too (the binary turns Ctrl-C into an
//! orderly return).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};

use crate::netfault::Firewall;
use crate::processes::MemberPlacement;

/// The most members (namespaces) one run may make.
pub const MEMBERS_MAX: usize = 32;

/// The bridge, the namespaces and their firewalls of one run.
pub struct Network {
    /// Prefix of interface names: `sc<pid>`.
    prefix: String,
    /// The first three octets of the subnet, `10.x.y`.
    subnet: String,
    /// The bridge in the harness's namespace.
    bridge: String,
    /// Whether a `FORWARD` rule accepting the bridge's traffic was added (removed on drop).
    forward_accepted: bool,
    /// Member namespaces by member index, made on first use.
    namespaces: Mutex<BTreeMap<usize, Namespace>>,
}

/// One member's namespace.
struct Namespace {
    /// Its name for `ip netns`.
    name: String,
    /// The member's IP address in it.
    ip: String,
    /// The DROP rules that reach this member; `None` once dropped.
    firewall: Option<Firewall>,
}

impl Network {
    /// Makes the bridge (after sweeping what dead runs left). Needs root, `ip` and
    /// `iptables`.
    pub fn create() -> Result<Network> {
        sweep_leftovers();
        let pid = std::process::id();
        let prefix = format!("sc{pid}");
        let subnet = free_subnet(pid)?;
        let bridge = format!("{prefix}br");
        let mut network = Network {
            prefix,
            subnet,
            bridge,
            forward_accepted: false,
            namespaces: Mutex::new(BTreeMap::new()),
        };
        ip(&["link", "add", &network.bridge, "type", "bridge"]).context(
            "starling-chaos makes network namespaces and a bridge: run it as root, with iproute2",
        )?;
        // A fixed address: a bridge otherwise takes the lowest of its ports' addresses, and
        // changes it when a member's veth joins, which leaves the members' ARP caches stale.
        let mac = format!(
            "02:5c:{:02x}:{:02x}:{:02x}:01",
            (pid >> 16) & 0xff,
            (pid >> 8) & 0xff,
            pid & 0xff
        );
        ip(&["link", "set", &network.bridge, "address", &mac])?;
        let address = format!("{}/24", network.harness_ip());
        ip(&["addr", "add", &address, "dev", &network.bridge])?;
        ip(&["link", "set", &network.bridge, "up"])?;
        // With br_netfilter loaded, bridged packets cross the host's FORWARD chain, whose
        // policy may be DROP (Docker sets it so).
        forward_rule(&network.bridge, "-I")?;
        network.forward_accepted = true;
        Ok(network)
    }

    /// The harness's address on the bridge.
    pub fn harness_ip(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// The name of member `index`'s namespace.
    pub fn namespace_name(&self, index: usize) -> String {
        format!("starling-chaos-{}-m{}", std::process::id(), index + 1)
    }

    /// Makes member `index`'s namespace unless it exists; answers its IP address.
    fn ensure(&self, index: usize) -> Result<String> {
        let mut namespaces = crate::chaos::lock(&self.namespaces);
        if let Some(namespace) = namespaces.get(&index) {
            return Ok(namespace.ip.clone());
        }
        if index >= MEMBERS_MAX {
            bail!("member index {index} is past the {MEMBERS_MAX} namespaces a run may make");
        }
        let name = self.namespace_name(index);
        let member_ip = format!("{}.{}", self.subnet, 10 + index);
        let host_side = format!("{}h{index}", self.prefix);
        let inside = format!("{}n{index}", self.prefix);
        ip(&["netns", "add", &name])?;
        // Recorded at once, so that a failure below still removes it.
        namespaces.insert(
            index,
            Namespace {
                name: name.clone(),
                ip: member_ip.clone(),
                firewall: None,
            },
        );
        ip(&[
            "link", "add", &host_side, "type", "veth", "peer", "name", &inside,
        ])?;
        ip(&["link", "set", &inside, "netns", &name])?;
        ip(&["link", "set", &host_side, "master", &self.bridge])?;
        ip(&["link", "set", &host_side, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{member_ip}/24"),
            "dev",
            &inside,
        ])?;
        ip(&["-n", &name, "link", "set", &inside, "up"])?;
        let firewall = Firewall::in_namespace(&name)?;
        if let Some(namespace) = namespaces.get_mut(&index) {
            namespace.firewall = Some(firewall);
        }
        tracing::debug!(%name, ip = %member_ip, "member namespace ready");
        Ok(member_ip)
    }

    /// The IP address of member `index`, once its namespace exists.
    pub fn member_ip(&self, index: usize) -> Option<String> {
        crate::chaos::lock(&self.namespaces)
            .get(&index)
            .map(|namespace| namespace.ip.clone())
    }

    /// Drops every packet member `from` sends to member `to` (one way).
    pub fn drop_one_way(&self, from: usize, to: usize) -> Result<()> {
        let namespaces = crate::chaos::lock(&self.namespaces);
        let source = namespaces
            .get(&from)
            .ok_or_else(|| anyhow!("member {from} has no namespace"))?;
        let target = namespaces
            .get(&to)
            .and_then(|namespace| namespace.firewall.as_ref())
            .ok_or_else(|| anyhow!("member {to} has no namespace"))?;
        target.drop_from(&source.ip)
    }

    /// Drops every packet between members `a` and `b`.
    pub fn cut(&self, a: usize, b: usize) -> Result<()> {
        self.drop_one_way(a, b)?;
        self.drop_one_way(b, a)
    }

    /// Removes every DROP rule: the network is whole again.
    pub fn heal(&self) -> Result<()> {
        let namespaces = crate::chaos::lock(&self.namespaces);
        for namespace in namespaces.values() {
            if let Some(firewall) = &namespace.firewall {
                firewall
                    .heal()
                    .with_context(|| format!("healing the network of {}", namespace.name))?;
            }
        }
        Ok(())
    }
}

impl MemberPlacement for Network {
    fn ip(&self, index: usize) -> Result<String> {
        self.ensure(index)
    }

    fn command(&self, index: usize, program: &Path) -> Result<Command> {
        self.ensure(index)?;
        // `nsenter --net`, not `ip netns exec`: that also gives the process a mount namespace
        // with a fresh /sys and no cgroup file systems, where containers cannot start.
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.namespace_name(index)))
            .arg("--")
            .arg(program);
        Ok(command)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let namespaces = std::mem::take(&mut *crate::chaos::lock(&self.namespaces));
        for (index, mut namespace) in namespaces {
            // The chain goes with the namespace; dropping the firewall first keeps its own
            // clean-up from failing noisily.
            drop(namespace.firewall.take());
            if let Err(error) = ip(&["netns", "del", &namespace.name]) {
                tracing::warn!(%error, "removing a member namespace");
            }
            // Deleting the namespace deletes the veth pair; this only matters if it failed.
            let _ = ip_quiet(&["link", "del", &format!("{}h{index}", self.prefix)]);
        }
        if self.forward_accepted {
            let _ = forward_rule(&self.bridge, "-D");
        }
        if let Err(error) = ip(&["link", "del", &self.bridge]) {
            tracing::warn!(%error, "removing the bridge");
        }
    }
}

/// Removes the namespaces, bridges and FORWARD rules of runs whose process no longer exists
/// (a harness killed with `SIGKILL` cannot clean up after itself), with the member processes
/// still inside them. A run whose process id exists is left alone, whatever it is.
fn sweep_leftovers() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let mut dead_runs = std::collections::BTreeSet::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("starling-chaos-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        tracing::warn!(namespace = name, "removing a namespace a dead run left");
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
            for member in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", member]).output();
            }
        }
        let _ = ip_quiet(&["netns", "del", name]);
        dead_runs.insert(pid);
    }
    for pid in dead_runs {
        let bridge = format!("sc{pid}br");
        let _ = forward_rule(&bridge, "-D");
        let _ = ip_quiet(&["link", "del", &bridge]);
    }
}

/// A `10.x.y` no interface of this machine uses, derived from `pid`.
fn free_subnet(pid: u32) -> Result<String> {
    let output = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .context("running ip -4 addr show (is iproute2 installed?)")?;
    let used = String::from_utf8_lossy(&output.stdout).into_owned();
    // 10.128.0.0 to 10.254.255.0: 127 × 256 subnets.
    let slots = 127 * 256;
    for attempt in 0..slots {
        let slot = (pid as usize + attempt * 7919) % slots;
        let subnet = format!("10.{}.{}", 128 + slot / 256, slot % 256);
        if !used.contains(&format!(" {subnet}.")) {
            return Ok(subnet);
        }
    }
    bail!("no free 10.x.y.0/24 subnet for the members")
}

/// Inserts (`-I`) or deletes (`-D`) the rule accepting the bridge's own traffic in the
/// harness's `FORWARD` chain.
fn forward_rule(bridge: &str, action: &str) -> Result<()> {
    let rule = ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"];
    run(Command::new("iptables")
        .args(["-w", "5", action])
        .args(rule))
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

fn ip_quiet(args: &[&str]) -> Result<()> {
    let output = Command::new("ip").args(args).output()?;
    if !output.status.success() {
        bail!("ip {args:?} failed");
    }
    Ok(())
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
