//! A private network for one chaos run, made of Linux network namespaces:
//! a bridge in the root namespace (the load generator and the mock upstream
//! live there, at the bridge's address) and one namespace per ledger node
//! and per edge, each joined to the bridge by a veth pair. Partitions are
//! real: a blackhole route inside a namespace drops every packet to the
//! address it names, established connections included, until it is removed.
//!
//! Needs root (`ip netns`). Everything the run creates is named with a
//! per-run prefix and removed on drop.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};

static RUNS: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// One host of the private network.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub ip: String,
    veth: String,
}

/// The network of one run.
pub struct Net {
    prefix: String,
    bridge: String,
    /// The bridge's address, in the root namespace.
    pub gateway_ip: String,
    pub hosts: BTreeMap<String, Host>,
    /// Blackholes in place: (namespace, address).
    cuts: Vec<(String, String)>,
}

impl Net {
    /// Makes a bridge and one namespace per name in `hosts`.
    pub fn create(hosts: &[&str]) -> anyhow::Result<Net> {
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id() % 4000) * 16 + run % 16;
        let prefix = format!("tgc{id}");
        // 10.200–263.x.0/24, one subnet per run, from the same id.
        let (a, b) = (200 + (id / 250) % 50, id % 250);
        let bridge = format!("{prefix}b");
        let mut net = Net {
            prefix: prefix.clone(),
            bridge: bridge.clone(),
            gateway_ip: format!("10.{a}.{b}.1"),
            hosts: BTreeMap::new(),
            cuts: Vec::new(),
        };
        ip(&["link", "add", "name", &bridge, "type", "bridge"])
            .context("creating a bridge (chaos runs need root and iproute2)")?;
        ip(&["addr", "add", &format!("{}/24", net.gateway_ip), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for (i, name) in hosts.iter().enumerate() {
            let ns = format!("{prefix}{name}");
            let veth = format!("{prefix}v{i}");
            let inner = format!("{prefix}i{i}");
            let host_ip = format!("10.{a}.{b}.{}", 10 + i);
            ip(&["netns", "add", &ns])?;
            net.hosts.insert(name.to_string(), Host { ns: ns.clone(), ip: host_ip.clone(), veth: veth.clone() });
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &veth, "master", &bridge])?;
            ip(&["link", "set", &veth, "up"])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
            ip(&["netns", "exec", &ns, "ip", "addr", "add", &format!("{host_ip}/24"), "dev", &inner])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", &inner, "up"])?;
        }
        Ok(net)
    }

    pub fn host(&self, name: &str) -> &Host {
        &self.hosts[name]
    }

    /// A command that runs `program` inside `host`'s namespace.
    pub fn command(&self, host: &str, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[host].ns]).arg(program);
        c
    }

    /// Drops every packet from `from` to `to` (one direction).
    pub fn cut(&mut self, from: &str, to: &str) -> anyhow::Result<()> {
        let ns = self.hosts[from].ns.clone();
        let dst = self.hosts[to].ip.clone();
        ip(&["netns", "exec", &ns, "ip", "route", "add", "blackhole", &format!("{dst}/32")])?;
        self.cuts.push((ns, dst));
        Ok(())
    }

    /// Cuts both directions between `a` and every host in `others`.
    pub fn isolate(&mut self, a: &str, others: &[String]) -> anyhow::Result<()> {
        for o in others {
            self.cut(a, o)?;
            self.cut(o, a)?;
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        for (ns, dst) in std::mem::take(&mut self.cuts) {
            ip(&["netns", "exec", &ns, "ip", "route", "del", "blackhole", &format!("{dst}/32")])?;
        }
        Ok(())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in self.hosts.values() {
            let _ = ip(&["link", "del", &h.veth]);
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
