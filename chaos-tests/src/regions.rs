//! `--topology regions`: the run's namespaces grouped into three regions
//! joined by a simulated WAN, and the faults that strike a whole region.
//!
//! Layout: ledger node `n{i}` is in region `r{(i-1) % 3 + 1}` and edge `e{k}`
//! in `r{k % 3 + 1}`, so three nodes are three voters in three regions.
//! Hosts in one region talk over the bridge directly. Across regions every
//! connection goes through a `wan-relay` process in the sending host's own
//! namespace ([`crate::wan`]: the delay each way, jitter, loss, in order):
//! members advertise node `i` at `127.0.0.{10+i}:7070`, a loopback address
//! that exists in every namespace, and in each namespace a relay listens
//! there and forwards to the node's real address (with no delay from the
//! node's own region). Because the relay connects from the sender's
//! namespace, the kernel's blackhole routes ([`crate::netns::Net::cut`]) cut
//! WAN traffic as they cut any other, so every existing fault works
//! unchanged on this topology.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::checker::Fault;
use crate::netns::Net;
use crate::procs::KillOnDrop;
use crate::rng::Rng;
use crate::run::{wait_leader, RunConfig, World};

/// The scenarios that need `--topology regions`.
pub const REGION_SCENARIOS: [&str; 3] = ["region-partition", "region-kill", "region-cutoff"];

pub(crate) const REGIONS: usize = 3;

/// The simulated WAN between regions.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Wan {
    pub one_way_ms: u64,
    pub jitter_ms: u64,
    /// Chance that a chunk is lost once (and arrives a retransmission late).
    pub loss: f64,
}

pub(crate) fn name(region: usize) -> String {
    format!("r{}", region + 1)
}

pub(crate) fn node_region(id: u64) -> usize {
    ((id - 1) % REGIONS as u64) as usize
}

pub(crate) fn edge_region(k: usize) -> usize {
    k % REGIONS
}

/// Where members and other regions' edges reach node `id`.
pub(crate) fn wan_addr(id: u64, port: u16) -> String {
    format!("127.0.0.{}:{port}", 10 + id)
}

/// Node ids and edge indexes in `region`.
fn members(region: usize, nodes: u64, edges: usize) -> (Vec<u64>, Vec<usize>) {
    (
        (1..=nodes).filter(|i| node_region(*i) == region).collect(),
        (0..edges).filter(|k| edge_region(*k) == region).collect(),
    )
}

/// The `--ledger` list of edge `k`: its own region's nodes first, by their
/// real address, then the others through the WAN.
pub(crate) fn edge_ledger_list(k: usize, real: &BTreeMap<u64, String>, port: u16) -> Vec<String> {
    let (mine, theirs): (Vec<_>, Vec<_>) = real.iter().partition(|(id, _)| node_region(**id) == edge_region(k));
    mine.into_iter().map(|(_, a)| a.clone()).chain(theirs.into_iter().map(|(id, _)| wan_addr(*id, port))).collect()
}

/// Starts the relays of every host's namespace: per host, one for the
/// links across the WAN and (on a ledger node) one with no delay for its
/// own region's members, itself included.
pub(crate) fn start_relays(
    net: &Net,
    cfg: &RunConfig,
    wan: Wan,
    dir: &Path,
    real: &BTreeMap<u64, String>,
    port: u16,
) -> anyhow::Result<Vec<KillOnDrop>> {
    let (bin, seed, edges) = (cfg.bin_dir.join("wan-relay"), cfg.seed, cfg.edges);
    let mut relays = Vec::new();
    let hosts = real.keys().map(|id| (format!("n{id}"), node_region(*id), true));
    let hosts = hosts.chain((0..edges).map(|k| (format!("e{k}"), edge_region(k), false)));
    for (n, (host, region, is_node)) in hosts.enumerate() {
        let (mut far, mut near) = (Vec::new(), Vec::new());
        for (id, addr) in real {
            let link = format!("{}={addr}", wan_addr(*id, port));
            if node_region(*id) != region {
                far.push(link);
            } else if is_node {
                near.push(link);
            }
        }
        for (links, wan, tag) in [(far, wan, "wan"), (near, Wan { one_way_ms: 0, jitter_ms: 0, loss: 0.0 }, "local")] {
            if links.is_empty() {
                continue;
            }
            let mut cmd: Command = net.command(&host, &bin);
            for l in &links {
                cmd.args(["--link", l]);
            }
            cmd.args(["--one-way-ms", &wan.one_way_ms.to_string(), "--jitter-ms", &wan.jitter_ms.to_string()])
                .args(["--loss", &wan.loss.to_string(), "--seed", &(seed ^ (n as u64 + 1) << 8).to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("relay-{host}-{tag}.log")))?);
            relays.push(KillOnDrop(cmd.spawn().context("starting wan-relay")?));
        }
    }
    Ok(relays)
}

/// One fault of a region scenario, healed before it returns (see
/// [`crate::run`]'s `inject` for the others); `nth` counts the run's faults.
pub(crate) async fn inject(
    scenario: &str,
    w: &mut World,
    rng: &mut Rng,
    f: &mut Fault,
    nth: usize,
    now: impl Fn() -> u64,
) -> anyhow::Result<()> {
    let (nodes, edges) = (w.p.ledger_addrs.len() as u64, w.edge_addrs.len());
    let leader = wait_leader(&w.admin_addrs, &w.admin_tls, Duration::from_secs(10)).await.context("no leader")?;
    let host = |id: &u64| format!("n{id}");
    match scenario {
        // The leader's region, then another one, in turn: cut off from
        // every host outside it (its node and edges still talk).
        "region-partition" => {
            let r = if nth.is_multiple_of(2) {
                node_region(leader)
            } else {
                let others: Vec<usize> = (0..REGIONS).filter(|r| *r != node_region(leader)).collect();
                others[rng.below(others.len() as u64) as usize]
            };
            f.target = name(r);
            let all: Vec<String> = (1..=nodes).map(|i| host(&i)).chain((0..edges).map(|k| format!("e{k}"))).collect();
            let (ns, es) = members(r, nodes, edges);
            let inside: Vec<String> = ns.iter().map(host).chain(es.iter().map(|k| format!("e{k}"))).collect();
            let outside: Vec<String> = all.into_iter().filter(|h| !inside.contains(h)).collect();
            f.at_ms = now();
            for h in &inside {
                w.p.net.isolate(h, &outside)?;
            }
            tokio::time::sleep(Duration::from_millis(4_000 + rng.below(4_000))).await;
            w.p.net.heal()?;
        }
        // Every process of the leader's region dies, then comes back.
        "region-kill" => {
            let r = node_region(leader);
            f.target = name(r);
            let (ns, es) = members(r, nodes, edges);
            f.edge = es.first().copied();
            f.edges = es.clone();
            f.at_ms = now();
            for id in &ns {
                w.p.kill_node(*id);
            }
            for k in &es {
                w.p.kill_edge(*k);
            }
            tokio::time::sleep(Duration::from_millis(3_000 + rng.below(2_000))).await;
            for id in &ns {
                w.p.spawn_node(*id)?;
            }
            for k in &es {
                w.p.spawn_edge(*k)?;
            }
        }
        // One region's edges lose every ledger node, their own region's
        // included: they admit on their leases, then refuse (fail closed).
        "region-cutoff" => {
            let r = rng.below(REGIONS as u64) as usize;
            f.target = format!("{} edges", name(r));
            let ledger: Vec<String> = (1..=nodes).map(|i| host(&i)).collect();
            f.at_ms = now();
            for k in members(r, nodes, edges).1 {
                w.p.net.isolate(&format!("e{k}"), &ledger)?;
            }
            tokio::time::sleep(Duration::from_millis(3_000 + rng.below(6_000))).await;
            w.p.net.heal()?;
        }
        _ => unreachable!("not a region scenario: {scenario}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_nodes_are_three_voters_in_three_regions_and_edges_go_round() {
        assert_eq!((1..=3).map(node_region).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!((1..=5).map(node_region).collect::<Vec<_>>(), vec![0, 1, 2, 0, 1]);
        assert_eq!((0..4).map(edge_region).collect::<Vec<_>>(), vec![0, 1, 2, 0]);
        assert_eq!(members(0, 5, 4), (vec![1, 4], vec![0, 3]));
    }

    #[test]
    fn an_edge_lists_its_own_regions_node_directly_first_then_the_wan() {
        let real: BTreeMap<u64, String> = (1..=3).map(|i| (i, format!("10.0.0.{i}:7070"))).collect();
        assert_eq!(edge_ledger_list(1, &real, 7070), vec!["10.0.0.2:7070", "127.0.0.11:7070", "127.0.0.13:7070"]);
    }
}
