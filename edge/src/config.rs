//! The edge's settings: built-in defaults, then the config file
//! (`--config tollgate.toml`, versioned, unknown fields rejected), then
//! `TOLLGATE_*` environment variables, then command-line flags.
//!
//! ```toml
//! version = 1
//!
//! [edge]
//! listen = "127.0.0.1:8080"
//! ledger = ["10.0.0.1:7070", "10.0.0.2:7070", "10.0.0.3:7070"]
//! data_dir = "/var/lib/tollgate"
//! estimate = "estimate"          # or "strict"
//! output_percentile = 95         # estimate: reserve this percentile of recent output
//! output_seed_tokens = 8192      #   before 8 requests of a (user, model) are seen
//! output_floor_tokens = 1024     #   and never less than this (nor more than max_tokens)
//! clamp_max_tokens = false       # lower max_tokens to fit a hard budget instead of a 402
//! forward_client_metadata = false # pass Codex's x-codex-turn-metadata (paths, commits) upstream
//! stored_responses = false        # serve GET/DELETE/cancel of stored responses (any key could, by id)
//! leases = true                  # admit locally from budget leases (false: a Raft commit per request)
//! lease_ttl_secs = 10            # a lease's life; renewed in the background
//! region = "eu-west"             # prefer ledger nodes of this region (their --region)
//! fail_mode = "closed"           # or "open" (admit up to the allowance)
//! fail_open_allowance_usd = "10"
//! max_body_bytes = 33554432
//! ops_listen = "127.0.0.1:9090"  # /metrics, /healthz, /readyz on their own port
//!
//! [cluster_tls]                  # mutual TLS to the ledger (or --tls-ca/--tls-cert/--tls-key)
//! ca = "/etc/tollgate/ca.pem"
//! cert = "/etc/tollgate/edge-eu-1.pem"
//! key = "/etc/tollgate/edge-eu-1.key"
//!
//! [tls]                          # HTTPS for AI tools (or --http-tls-cert/--http-tls-key)
//! cert = "/etc/tollgate/gateway.pem"
//! key = "/etc/tollgate/gateway.key"
//!
//! [upstream.anthropic]
//! url = "https://api.anthropic.com"
//! # api_key = "…"                # or ANTHROPIC_API_KEY in the environment
//!
//! [pricing]
//! unknown_model = "deny"         # or "dearest"
//!
//! [pricing.models."my-fine-tune"] # exact id; nano-USD per token (3000 = $3 / MTok)
//! input = 1000
//! output = 4000
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use tollgate_tls::TlsFiles;
use tollgate_types::money::NanoUsd;

use crate::pricing::{PriceEntry, PriceTable, UnknownModel};

/// `fail_open_allowance_usd` unless set: $10 per edge per outage.
pub const DEFAULT_FAIL_OPEN_ALLOWANCE_NANO: u64 = 10_000_000_000;

/// The config file format version this binary reads.
pub const CONFIG_VERSION: u32 = 1;

/// How the input side of a request is estimated before it is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EstimateMode {
    /// Worst case: one token per body byte, every input token at its
    /// dearest rate, output = `max_tokens`. Hard caps are never exceeded.
    Strict,
    /// Characters / 3.5 at the input rate; output = a high percentile of
    /// this user's recent outputs for the model, within a floor and
    /// `max_tokens` (`edge::sizing`).
    Estimate,
}

/// A lowercase enum value as its serde name says (the one definition the
/// config file, the environment and the flags share).
fn parse_enum<T: serde::de::DeserializeOwned>(what: &str, choices: &str, s: &str) -> Result<T, String> {
    use serde::de::IntoDeserializer;
    let d: serde::de::value::StrDeserializer<'_, serde::de::value::Error> = s.into_deserializer();
    T::deserialize(d).map_err(|_| format!("{what} must be {choices}, not {s:?}"))
}

impl EstimateMode {
    pub fn parse(s: &str) -> Result<EstimateMode, String> {
        parse_enum("estimate", "strict or estimate", s)
    }
}

/// What admission does when the ledger cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Refuse with a clear 503 (the default).
    Closed,
    /// Admit anyway, up to `fail_open_allowance_usd` of reservations per
    /// outage on this edge, and charge the ledger when it is back.
    Open,
}

impl FailMode {
    pub fn parse(s: &str) -> Result<FailMode, String> {
        parse_enum("fail_mode", "closed or open", s)
    }
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub version: u32,
    #[serde(default)]
    pub edge: EdgeSection,
    #[serde(default)]
    pub up: UpSection,
    #[serde(default)]
    pub upstream: UpstreamSection,
    #[serde(default)]
    pub pricing: PricingSection,
    /// Mutual TLS between this edge and the ledger.
    #[serde(default)]
    pub cluster_tls: ClusterTlsSection,
    /// TLS on the HTTP listener, for the AI tools.
    #[serde(default)]
    pub tls: HttpTlsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsSection {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsSection {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSection {
    pub listen: Option<SocketAddr>,
    pub ledger: Option<Vec<String>>,
    pub data_dir: Option<PathBuf>,
    pub estimate: Option<EstimateMode>,
    pub fail_mode: Option<FailMode>,
    /// Dollars, as a string parsed exactly (e.g. "25" or "2.50").
    pub fail_open_allowance_usd: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub max_response_bytes: Option<usize>,
    pub hold_ttl_secs: Option<u64>,
    pub admission_timeout_ms: Option<u64>,
    pub upstream_timeout_secs: Option<u64>,
    pub stream_idle_timeout_secs: Option<u64>,
    pub body_read_timeout_secs: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
    pub max_outbox: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub first_byte_timeout_ms: Option<u64>,
    pub max_concurrent_per_key: Option<usize>,
    pub ops_listen: Option<SocketAddr>,
    pub openai_default_max_tokens: Option<u64>,
    pub output_percentile: Option<u64>,
    pub output_seed_tokens: Option<u64>,
    pub output_floor_tokens: Option<u64>,
    pub clamp_max_tokens: Option<bool>,
    pub forward_client_metadata: Option<bool>,
    pub stored_responses: Option<bool>,
    pub leases: Option<bool>,
    pub lease_ttl_secs: Option<u64>,
    pub region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpSection {
    pub grpc: Option<SocketAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    #[serde(default)]
    pub anthropic: UpstreamEntry,
    #[serde(default)]
    pub openai: UpstreamEntry,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamEntry {
    pub url: Option<String>,
    pub api_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingSection {
    /// What to do with a model the price book does not list: `deny` (the
    /// default) or `dearest`.
    pub unknown_model: Option<String>,
    /// Price unknown models at these rates instead.
    pub fallback: Option<PriceEntry>,
    /// Models added to (or replacing in) the shipped book, by exact id.
    #[serde(default)]
    pub models: std::collections::BTreeMap<String, PriceEntry>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<FileConfig, String> {
        let cfg: FileConfig = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        if cfg.version != CONFIG_VERSION {
            return Err(format!(
                "config version {} is not supported by this binary (it reads version {CONFIG_VERSION})",
                cfg.version
            ));
        }
        Ok(cfg)
    }
}

/// One upstream provider.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Base URL without a trailing slash, e.g. `https://api.anthropic.com`.
    pub url: String,
    /// The gateway's own credential; never the client's.
    pub api_key: Option<String>,
}

/// Everything the edge runs with, resolved.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub listen: SocketAddr,
    pub ledger: Vec<String>,
    pub data_dir: PathBuf,
    pub anthropic: Upstream,
    pub openai: Upstream,
    pub estimate: EstimateMode,
    pub fail_mode: FailMode,
    /// With `fail_mode = open`: the most this edge admits (by reservation)
    /// while the ledger is out of reach, per outage.
    pub fail_open_allowance: NanoUsd,
    pub max_body_bytes: usize,
    pub max_response_bytes: usize,
    pub hold_ttl: Duration,
    pub admission_timeout: Duration,
    pub upstream_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub body_read_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_outbox: usize,
    /// Open client connections at once, and from one IP address.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// A connection that sends no byte (or does not finish its TLS
    /// handshake) within this is closed; so is one idle this long between requests.
    pub first_byte_timeout: Duration,
    /// Requests of one virtual key in flight at once; more get a 429.
    pub max_concurrent_per_key: usize,
    /// Where `/metrics`, `/healthz` and `/readyz` are served on their own
    /// (they stay on the main listener too).
    pub ops_listen: Option<SocketAddr>,
    /// Mutual TLS to the ledger.
    pub cluster_tls: Option<TlsFiles>,
    /// Talk to a non-loopback ledger without TLS anyway.
    pub insecure_plaintext: bool,
    /// HTTPS on the listener: certificate and key files.
    pub http_tls: Option<(PathBuf, PathBuf)>,
    /// Output tokens reserved for an OpenAI request that sets no maximum
    /// (`estimate` mode only; `strict` mode requires a maximum).
    pub openai_default_max_tokens: u64,
    /// How `estimate` mode sizes the output side of a reservation.
    pub sizing: crate::edge::sizing::Sizing,
    /// Forward a request whose reservation does not fit a hard budget's
    /// room with `max_tokens` lowered to what the room pays for, instead of
    /// a 402 (never below the floor or a thinking budget).
    pub clamp_max_tokens: bool,
    /// Forward Codex's `x-codex-turn-metadata` (it carries local workspace
    /// paths and commit hashes) to the provider; off, only its turn id is
    /// read, for attribution.
    pub forward_client_metadata: bool,
    /// Forward retrieve, delete, cancel and input items of stored
    /// responses. They all live in the gateway's one OpenAI account, so any
    /// key that knows an id could reach another user's: off by default.
    pub stored_responses: bool,
    /// Admit from budget leases (slices of hard budgets' room granted to
    /// this edge), falling back to a per-request hold when they lack room.
    pub leases: bool,
    /// How long a lease is granted for; renewed in the background.
    pub lease_ttl: Duration,
    /// This edge's region: ledger nodes of the same region come first.
    pub region: Option<String>,
    pub prices: PriceTable,
}

/// Values given on the command line (each overrides file and environment).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub ledger: Option<Vec<String>>,
    pub data_dir: Option<PathBuf>,
    pub upstream_anthropic: Option<String>,
    pub upstream_openai: Option<String>,
    pub estimate: Option<EstimateMode>,
    pub cluster_tls: Option<TlsFiles>,
    pub insecure_plaintext: bool,
    pub http_tls_cert: Option<PathBuf>,
    pub http_tls_key: Option<PathBuf>,
    pub ops_listen: Option<SocketAddr>,
    pub region: Option<String>,
}

/// Whether `addr` (`host:port`) is on this machine only: a loopback IP or
/// `localhost`.
pub fn is_loopback(addr: &str) -> bool {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return sa.ip().is_loopback();
    }
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn both<T>(what: &str, a: Option<T>, b: Option<T>) -> Result<Option<(T, T)>, String> {
    match (a, b) {
        (Some(a), Some(b)) => Ok(Some((a, b))),
        (None, None) => Ok(None),
        _ => Err(format!("{what} needs both a certificate and a key")),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
    match env(name) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| format!("{name}={v:?} is not valid")),
    }
}

fn clean_url(name: &str, url: String) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/').to_string();
    let Some(rest) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) else {
        return Err(format!("{name} {url:?} must start with http:// or https://"));
    };
    if rest.is_empty() || rest.contains('?') || rest.contains('#') {
        return Err(format!("{name} {url:?} must be a base URL (scheme, host, optional port and path)"));
    }
    Ok(url)
}

/// The shipped price book with the file's own models and its rule for
/// unknown models (`TOLLGATE_UNKNOWN_MODEL` overrides the file's).
fn price_table(file: &FileConfig) -> Result<PriceTable, String> {
    let mut prices = PriceTable::builtin();
    let unknown = env("TOLLGATE_UNKNOWN_MODEL").or(file.pricing.unknown_model.clone());
    prices.set_unknown(match (unknown.as_deref().map(str::trim), &file.pricing.fallback) {
        (Some("deny"), _) | (None, None) => UnknownModel::Deny,
        (Some("dearest"), _) => UnknownModel::Dearest,
        (None, Some(f)) => UnknownModel::Fallback(Box::new(f.price("fallback"))),
        (Some(other), _) => {
            return Err(format!("pricing.unknown_model must be deny or dearest, not {other:?}"));
        }
    });
    for (id, entry) in &file.pricing.models {
        if !crate::edge::valid_model_id(id) {
            return Err(format!("pricing.models: {id:?} is not a valid model id"));
        }
        prices.set(entry.price(id));
    }
    Ok(prices)
}

/// Mutual TLS to the ledger: the flags' files, else the file's; without
/// it, a ledger off loopback is refused unless `--insecure-plaintext`.
fn cluster_tls(file: &FileConfig, flags: &Overrides, ledger: &[String]) -> Result<Option<TlsFiles>, String> {
    let cluster_tls = match flags.cluster_tls.clone() {
        Some(f) => Some(f),
        None => {
            let t = &file.cluster_tls;
            match (&t.ca, &t.cert, &t.key) {
                (None, None, None) => None,
                (Some(ca), Some(cert), Some(key)) => {
                    Some(TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() })
                }
                _ => return Err("cluster_tls needs all three of ca, cert and key".into()),
            }
        }
    };
    if cluster_tls.is_none() && !flags.insecure_plaintext {
        if let Some(far) = ledger.iter().find(|a| !is_loopback(a)) {
            return Err(format!(
                "the ledger address {far} is not loopback and this edge has no TLS: give --tls-ca, --tls-cert \
                 and --tls-key (an edge certificate; see `tollgate cert`), or --insecure-plaintext on a network \
                 you trust completely"
            ));
        }
    }
    Ok(cluster_tls)
}

/// HTTPS on the listener: flags or environment, else the file's `[tls]`.
fn http_tls(file: &FileConfig, flags: &Overrides) -> Result<Option<(PathBuf, PathBuf)>, String> {
    let given = both(
        "--http-tls-cert/--http-tls-key",
        flags.http_tls_cert.clone().or(env("TOLLGATE_HTTP_TLS_CERT").map(PathBuf::from)),
        flags.http_tls_key.clone().or(env("TOLLGATE_HTTP_TLS_KEY").map(PathBuf::from)),
    )?;
    match given {
        Some(p) => Ok(Some(p)),
        None => both("[tls]", file.tls.cert.clone(), file.tls.key.clone()),
    }
}

impl EdgeSettings {
    /// Resolves defaults ← file ← `TOLLGATE_*` env ← flags. `ledger_default`
    /// is what `tollgate up` passes (its own gRPC address).
    pub fn resolve(
        file: &FileConfig,
        flags: &Overrides,
        ledger_default: Option<Vec<String>>,
    ) -> Result<EdgeSettings, String> {
        let e = &file.edge;
        let listen = flags
            .listen
            .or(env_parse("TOLLGATE_LISTEN")?)
            .or(e.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let ledger = flags
            .ledger
            .clone()
            .or_else(|| env("TOLLGATE_LEDGER").map(|v| v.split(',').map(|s| s.trim().to_string()).collect()))
            .or_else(|| e.ledger.clone())
            .or(ledger_default)
            .ok_or("no ledger address: give --ledger ADDR[,ADDR…], TOLLGATE_LEDGER or edge.ledger")?;
        let ledger: Vec<String> = ledger.into_iter().filter(|s| !s.is_empty()).collect();
        if ledger.is_empty() {
            return Err("the ledger address list is empty".into());
        }
        let data_dir = flags
            .data_dir
            .clone()
            .or(env("TOLLGATE_DATA_DIR").map(PathBuf::from))
            .or(e.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("./tollgate-data"));
        let upstream = |flag: &Option<String>, env_name: &str, entry: &UpstreamEntry, key_env: &str, default: &str| {
            let url = flag.clone().or(env(env_name)).or(entry.url.clone()).unwrap_or_else(|| default.to_string());
            let api_key = env(key_env).or(entry.api_key.clone());
            Ok::<_, String>(Upstream { url: clean_url(env_name, url)?, api_key })
        };
        let anthropic = upstream(
            &flags.upstream_anthropic,
            "TOLLGATE_UPSTREAM_ANTHROPIC",
            &file.upstream.anthropic,
            "ANTHROPIC_API_KEY",
            "https://api.anthropic.com",
        )?;
        let openai = upstream(
            &flags.upstream_openai,
            "TOLLGATE_UPSTREAM_OPENAI",
            &file.upstream.openai,
            "OPENAI_API_KEY",
            "https://api.openai.com",
        )?;
        let estimate = match (flags.estimate, env("TOLLGATE_ESTIMATE")) {
            (Some(m), _) => m,
            (None, Some(v)) => EstimateMode::parse(v.trim()).map_err(|m| format!("TOLLGATE_ESTIMATE: {m}"))?,
            (None, None) => e.estimate.unwrap_or(EstimateMode::Estimate),
        };
        let fail_mode = match env("TOLLGATE_FAIL_MODE") {
            Some(v) => FailMode::parse(v.trim()).map_err(|m| format!("TOLLGATE_FAIL_MODE: {m}"))?,
            None => e.fail_mode.unwrap_or(FailMode::Closed),
        };
        let fail_open_allowance = match env("TOLLGATE_FAIL_OPEN_ALLOWANCE_USD").or(e.fail_open_allowance_usd.clone()) {
            Some(v) => v.trim().parse::<NanoUsd>().map_err(|err| format!("fail_open_allowance_usd {v:?}: {err}"))?,
            None => NanoUsd(DEFAULT_FAIL_OPEN_ALLOWANCE_NANO),
        };
        let num = |name: &str, file: Option<u64>, default: u64| -> Result<u64, String> {
            Ok(env_parse::<u64>(name)?.or(file).unwrap_or(default))
        };
        let secs = |name: &str, file: Option<u64>, default: u64| -> Result<Duration, String> {
            let v = num(name, file, default)?;
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
            Ok(Duration::from_secs(v))
        };
        let size = |name: &str, file: Option<usize>, default: usize| -> Result<usize, String> {
            let v = env_parse::<usize>(name)?.or(file).unwrap_or(default);
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
            Ok(v)
        };
        let prices = price_table(file)?;
        let cluster_tls = cluster_tls(file, flags, &ledger)?;
        let http_tls = http_tls(file, flags)?;
        let ops_listen = flags.ops_listen.or(env_parse("TOLLGATE_OPS_LISTEN")?).or(e.ops_listen);
        let s = EdgeSettings {
            listen,
            ledger,
            data_dir,
            anthropic,
            openai,
            estimate,
            fail_mode,
            fail_open_allowance,
            max_body_bytes: size("TOLLGATE_MAX_BODY_BYTES", e.max_body_bytes, 32 * 1024 * 1024)?,
            max_response_bytes: size("TOLLGATE_MAX_RESPONSE_BYTES", e.max_response_bytes, 64 * 1024 * 1024)?,
            hold_ttl: secs("TOLLGATE_HOLD_TTL_SECS", e.hold_ttl_secs, 600)?,
            admission_timeout: Duration::from_millis(num(
                "TOLLGATE_ADMISSION_TIMEOUT_MS",
                e.admission_timeout_ms,
                5_000,
            )?),
            upstream_timeout: secs("TOLLGATE_UPSTREAM_TIMEOUT_SECS", e.upstream_timeout_secs, 600)?,
            stream_idle_timeout: secs("TOLLGATE_STREAM_IDLE_TIMEOUT_SECS", e.stream_idle_timeout_secs, 300)?,
            body_read_timeout: secs("TOLLGATE_BODY_READ_TIMEOUT_SECS", e.body_read_timeout_secs, 60)?,
            shutdown_grace: secs("TOLLGATE_SHUTDOWN_GRACE_SECS", e.shutdown_grace_secs, 30)?,
            max_outbox: size("TOLLGATE_MAX_OUTBOX", e.max_outbox, 100_000)?,
            max_connections: size("TOLLGATE_MAX_CONNECTIONS", e.max_connections, 10_000)?,
            max_connections_per_ip: size("TOLLGATE_MAX_CONNECTIONS_PER_IP", e.max_connections_per_ip, 256)?,
            first_byte_timeout: Duration::from_millis(num(
                "TOLLGATE_FIRST_BYTE_TIMEOUT_MS",
                e.first_byte_timeout_ms,
                10_000,
            )?),
            max_concurrent_per_key: size("TOLLGATE_MAX_CONCURRENT_PER_KEY", e.max_concurrent_per_key, 64)?,
            ops_listen,
            cluster_tls,
            insecure_plaintext: flags.insecure_plaintext,
            http_tls,
            openai_default_max_tokens: num("TOLLGATE_OPENAI_DEFAULT_MAX_TOKENS", e.openai_default_max_tokens, 4096)?,
            sizing: crate::edge::sizing::Sizing {
                percentile: num("TOLLGATE_OUTPUT_PERCENTILE", e.output_percentile, 95)?,
                seed_tokens: num("TOLLGATE_OUTPUT_SEED_TOKENS", e.output_seed_tokens, 8_192)?,
                floor_tokens: num("TOLLGATE_OUTPUT_FLOOR_TOKENS", e.output_floor_tokens, 1_024)?,
            },
            clamp_max_tokens: env_parse::<bool>("TOLLGATE_CLAMP_MAX_TOKENS")?.or(e.clamp_max_tokens).unwrap_or(false),
            forward_client_metadata: env_parse::<bool>("TOLLGATE_FORWARD_CLIENT_METADATA")?
                .or(e.forward_client_metadata)
                .unwrap_or(false),
            stored_responses: env_parse::<bool>("TOLLGATE_STORED_RESPONSES")?.or(e.stored_responses).unwrap_or(false),
            leases: env_parse::<bool>("TOLLGATE_LEASES")?.or(e.leases).unwrap_or(true),
            lease_ttl: secs("TOLLGATE_LEASE_TTL_SECS", e.lease_ttl_secs, 10)?,
            region: flags.region.clone().or(env("TOLLGATE_REGION")).or(e.region.clone()).filter(|r| !r.is_empty()),
            prices,
        };
        s.check()?;
        Ok(s)
    }

    /// Bounds between settings, and what no setting may be.
    fn check(&self) -> Result<(), String> {
        if self.hold_ttl > Duration::from_secs(7200) {
            return Err("hold_ttl_secs must be at most 7200 (the ledger's longest hold)".into());
        }
        if self.lease_ttl < Duration::from_secs(2) || self.lease_ttl > Duration::from_secs(300) {
            return Err("lease_ttl_secs must be between 2 and 300".into());
        }
        if self.admission_timeout.is_zero() {
            return Err("admission_timeout_ms must be at least 1".into());
        }
        if !(50..=100).contains(&self.sizing.percentile) {
            return Err("output_percentile must be between 50 and 100".into());
        }
        if self.sizing.floor_tokens == 0 || self.sizing.seed_tokens < self.sizing.floor_tokens {
            return Err("output_floor_tokens must be at least 1 and output_seed_tokens at least the floor".into());
        }
        if self.first_byte_timeout.is_zero() {
            return Err("first_byte_timeout_ms must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
