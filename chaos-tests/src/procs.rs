//! The processes of one chaos run, started inside its namespaces: ledger
//! nodes and edges (restartable with the same flags), stopped on drop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::cluster::ledger_args;
use crate::netns::Net;
use crate::run::UPSTREAM_KEY;

pub(crate) fn kill(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// The processes of one run.
pub(crate) struct Procs {
    pub(crate) bin: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) net: Net,
    pub(crate) ledger_peers: String,
    pub(crate) ledger_addrs: BTreeMap<u64, String>,
    /// Transport flags of each ledger node (its TLS files, or --insecure-plaintext).
    pub(crate) node_flags: BTreeMap<u64, Vec<String>>,
    pub(crate) nodes: BTreeMap<u64, Child>,
    pub(crate) edges: BTreeMap<usize, Child>,
    pub(crate) edge_args: BTreeMap<usize, Vec<String>>,
    pub(crate) election_timeout_ms: u64,
}

impl Procs {
    pub(crate) fn log(&self, name: &str) -> anyhow::Result<std::fs::File> {
        Ok(std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("{name}.log")))?)
    }

    pub(crate) fn spawn_node(&mut self, id: u64) -> anyhow::Result<()> {
        let mut cmd = self.net.command(&format!("n{id}"), &self.bin);
        cmd.args(ledger_args(id, &self.ledger_addrs[&id], &self.ledger_peers, &self.dir.join(format!("n{id}"))))
            .args(["--election-timeout-ms", &self.election_timeout_ms.to_string()])
            .args(&self.node_flags[&id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log(&format!("n{id}"))?);
        self.nodes.insert(id, cmd.spawn().context("starting a ledger node")?);
        Ok(())
    }

    pub(crate) fn spawn_edge(&mut self, k: usize) -> anyhow::Result<()> {
        let mut cmd = self.net.command(&format!("e{k}"), &self.bin);
        cmd.args(&self.edge_args[&k])
            .env("ANTHROPIC_API_KEY", UPSTREAM_KEY)
            .env("OPENAI_API_KEY", UPSTREAM_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log(&format!("e{k}"))?);
        self.edges.insert(k, cmd.spawn().context("starting an edge")?);
        Ok(())
    }

    pub(crate) fn node_pid(&self, id: u64) -> Option<u32> {
        self.nodes.get(&id).map(|c| c.id())
    }

    pub(crate) fn kill_node(&mut self, id: u64) {
        if let Some(mut c) = self.nodes.remove(&id) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn kill_edge(&mut self, k: usize) {
        if let Some(mut c) = self.edges.remove(&k) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded) for the exit.
    pub(crate) fn stop_node(&mut self, id: u64, within: Duration) {
        if let Some(c) = self.nodes.remove(&id) {
            crate::cluster::terminate(c, within);
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.edges)
            .into_iter()
            .chain(std::mem::take(&mut self.nodes).into_iter().map(|(i, c)| (i as usize, c)))
        {
            kill(c.id(), "-CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
