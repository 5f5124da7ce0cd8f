//! One chaos scenario, end to end: a private network of namespaces
//! ([`crate::netns`]), a ledger of real `tollgate ledger` processes, edges
//! (`tollgate edge`), the mock upstream, a seeded load generator, faults
//! injected from outside on a seeded schedule, then healing, and the
//! invariant checker ([`crate::checker`]) over what was recorded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::Mutex;
use tollgate_client::AdminClient;
use tollgate_proto::v1 as pb;
use tollgate_tls::{ClusterTls, Role};

use crate::checker::{self, BudgetFigures, ClientRecord, Fault, History, MemberState};
use crate::load::{http_client, http_get, user_loop, Http, Load, User};
use crate::netns::Net;
use crate::pki::{host_of, Pki};
use crate::procs::{kill, KillOnDrop, Procs};
use crate::regions::{self, Wan, REGION_SCENARIOS};

pub const SCENARIOS: [&str; 7] = [
    "leader-kill",
    "follower-kill",
    "edge-kill",
    "leader-pause",
    "leader-partition",
    "edge-partition",
    "rolling-restart",
];

pub(crate) const UPSTREAM_KEY: &str = "sk-chaos-upstream";
const GRPC_PORT: u16 = 7070;
const HTTP_PORT: u16 = 8080;
const ELECTION_TIMEOUT_MS: u64 = 600;
/// Across regions: ten WAN round trips at the default delay.
const REGIONS_ELECTION_TIMEOUT_MS: u64 = 1_000;
const REGIONS_HEARTBEAT_MS: u64 = 250;
const HOLD_TTL_SECS: u64 = 10;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub scenario: String,
    pub seed: u64,
    pub duration: Duration,
    pub nodes: u64,
    pub edges: usize,
    pub teams: usize,
    pub users: usize,
    /// Requests per second per simulated user.
    pub rate: f64,
    pub strict: bool,
    /// Run the edges with `fail_mode = open` and this allowance each
    /// (nano-USD); the checker then bounds the overshoot instead.
    pub fail_open_allowance: Option<u64>,
    /// Keep the run's directory (logs, data) instead of deleting it.
    pub keep: Option<PathBuf>,
    /// Directory holding the `tollgate` and `mock-upstream` binaries.
    pub bin_dir: PathBuf,
    /// Mutual TLS between every process (the default), else plaintext.
    pub tls: bool,
    /// Budget leases on the edges (their default).
    pub leases: bool,
    /// `--topology regions`: three regions joined by this WAN (else one LAN).
    pub regions: Option<Wan>,
}

impl RunConfig {
    /// The ledger nodes' minimum election timeout.
    pub fn election_timeout_ms(&self) -> u64 {
        if self.regions.is_some() {
            REGIONS_ELECTION_TIMEOUT_MS
        } else {
            ELECTION_TIMEOUT_MS
        }
    }
}

use crate::report::report;
pub use crate::report::{write_report, Report};

pub use crate::rng::Rng;

async fn leader(admin_addrs: &[String], tls: &Option<Arc<ClusterTls>>) -> Option<u64> {
    for a in admin_addrs {
        if let Ok(s) = AdminClient::node_status_at(a, Duration::from_millis(500), tls.clone()).await {
            if s.role == "leader" {
                return Some(s.id);
            }
        }
    }
    None
}

pub(crate) async fn wait_leader(
    admin_addrs: &[String],
    tls: &Option<Arc<ClusterTls>>,
    within: Duration,
) -> Option<u64> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(l) = leader(admin_addrs, tls).await {
            return Some(l);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// A run's processes and where they listen.
pub(crate) struct World {
    pub(crate) p: Procs,
    _mock: KillOnDrop,
    /// `--topology regions`: the WAN's relays.
    _relays: Vec<KillOnDrop>,
    dir: PathBuf,
    truth_log: PathBuf,
    ledger_addrs: BTreeMap<u64, String>,
    /// The ledger nodes' gRPC addresses, for the admin client.
    pub(crate) admin_addrs: Vec<String>,
    pub(crate) edge_addrs: Vec<String>,
    pub(crate) admin_tls: Option<Arc<ClusterTls>>,
}

/// Runs one scenario and checks it.
pub async fn run(cfg: RunConfig) -> anyhow::Result<Report> {
    check(&cfg)?;
    let tmp;
    let dir: PathBuf = match &cfg.keep {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let mut rng = Rng::new(cfg.seed);
    let mut w = start(&cfg, &dir)?;
    let (admin, users) = provision(&cfg, &w).await?;
    let http = http_client();
    wait_edges_ready(&http, &w).await?;
    // The edges' config must include every key before load starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let t0 = Instant::now();
    let records = Arc::new(Mutex::new(Vec::new()));
    let shared = Load {
        client: http.clone(),
        edges: Arc::new(w.edge_addrs.clone()),
        rate: cfg.rate,
        t0,
        until: t0 + cfg.duration,
        out: records.clone(),
    };
    let load: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, u)| tokio::spawn(user_loop(shared.clone(), u.clone(), cfg.seed ^ ((i as u64 + 1) << 32))))
        .collect();
    let faults = inject_faults(&cfg, &mut w, &mut rng, t0).await?;
    for h in load {
        let _ = tokio::time::timeout(Duration::from_secs(60), h).await;
    }
    heal(&cfg, &mut w, &http).await?;
    wait_holds_ended(&admin).await;
    let members = members(&w).await;

    let history = History {
        strict: cfg.strict,
        leases: cfg.leases,
        edge_regions: match cfg.regions {
            Some(_) => (0..cfg.edges).map(|k| regions::name(regions::edge_region(k))).collect(),
            None => vec![],
        },
        key_teams: users.iter().map(|u| (u.key_id.clone(), u.team.clone())).collect(),
        fail_open_allowance: cfg.fail_open_allowance,
        edges: cfg.edges,
        election_timeout_ms: cfg.election_timeout_ms(),
        truth: if w.truth_log.exists() { crate::mock::read_log(&w.truth_log)? } else { vec![] },
        clients: std::mem::take(&mut *records.lock().await),
        budgets: budgets(&admin).await?,
        key_spend: key_spend(&admin).await?,
        members,
        faults,
    };
    if history.budgets.iter().any(|b| b.leased > 0) {
        lease_diagnostics(&http, &w, &history.members, &dir).await;
    }
    drop(w);
    if cfg.keep.is_some() {
        let clients: Vec<&ClientRecord> = history.clients.iter().collect();
        std::fs::write(dir.join("clients.json"), serde_json::to_vec(&clients)?)?;
    }
    Ok(report(&cfg, &history, checker::check(&history)))
}

/// Lease room still counted after every ttl (a violation the checker
/// reports): what each edge still counts and who leads, on stderr and in
/// `leases-left.txt`, to tell an edge that kept its leases alive from a
/// ledger that never expired them.
async fn lease_diagnostics(http: &Http, w: &World, members: &[MemberState], dir: &Path) {
    let mut out = String::new();
    if let Some(l) = leader(&w.admin_addrs, &w.admin_tls).await {
        out.push_str(&format!("leader n{l}\n"));
    }
    for m in members {
        out.push_str(&format!("n{} applied {} digest {}\n", m.id, m.applied_index, m.digest));
    }
    let wanted = ["tollgate_lease_room_nano_usd", "tollgate_admissions_total", "tollgate_outbox_depth"];
    for (k, addr) in w.edge_addrs.iter().enumerate() {
        let metrics = http_get(http, &format!("http://{addr}/metrics")).await.unwrap_or_default();
        for line in metrics.lines().filter(|l| wanted.iter().any(|w| l.starts_with(w))) {
            out.push_str(&format!("e{k} {line}\n"));
        }
    }
    eprintln!("lease room left after every ttl:\n{out}");
    let _ = std::fs::write(dir.join("leases-left.txt"), out);
}

fn check(cfg: &RunConfig) -> anyhow::Result<()> {
    let regional = REGION_SCENARIOS.contains(&cfg.scenario.as_str());
    if !SCENARIOS.contains(&cfg.scenario.as_str()) && !regional {
        bail!(
            "unknown scenario {:?}; one of: {}, or with --topology regions: {}",
            cfg.scenario,
            SCENARIOS.join(", "),
            REGION_SCENARIOS.join(", ")
        );
    }
    if regional && cfg.regions.is_none() {
        bail!("scenario {} needs --topology regions", cfg.scenario);
    }
    if cfg.nodes < 3 || cfg.edges < 1 || cfg.users == 0 || cfg.teams == 0 {
        bail!("need at least 3 ledger nodes, 1 edge, 1 team and 1 user");
    }
    if cfg.regions.is_some() && cfg.edges < regions::REGIONS {
        bail!("--topology regions needs an edge in each of its {} regions (--edges 3 or more)", regions::REGIONS);
    }
    if let Some(w) = &cfg.regions {
        if !(0.0..=0.5).contains(&w.loss) {
            bail!("--wan-loss {} must be within 0..0.5", w.loss);
        }
    }
    let mut bins = vec!["tollgate", "mock-upstream"];
    if cfg.regions.is_some() {
        bins.push("wan-relay");
    }
    for b in bins.into_iter().map(|b| cfg.bin_dir.join(b)) {
        if !b.exists() {
            bail!(
                "{} not found: build it first (cargo build --release -p tollgate-node -p tollgate-chaos)",
                b.display()
            );
        }
    }
    Ok(())
}

/// The network, the mock upstream, the ledger nodes and the edges.
fn start(cfg: &RunConfig, dir: &Path) -> anyhow::Result<World> {
    let bin = cfg.bin_dir.join("tollgate");
    let mut hosts: Vec<String> = (1..=cfg.nodes).map(|i| format!("n{i}")).collect();
    hosts.extend((0..cfg.edges).map(|k| format!("e{k}")));
    let net = Net::create(&hosts.iter().map(String::as_str).collect::<Vec<_>>())?;
    let ledger_addrs: BTreeMap<u64, String> =
        (1..=cfg.nodes).map(|i| (i, format!("{}:{GRPC_PORT}", net.host(&format!("n{i}")).ip))).collect();
    // Across regions members reach each other through the WAN's relays.
    let advertised = |i: &u64, a: &String| match cfg.regions {
        Some(_) => regions::wan_addr(*i, GRPC_PORT),
        None => a.clone(),
    };
    let ledger_peers =
        ledger_addrs.iter().map(|(i, a)| format!("{i}={}", advertised(i, a))).collect::<Vec<_>>().join(",");
    let admin_addrs: Vec<String> = ledger_addrs.values().cloned().collect();

    // The mock upstream, in the root namespace on the bridge's address.
    let mock_port = std::net::TcpListener::bind((net.gateway_ip.as_str(), 0))?.local_addr()?.port();
    let mock_url = format!("http://{}:{mock_port}", net.gateway_ip);
    let truth_log = dir.join("truth.jsonl");
    let mock = KillOnDrop(
        Command::new(cfg.bin_dir.join("mock-upstream"))
            .args(["--listen", &format!("{}:{mock_port}", net.gateway_ip), "--event-delay-ms", "25"])
            .args(["--expect-key", UPSTREAM_KEY, "--log"])
            .arg(&truth_log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mock.log"))?)
            .spawn()
            .context("starting mock-upstream")?,
    );
    let edge_cfg = write_edge_config(cfg, dir)?;
    // Every process gets its own certificate from a CA made for this run.
    let pki = if cfg.tls { Some(Pki::create(&dir.join("pki"))?) } else { None };
    let transport = |role: &Role, hosts: Vec<String>| -> anyhow::Result<Vec<String>> {
        match &pki {
            Some(pki) => Ok(Pki::flags(&pki.files(role, &hosts)?)),
            None => Ok(vec!["--insecure-plaintext".into()]),
        }
    };
    let node_flags = ledger_addrs
        .iter()
        .map(|(id, addr)| {
            let names = vec![host_of(addr), host_of(&advertised(id, addr))];
            let mut flags = transport(&Role::Ledger(*id), names)?;
            if cfg.regions.is_some() {
                flags.extend(["--region".into(), regions::name(regions::node_region(*id))]);
                // openraft gives an AppendEntries one heartbeat to answer:
                // several WAN round trips.
                flags.extend(["--heartbeat-ms".into(), REGIONS_HEARTBEAT_MS.to_string()]);
            }
            Ok((*id, flags))
        })
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    let admin_tls = pki.as_ref().map(|p| p.client(&Role::Admin("chaos".into()))).transpose()?;
    let mut p = Procs {
        bin,
        dir: dir.to_path_buf(),
        net,
        ledger_peers,
        node_flags,
        ledger_addrs: ledger_addrs.clone(),
        nodes: BTreeMap::new(),
        edges: BTreeMap::new(),
        edge_args: BTreeMap::new(),
        election_timeout_ms: cfg.election_timeout_ms(),
    };
    let relays = match cfg.regions {
        Some(wan) => regions::start_relays(&p.net, cfg, wan, dir, &ledger_addrs, GRPC_PORT)?,
        None => vec![],
    };
    for id in 1..=cfg.nodes {
        p.spawn_node(id)?;
    }
    let edge_addrs: Vec<String> =
        (0..cfg.edges).map(|k| format!("{}:{HTTP_PORT}", p.net.host(&format!("e{k}")).ip)).collect();
    for (k, addr) in edge_addrs.iter().enumerate() {
        let mut args: Vec<String> = vec!["edge".into(), "--listen".into(), addr.clone()];
        let ledger = match cfg.regions {
            Some(_) => regions::edge_ledger_list(k, &ledger_addrs, GRPC_PORT),
            None => admin_addrs.clone(),
        };
        args.extend(["--ledger".into(), ledger.join(","), "--data-dir".into()]);
        args.push(dir.join(format!("e{k}")).display().to_string());
        args.extend(["--upstream-anthropic".into(), mock_url.clone(), "--upstream-openai".into(), mock_url.clone()]);
        args.extend(["--estimate".into(), if cfg.strict { "strict" } else { "estimate" }.into()]);
        args.extend(["--config".into(), edge_cfg.display().to_string()]);
        args.extend(transport(&Role::Edge(format!("e{k}")), vec![])?);
        if cfg.regions.is_some() {
            args.extend(["--region".into(), regions::name(regions::edge_region(k))]);
        }
        p.edge_args.insert(k, args);
        p.spawn_edge(k)?;
    }
    Ok(World {
        p,
        _mock: mock,
        _relays: relays,
        dir: dir.to_path_buf(),
        truth_log,
        ledger_addrs,
        admin_addrs,
        edge_addrs,
        admin_tls,
    })
}

/// The edges' config file: short holds, fail-open when asked, and estimate
/// mode's seed and floor scaled to the load's small `max_tokens`, so the
/// percentile (and what it misses) is exercised.
fn write_edge_config(cfg: &RunConfig, dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("edge.toml");
    let fail_open = match cfg.fail_open_allowance {
        Some(n) => format!(
            "fail_mode = \"open\"\nfail_open_allowance_usd = \"{}.{:09}\"\n",
            n / 1_000_000_000,
            n % 1_000_000_000
        ),
        None => String::new(),
    };
    let sizing = if cfg.strict { "" } else { "output_seed_tokens = 64\noutput_floor_tokens = 16\n" };
    std::fs::write(
        &path,
        format!(
            "version = 1\n[edge]\nhold_ttl_secs = {HOLD_TTL_SECS}\nadmission_timeout_ms = 3000\nshutdown_grace_secs = 5\nleases = {}\n{fail_open}{sizing}",
            cfg.leases
        ),
    )?;
    Ok(path)
}

/// Waits for the admin API, then creates the teams (each with a hard
/// budget sized to run out during the run: about 30% of the expected
/// spend, ~$0.00066 a request on average), the users and their keys.
async fn provision(cfg: &RunConfig, w: &World) -> anyhow::Result<(AdminClient, Vec<User>)> {
    let token_path = w.dir.join("n1").join("admin.token");
    let deadline = Instant::now() + Duration::from_secs(60);
    let admin = loop {
        if let Ok(t) = std::fs::read_to_string(&token_path) {
            let a = AdminClient::new(&w.admin_addrs, Some(t.trim().to_string()), w.admin_tls.clone())?;
            if a.call(pb::ListBudgetsRequest {}, |mut c, r| async move { c.list_budgets(r).await }).await.is_ok() {
                break a;
            }
        }
        if Instant::now() > deadline {
            bail!("the ledger never became ready; logs in {}", w.dir.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let expected = cfg.users as f64 * cfg.rate * cfg.duration.as_secs_f64() * 660_000.0;
    let per_team = (expected * 0.3 / cfg.teams as f64).max(20_000_000.0) as u64;
    for t in 0..cfg.teams {
        let team = format!("team{t}");
        admin
            .call(pb::CreateTeamRequest { name: team.clone() }, |mut c, r| async move { c.create_team(r).await })
            .await?;
        let limit_usd = format!("{}.{:09}", per_team / 1_000_000_000, per_team % 1_000_000_000);
        crate::cluster::set_budget(&admin, &format!("team:{team}"), &limit_usd).await?;
    }
    let mut users = Vec::new();
    for u in 0..cfg.users {
        let team = format!("team{}", u % cfg.teams);
        // Across regions a user sends to the edges of its own region.
        let edges = match cfg.regions {
            Some(_) => (0..cfg.edges).filter(|k| regions::edge_region(*k) == u % regions::REGIONS).collect(),
            None => vec![],
        };
        let email = format!("user{u}@chaos.io");
        let req = pb::CreateUserRequest { email: email.clone(), team: team.clone() };
        admin.call(req, |mut c, r| async move { c.create_user(r).await }).await?;
        let req = pb::CreateKeyRequest { user: email, name: "load".into() };
        let k = admin.call(req, |mut c, r| async move { c.create_key(r).await }).await?;
        users.push(User { key_id: k.id, secret: k.secret, team, edges });
    }
    Ok((admin, users))
}

async fn wait_edges_ready(http: &Http, w: &World) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for addr in &w.edge_addrs {
        while http_get(http, &format!("http://{addr}/readyz")).await.is_none() {
            if Instant::now() > deadline {
                bail!("edge {addr} never became ready; logs in {}", w.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Faults on a schedule from the seed: the first at 20–40% of the run,
/// then every 15–25 s while there is time to heal before the end.
async fn inject_faults(cfg: &RunConfig, w: &mut World, rng: &mut Rng, t0: Instant) -> anyhow::Result<Vec<Fault>> {
    let mut faults: Vec<Fault> = Vec::new();
    let mut at = cfg.duration.mul_f64(0.2 + 0.2 * rng.unit());
    let ms = |t: Instant| t.duration_since(t0).as_millis() as u64;
    loop {
        if at + Duration::from_secs(6) > cfg.duration && !faults.is_empty() {
            break;
        }
        tokio::time::sleep_until((t0 + at).into()).await;
        let mut f = Fault { kind: cfg.scenario.clone(), at_ms: ms(Instant::now()), ..Default::default() };
        if REGION_SCENARIOS.contains(&cfg.scenario.as_str()) {
            regions::inject(&cfg.scenario, w, rng, &mut f, faults.len(), || ms(Instant::now())).await?;
        } else {
            inject(cfg, w, rng, &mut f, || ms(Instant::now())).await?;
        }
        f.healed_ms = ms(Instant::now());
        faults.push(f);
        at = Duration::from_millis(ms(Instant::now())) + Duration::from_millis(15_000 + rng.below(10_000));
    }
    Ok(faults)
}

/// One fault of the run's scenario, healed before it returns; `f` gets its
/// target and the moment it struck (`now`, ms into the run).
async fn inject(
    cfg: &RunConfig,
    w: &mut World,
    rng: &mut Rng,
    f: &mut Fault,
    now: impl Fn() -> u64,
) -> anyhow::Result<()> {
    let leader = || wait_leader(&w.admin_addrs, &w.admin_tls, Duration::from_secs(10));
    match cfg.scenario.as_str() {
        "leader-kill" | "follower-kill" => {
            let l = leader().await.context("no leader")?;
            let target = if cfg.scenario == "leader-kill" {
                l
            } else {
                let others: Vec<u64> = (1..=cfg.nodes).filter(|i| *i != l).collect();
                others[rng.below(others.len() as u64) as usize]
            };
            f.target = format!("n{target}");
            f.at_ms = now();
            w.p.kill_node(target);
            tokio::time::sleep(Duration::from_millis(2_000 + rng.below(2_000))).await;
            w.p.spawn_node(target)?;
        }
        "edge-kill" => {
            let k = rng.below(cfg.edges as u64) as usize;
            f.target = format!("e{k}");
            f.edge = Some(k);
            f.at_ms = now();
            w.p.kill_edge(k);
            tokio::time::sleep(Duration::from_millis(1_000 + rng.below(2_000))).await;
            w.p.spawn_edge(k)?;
        }
        "leader-pause" => {
            let l = leader().await.context("no leader")?;
            f.target = format!("n{l}");
            let pid = w.p.node_pid(l).context("leader not running")?;
            f.at_ms = now();
            kill(pid, "-STOP");
            // Longer than the largest election timeout (2 × the minimum).
            tokio::time::sleep(Duration::from_millis(2 * 2 * cfg.election_timeout_ms() + rng.below(1_000))).await;
            kill(pid, "-CONT");
        }
        "leader-partition" => {
            let l = leader().await.context("no leader")?;
            f.target = format!("n{l}");
            let others: Vec<String> = (1..=cfg.nodes).filter(|i| *i != l).map(|i| format!("n{i}")).collect();
            f.at_ms = now();
            w.p.net.isolate(&format!("n{l}"), &others)?;
            tokio::time::sleep(Duration::from_millis(3_000 + rng.below(3_000))).await;
            w.p.net.heal()?;
        }
        "edge-partition" => {
            let k = rng.below(cfg.edges as u64) as usize;
            f.target = format!("e{k}");
            let ledger: Vec<String> = (1..=cfg.nodes).map(|i| format!("n{i}")).collect();
            f.at_ms = now();
            w.p.net.isolate(&format!("e{k}"), &ledger)?;
            tokio::time::sleep(Duration::from_millis(3_000 + rng.below(3_000))).await;
            w.p.net.heal()?;
        }
        "rolling-restart" => {
            f.target = "all".into();
            for id in 1..=cfg.nodes {
                w.p.stop_node(id, Duration::from_secs(10));
                w.p.spawn_node(id)?;
                wait_rejoined(w, id).await?;
            }
        }
        _ => unreachable!(),
    }
    Ok(())
}

/// Waits (bounded) until restarted node `id` knows a leader and has applied entries.
async fn wait_rejoined(w: &World, id: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s =
            AdminClient::node_status_at(&w.ledger_addrs[&id], Duration::from_millis(500), w.admin_tls.clone()).await;
        if s.is_ok_and(|s| s.has_leader && s.applied_index > 0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("node {id} did not rejoin after its restart");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Heals the network, resumes and restarts every process, and lets the
/// edges' outboxes drain (bounded: the checker reports what is missing).
async fn heal(cfg: &RunConfig, w: &mut World, http: &Http) -> anyhow::Result<()> {
    w.p.net.heal()?;
    for c in w.p.nodes.values() {
        kill(c.id(), "-CONT");
    }
    for id in 1..=cfg.nodes {
        if !w.p.nodes.contains_key(&id) {
            w.p.spawn_node(id)?;
        }
    }
    for k in 0..cfg.edges {
        if !w.p.edges.contains_key(&k) {
            w.p.spawn_edge(k)?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for addr in &w.edge_addrs {
        loop {
            let m = http_get(http, &format!("http://{addr}/metrics")).await.unwrap_or_default();
            if m.lines().any(|l| l == "tollgate_outbox_depth 0") || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

async fn usage(admin: &AdminClient, by: &str) -> Result<pb::UsageResponse, tonic::Status> {
    admin.call(pb::UsageRequest { by: by.into() }, |mut c, r| async move { c.usage(r).await }).await
}

/// How long nothing may be held or leased before the run is over: longer
/// than an edge takes to go idle (5 s without requests) plus one renewal.
/// Until then an edge may ask for lease room again (after a pause, or a
/// give-back), so a moment with nothing leased is not the end of leasing.
const SETTLED_FOR: Duration = Duration::from_secs(7);

/// Holds of requests whose edge died end by expiry, one ttl after their
/// last extension; leases are given back by idle edges, or expire: waits
/// (bounded) until nothing has been held or leased for [`SETTLED_FOR`].
async fn wait_holds_ended(admin: &AdminClient) {
    let deadline = Instant::now() + Duration::from_secs(HOLD_TTL_SECS * 3 + 20);
    let mut empty_since: Option<Instant> = None;
    loop {
        let held: u64 = usage(admin, "key").await.map(|r| r.rows.iter().map(|r| r.held_nano_usd).sum()).unwrap_or(1);
        let leased: u64 = usage(admin, "").await.map(|r| r.rows.iter().map(|r| r.leased_nano_usd).sum()).unwrap_or(1);
        let now = Instant::now();
        if held + leased == 0 {
            if now.duration_since(*empty_since.get_or_insert(now)) >= SETTLED_FOR {
                return;
            }
        } else {
            empty_since = None;
        }
        if now > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every member's applied index and digest, once they agree (or after 30 s).
async fn members(w: &World) -> Vec<MemberState> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ms = Vec::new();
        for (id, addr) in &w.ledger_addrs {
            match AdminClient::node_status_at(addr, Duration::from_secs(2), w.admin_tls.clone()).await {
                Ok(s) => ms.push(MemberState {
                    id: *id,
                    reachable: true,
                    applied_index: s.applied_index,
                    digest: s.state_digest,
                }),
                Err(_) => ms.push(MemberState { id: *id, ..Default::default() }),
            }
        }
        let agree =
            ms.iter().all(|m| m.reachable && m.applied_index == ms[0].applied_index && m.digest == ms[0].digest);
        if agree || Instant::now() > deadline {
            return ms;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each budget's figures as the ledger reports them.
async fn budgets(admin: &AdminClient) -> anyhow::Result<Vec<BudgetFigures>> {
    let modes: BTreeMap<String, bool> = admin
        .call(pb::ListBudgetsRequest {}, |mut c, r| async move { c.list_budgets(r).await })
        .await?
        .budgets
        .into_iter()
        .map(|b| (b.scope, b.mode == "hard"))
        .collect();
    Ok(usage(admin, "")
        .await?
        .rows
        .into_iter()
        .map(|r| BudgetFigures {
            hard: modes.get(&r.scope).copied().unwrap_or(false),
            scope: r.scope,
            limit: r.limit_nano_usd.unwrap_or(u64::MAX),
            spent: r.spent_nano_usd,
            held: r.held_nano_usd,
            unsettled: r.unsettled_nano_usd,
            leased: r.leased_nano_usd,
        })
        .collect())
}

/// Spent and held per key id.
async fn key_spend(admin: &AdminClient) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    Ok(usage(admin, "key")
        .await?
        .rows
        .into_iter()
        .filter_map(|r| r.scope.strip_prefix("key:").map(|k| (k.to_string(), (r.spent_nano_usd, r.held_nano_usd))))
        .collect())
}
