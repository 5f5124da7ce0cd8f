//! Who may call which service of a ledger node, decided once per request
//! from the caller's certificate (see `tollgate_tls::role`):
//!
//! | service          | callers                                                |
//! |------------------|--------------------------------------------------------|
//! | `RaftService`    | a ledger whose id is a member (or, before this node    |
//! |                  | knows any membership, one listed in its `--peers`)     |
//! | `LedgerService`  | edges and ledgers                                      |
//! | `AdminService`   | admins and ledgers (which forward reads), plus the     |
//! |                  | admin token on every call but `NodeStatus`             |
//! | reflection, `NodeStatus` | any certificate of the cluster CA              |
//!
//! A refusal is `PERMISSION_DENIED` before the handler runs, so it changes
//! nothing. Without TLS (`tollgate up` on loopback, `--insecure-plaintext`)
//! there are no certificates and every caller is let through: that mode
//! trusts the network.

use openraft::async_runtime::watch::WatchReceiver;
use std::collections::BTreeSet;
use std::sync::Arc;

use tollgate_tls::{PeerInfo, Role, RoleKind};
use tonic::{Request, Status};

use crate::raft_types::{MetricsWatch, NodeId};

/// Which callers a service admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Member ledgers only.
    Members,
    /// Edges and ledgers.
    Edges,
    /// Admins and ledgers.
    Admins,
    /// Any certificate of the cluster CA that names a role.
    Anyone,
}

impl Audience {
    fn admits(self, kind: RoleKind) -> bool {
        match self {
            Audience::Members => kind == RoleKind::Ledger,
            Audience::Edges => matches!(kind, RoleKind::Edge | RoleKind::Ledger),
            Audience::Admins => matches!(kind, RoleKind::Admin | RoleKind::Ledger),
            Audience::Anyone => true,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Audience::Members => "a ledger node that is a member of this cluster",
            Audience::Edges => "an edge or ledger certificate",
            Audience::Admins => "an admin certificate",
            Audience::Anyone => "a certificate of the cluster CA",
        }
    }
}

/// The authorization check every service of a node goes through.
#[derive(Clone)]
pub struct Gate {
    /// Whether the node serves mutual TLS; without it, every caller passes.
    tls: bool,
    /// Raft's metrics, for the current membership.
    metrics: MetricsWatch,
    /// `--peers`: trusted as members until this node learns the membership.
    peers: Arc<BTreeSet<NodeId>>,
}

impl Gate {
    pub fn new(tls: bool, metrics: MetricsWatch, peers: BTreeSet<NodeId>) -> Gate {
        Gate { tls, metrics, peers: Arc::new(peers) }
    }

    /// The caller's role, if `audience` admits it; `Ok(None)` without TLS.
    pub fn check<T>(&self, req: &Request<T>, audience: Audience) -> Result<Option<Role>, Status> {
        if !self.tls {
            return Ok(None);
        }
        let info: &PeerInfo = tollgate_tls::peer(req)
            .ok_or_else(|| Status::permission_denied("the caller's certificate is unknown to this server"))?;
        let refuse = |message: String| {
            // Only holders of a certificate of the cluster's CA get this far,
            // so strangers cannot flood the log with it.
            tracing::warn!(remote = ?info.remote, "refused: {message}");
            Err(Status::permission_denied(message))
        };
        let role = match &info.role {
            Ok(r) => r,
            Err(e) => return refuse(format!("the client certificate is refused: {e}")),
        };
        if !audience.admits(role.kind()) {
            return refuse(format!("{role} may not call this service: it needs {}", audience.describe()));
        }
        if let (Audience::Members, Role::Ledger(id)) = (audience, role) {
            if !self.is_member(*id) {
                return refuse(format!("{role} is not a member of this cluster"));
            }
        }
        Ok(Some(role.clone()))
    }

    fn is_member(&self, id: NodeId) -> bool {
        let m = self.metrics.borrow_watched();
        let membership = m.membership_config.membership();
        if membership.nodes().next().is_none() {
            return self.peers.contains(&id);
        }
        membership.get_node(&id).is_some()
    }

    /// A tonic interceptor admitting `audience`.
    pub fn interceptor(
        &self,
        audience: Audience,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
        let gate = self.clone();
        move |req| gate.check(&req, audience).map(|_| req)
    }

    /// For Raft messages that name their sender (a vote's node id): over
    /// TLS the certificate must be that node's, so one member cannot speak
    /// for another.
    pub fn check_sender<T>(&self, req: &Request<T>, claimed: NodeId) -> Result<(), Status> {
        same_sender(self.member(req)?, claimed)
    }

    /// A caller [`Gate::member`] admitted is still a member (for each
    /// message of a long-lived stream: a node removed meanwhile is refused).
    pub fn still_member(&self, caller: Option<NodeId>) -> Result<(), Status> {
        match caller {
            Some(id) if !self.is_member(id) => {
                Err(Status::permission_denied(format!("ledger:{id} is no longer a member of this cluster")))
            }
            _ => Ok(()),
        }
    }

    /// The member ledger calling (over TLS; `None` without it), checked
    /// when a stream opens; its messages then name their senders.
    pub fn member<T>(&self, req: &Request<T>) -> Result<Option<NodeId>, Status> {
        Ok(match self.check(req, Audience::Members)? {
            Some(Role::Ledger(id)) => Some(id),
            _ => None,
        })
    }
}

/// A message naming `claimed` as its sender must come from that node's
/// certificate (`caller`, when the server serves TLS).
pub fn same_sender(caller: Option<NodeId>, claimed: NodeId) -> Result<(), Status> {
    match caller {
        Some(id) if id != claimed => {
            Err(Status::permission_denied(format!("ledger:{id} sent a message on behalf of node {claimed}")))
        }
        _ => Ok(()),
    }
}

// ------------------------------------------------------------ secrets

/// Hex SHA-256 of `s` (how keys and the admin token are stored).
pub fn sha256_hex(s: &str) -> String {
    crate::state::hex(&<sha2::Sha256 as sha2::Digest>::digest(s.as_bytes()))
}

/// Whether `token` hashes to `want_sha256_hex`, compared in constant time.
pub fn token_matches(token: &str, want_sha256_hex: &str) -> bool {
    token_matches_hash(&sha256_hex(token), want_sha256_hex)
}

/// Whether two hex hashes are equal, compared in constant time.
pub fn token_matches_hash(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// A new random secret: `prefix` + 2×`bytes` hex digits.
pub fn random_token(prefix: &str, bytes: usize) -> Result<String, tonic::Status> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| tonic::Status::internal(format!("no randomness: {e}")))?;
    Ok(format!("{prefix}{}", crate::state::hex(&buf)))
}
