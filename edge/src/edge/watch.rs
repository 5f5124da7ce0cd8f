//! The edge's local copy of principals, key hashes and policies, streamed
//! from the ledger by `WatchConfig`, so authentication and policy cost no
//! round trip. The copy is swapped whole on each update.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tollgate_client::LedgerClient;
use tollgate_proto::v1 as pb;
use tollgate_types::backoff::{self, BackoffBuilder};

use crate::pricing::PriceTable;

/// Who a virtual key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub user: String,
    pub team: String,
}

/// One immutable view of the config.
#[derive(Debug, Default)]
pub struct ConfigView {
    pub index: u64,
    /// Active keys by the hex SHA-256 of their secret; revoked keys are left out.
    keys: HashMap<String, Principal>,
    /// Allowed models by scope (`org`, `team:NAME`, `user:EMAIL`, `key:ID`).
    policies: HashMap<String, Vec<String>>,
    /// The ledger's per-request maximum (0 from a ledger that predates it).
    pub max_request_nano_usd: u64,
    /// This edge's book with the ledger's price overrides and discount.
    pub prices: Arc<PriceTable>,
    /// Hard budgets by scope (`org`, `team:NAME`, …): (model or every
    /// model, id, limit). Empty when the ledger names no budget ids (an
    /// older version): leases need them.
    hard_budgets: HashMap<String, Vec<(Option<String>, u64, u64)>>,
    /// Every budget has its own id (a ledger that predates leases sends none).
    budget_ids: bool,
}

/// Hex SHA-256 of a key secret, as the ledger stores it.
pub fn secret_hash(secret: &str) -> String {
    let d = Sha256::digest(secret.as_bytes());
    let mut s = String::with_capacity(64);
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Whether a policy entry allows a request for `model`, whose listed id in
/// the price book is `listed` (an alias such as a dated snapshot resolves to
/// its model's id): the exact name, the listed id, or a prefix ending in `*`.
/// Nothing else: `claude-opus-4-1` does not allow `claude-opus-4-1-evil`.
fn allows(entry: &str, model: &str, listed: Option<&str>) -> bool {
    if let Some(prefix) = entry.strip_suffix('*') {
        return model.starts_with(prefix);
    }
    entry == model || listed == Some(entry)
}

impl ConfigView {
    /// The view of config `s`, pricing with `base` (the shipped book and
    /// this edge's own additions) under the ledger's overrides.
    pub fn from_snapshot(s: &pb::ConfigSnapshot, base: &PriceTable) -> ConfigView {
        let teams: HashMap<&str, &str> = s.users.iter().map(|u| (u.email.as_str(), u.team.as_str())).collect();
        let keys = s
            .keys
            .iter()
            .filter(|k| !k.revoked)
            .map(|k| {
                let team = teams.get(k.user.as_str()).copied().unwrap_or_default().to_string();
                (k.secret_sha256.clone(), Principal { key_id: k.id.clone(), user: k.user.clone(), team })
            })
            .collect();
        let policies = s.policies.iter().map(|p| (p.scope.clone(), p.allowed_models.clone())).collect();
        let overrides: Vec<_> = s.prices.iter().map(tollgate_types::domain::ModelPrice::from).collect();
        let prices = Arc::new(base.with_overrides(&overrides, s.discount_bp, s.index));
        let mut hard_budgets: HashMap<String, Vec<_>> = HashMap::new();
        let ids: std::collections::HashSet<u64> = s.budgets.iter().map(|b| b.id).collect();
        let budget_ids = ids.len() == s.budgets.len();
        if budget_ids {
            for b in s.budgets.iter().filter(|b| b.mode == "hard") {
                let model = (!b.model.is_empty()).then(|| b.model.clone());
                hard_budgets.entry(b.scope.clone()).or_default().push((model, b.id, b.limit_nano_usd));
            }
        }
        ConfigView {
            index: s.index,
            keys,
            policies,
            max_request_nano_usd: s.max_request_nano_usd,
            prices,
            hard_budgets,
            budget_ids,
        }
    }

    /// The hard budgets a request by `p` for `model` counts against, as
    /// (id, limit); `None` when they cannot be known (the ledger sent no ids).
    pub fn hard_chain(&self, p: &Principal, model: &str) -> Option<Vec<(u64, u64)>> {
        if !self.budget_ids {
            return None;
        }
        let chain =
            ["org".to_string(), format!("team:{}", p.team), format!("user:{}", p.user), format!("key:{}", p.key_id)];
        let mut out = Vec::new();
        for scope in chain {
            for (m, id, limit) in self.hard_budgets.get(&scope).into_iter().flatten() {
                if m.as_deref().is_none_or(|m| m == model) {
                    out.push((*id, *limit));
                }
            }
        }
        Some(out)
    }

    /// The principal of a presented secret, if the key exists and is not revoked.
    pub fn authenticate(&self, secret: &str) -> Option<&Principal> {
        self.keys.get(&secret_hash(secret))
    }

    /// `Err(scope)` naming the first policy on the chain that does not allow `model`.
    pub fn check_policy(&self, p: &Principal, model: &str, listed: Option<&str>) -> Result<(), String> {
        let chain =
            ["org".to_string(), format!("team:{}", p.team), format!("user:{}", p.user), format!("key:{}", p.key_id)];
        for scope in chain {
            if let Some(allowed) = self.policies.get(&scope) {
                if !allowed.is_empty() && !allowed.iter().any(|e| allows(e, model, listed)) {
                    return Err(scope);
                }
            }
        }
        Ok(())
    }
}

/// How often the ledger node is asked to confirm that it is still in touch
/// with a leader (a heartbeat on the watch stream).
pub const WATCH_HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence after which the copy counts as stale: `/readyz` turns 503 and the
/// watch moves to another ledger node. A blackholed link or a node cut off
/// from the majority shows up here within this bound, not at the TCP
/// timeout minutes later.
pub const WATCH_STALE_AFTER: Duration = Duration::from_secs(3);
/// How often a watch following another node tries the first one again.
const RETURN_AFTER: Duration = Duration::from_secs(30);

/// `heard_ms` before anything was heard.
const NEVER: u64 = u64::MAX;

/// The shared, swappable config and whether its watch is live.
pub struct ConfigCache {
    view: RwLock<Arc<ConfigView>>,
    /// The prices each config's overrides are layered on.
    base: Arc<PriceTable>,
    live: AtomicBool,
    /// Milliseconds since `epoch` when the watch last heard from a node in
    /// touch with the leader.
    heard_ms: AtomicU64,
    epoch: Instant,
    changed: watch::Sender<u64>,
}

impl ConfigCache {
    pub fn new(base: Arc<PriceTable>) -> Arc<ConfigCache> {
        Arc::new(ConfigCache {
            view: RwLock::new(Arc::new(ConfigView { prices: base.clone(), ..ConfigView::default() })),
            base,
            live: AtomicBool::new(false),
            heard_ms: AtomicU64::new(NEVER),
            epoch: Instant::now(),
            changed: watch::channel(0).0,
        })
    }

    pub fn current(&self) -> Arc<ConfigView> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Ready: a watch stream is open, has delivered the config, and its
    /// node confirmed within `WATCH_STALE_AFTER` that it is in touch.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire) && self.since_heard() <= WATCH_STALE_AFTER
    }

    fn since_heard(&self) -> Duration {
        let heard = self.heard_ms.load(Ordering::Acquire);
        if heard == NEVER {
            return Duration::MAX;
        }
        Duration::from_millis((self.epoch.elapsed().as_millis() as u64).saturating_sub(heard))
    }

    fn heard(&self) {
        self.heard_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
    }

    /// Installs `view` unless it is older than the copy held (a node that
    /// is behind must not bring a revoked key back); `in_touch` says whether
    /// its node vouched for it being current.
    pub fn install(&self, view: ConfigView, in_touch: bool) -> bool {
        let index = view.index;
        {
            let mut cur = self.view.write().unwrap_or_else(|p| p.into_inner());
            if index < cur.index {
                return false;
            }
            *cur = Arc::new(view);
        }
        if in_touch {
            self.heard();
        }
        self.live.store(true, Ordering::Release);
        self.changed.send_replace(index);
        true
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Follows `WatchConfig` on the ledger servers in turn, forever: on a
    /// broken or silent stream the cache is marked not live until another
    /// server delivers the config again.
    pub async fn follow(self: Arc<Self>, ledger: LedgerClient, on_index: impl Fn(u64) + Send + 'static) {
        let mut i = 0usize;
        // After each failure a longer pause, up to a second; jittered, so
        // edges cut off together do not come back in step.
        let pauses = || backoff::pauses(Duration::from_millis(50), Duration::from_secs(1)).build();
        let mut backoff = pauses();
        let request = pb::WatchConfigRequest { heartbeat_ms: WATCH_HEARTBEAT.as_millis() as u32 };
        loop {
            let mut client = ledger.at(i);
            let mut preferred = i.is_multiple_of(ledger.len());
            i = i.wrapping_add(1);
            // A frozen node accepts the connection and never answers: the
            // call itself is bounded too.
            match tokio::time::timeout(WATCH_STALE_AFTER, client.watch_config(request)).await {
                Err(_) => tracing::debug!("config watch got no answer in {WATCH_STALE_AFTER:?}"),
                Ok(Err(s)) => tracing::debug!("config watch could not start: {}", s.message()),
                Ok(Ok(resp)) => {
                    let mut stream = resp.into_inner();
                    let mut since = tokio::time::Instant::now();
                    loop {
                        // Away from the first node (this edge's region's, when
                        // it has one): go back as soon as it answers, in touch.
                        if !preferred && since.elapsed() >= RETURN_AFTER {
                            since = tokio::time::Instant::now();
                            if let Some((s, first)) = Self::open_in_touch(&ledger, request).await {
                                tracing::info!("config watch back on the first ledger node");
                                if self.install(ConfigView::from_snapshot(&first, &self.base), true) {
                                    on_index(first.index);
                                }
                                stream = s;
                                preferred = true;
                                i = 1;
                            }
                        }
                        match tokio::time::timeout(WATCH_STALE_AFTER, stream.message()).await {
                            Ok(Ok(Some(snap))) => {
                                if snap.in_touch {
                                    backoff = pauses();
                                    self.heard();
                                }
                                if !snap.heartbeat {
                                    if self.install(ConfigView::from_snapshot(&snap, &self.base), snap.in_touch) {
                                        on_index(snap.index);
                                    } else {
                                        tracing::debug!("ignored config index {} older than the one held", snap.index);
                                    }
                                }
                            }
                            Ok(Ok(None)) => break,
                            Ok(Err(s)) => {
                                tracing::warn!("config watch broke: {}", s.message());
                                break;
                            }
                            Err(_) => {
                                tracing::warn!(
                                    "config watch silent for {:?} (node unreachable or out of touch with the \
                                     leader); trying another ledger node",
                                    WATCH_STALE_AFTER
                                );
                                break;
                            }
                        }
                    }
                }
            }
            self.live.store(false, Ordering::Release);
            tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(1))).await;
        }
    }

    /// A watch on the first ledger node and its first config, if it answers
    /// within a second, in touch with the leader.
    async fn open_in_touch(
        ledger: &LedgerClient,
        request: pb::WatchConfigRequest,
    ) -> Option<(tonic::Streaming<pb::ConfigSnapshot>, pb::ConfigSnapshot)> {
        let open = async {
            let mut stream = ledger.at(0).watch_config(request).await.ok()?.into_inner();
            let first = stream.message().await.ok()??;
            (first.in_touch && !first.heartbeat).then_some((stream, first))
        };
        tokio::time::timeout(Duration::from_secs(1), open).await.ok()?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> pb::ConfigSnapshot {
        pb::ConfigSnapshot {
            index: 9,
            teams: vec![pb::Team { name: "eng".into() }],
            users: vec![pb::User { email: "ann@x.io".into(), team: "eng".into() }],
            keys: vec![
                pb::Key {
                    id: "k1".into(),
                    user: "ann@x.io".into(),
                    name: "laptop".into(),
                    secret_sha256: secret_hash("tg-live"),
                    revoked: false,
                },
                pb::Key {
                    id: "k2".into(),
                    user: "ann@x.io".into(),
                    name: "old".into(),
                    secret_sha256: secret_hash("tg-old"),
                    revoked: true,
                },
            ],
            budgets: vec![],
            prices: vec![],
            discount_bp: 0,
            policies: vec![
                pb::Policy {
                    scope: "team:eng".into(),
                    allowed_models: vec!["claude-sonnet-4-5".into(), "gpt-5*".into()],
                },
                pb::Policy { scope: "key:k1".into(), allowed_models: vec![] },
            ],
            heartbeat: false,
            in_touch: true,
            max_request_nano_usd: 1_100_000_000_000,
        }
    }

    #[test]
    fn keys_authenticate_by_hash_and_revoked_keys_do_not() {
        let v = ConfigView::from_snapshot(&snapshot(), &PriceTable::builtin());
        let p = v.authenticate("tg-live").unwrap();
        assert_eq!(p, &Principal { key_id: "k1".into(), user: "ann@x.io".into(), team: "eng".into() });
        assert!(v.authenticate("tg-old").is_none());
        assert!(v.authenticate("tg-unknown").is_none());
        assert_eq!(secret_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn policies_on_the_chain_restrict_models() {
        let v = ConfigView::from_snapshot(&snapshot(), &PriceTable::builtin());
        let p = v.authenticate("tg-live").unwrap().clone();
        let sonnet = Some("claude-sonnet-4-5");
        assert_eq!(v.check_policy(&p, "claude-sonnet-4-5", sonnet), Ok(()));
        // An alias of an allowed model is allowed; a name that only starts like one is not.
        assert_eq!(v.check_policy(&p, "claude-sonnet-4-5-20250929", sonnet), Ok(()));
        assert_eq!(v.check_policy(&p, "claude-sonnet-4-5-evil", None), Err("team:eng".into()));
        assert_eq!(v.check_policy(&p, "gpt-5-mini", Some("gpt-5-mini")), Ok(()));
        assert_eq!(v.check_policy(&p, "claude-sonnet-4-50", None), Err("team:eng".into()));
        assert_eq!(v.check_policy(&p, "claude-opus-4-1", Some("claude-opus-4-1")), Err("team:eng".into()));
    }

    #[test]
    fn the_copy_is_current_only_when_a_node_in_touch_vouched_and_never_goes_back() {
        let c = ConfigCache::new(Arc::new(PriceTable::builtin()));
        assert!(!c.is_live());
        // A config from a node cut off from the leader: installed (better
        // than nothing), but not current.
        let mut snap = snapshot();
        assert!(c.install(ConfigView::from_snapshot(&snap, &PriceTable::builtin()), false));
        assert_eq!(c.current().index, 9);
        assert!(!c.is_live());
        // Vouched for: current.
        assert!(c.install(ConfigView::from_snapshot(&snap, &PriceTable::builtin()), true));
        assert!(c.is_live());
        // An older config (a node that is behind) is not installed.
        snap.index = 8;
        snap.keys.clear();
        assert!(!c.install(ConfigView::from_snapshot(&snap, &PriceTable::builtin()), true));
        assert_eq!(c.current().index, 9);
        assert!(c.current().authenticate("tg-live").is_some());
    }
}
