//! Who a certificate speaks for. Every Tollgate certificate carries exactly
//! one SAN URI of the form `spiffe://tollgate/<role>/<id>`:
//!
//! | role     | URI                              | may call                                  |
//! |----------|----------------------------------|-------------------------------------------|
//! | ledger N | `spiffe://tollgate/ledger/N`     | Raft RPCs (while a member), every service |
//! | edge X   | `spiffe://tollgate/edge/X`       | `LedgerService`                           |
//! | admin X  | `spiffe://tollgate/admin/X`      | `AdminService` (with the admin token)     |
//!
//! The URI is the whole identity, so an operator's own CA (cert-manager,
//! Vault) can issue certificates Tollgate accepts by putting that URI in the
//! SAN; the subject's common name is only for people reading the file.

use std::fmt;

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The URI prefix of every Tollgate identity.
pub const URI_PREFIX: &str = "spiffe://tollgate/";

/// The longest edge or admin name.
pub const MAX_NAME_BYTES: usize = 64;

/// The role and identity a certificate names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A ledger node (a Raft member), by node id.
    Ledger(u64),
    /// An edge gateway, by name.
    Edge(String),
    /// An operator, by name.
    Admin(String),
}

/// The kinds of [`Role`], for `tollgate cert issue --role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleKind {
    Ledger,
    Edge,
    Admin,
}

impl RoleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RoleKind::Ledger => "ledger",
            RoleKind::Edge => "edge",
            RoleKind::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<RoleKind> {
        match s {
            "ledger" => Some(RoleKind::Ledger),
            "edge" => Some(RoleKind::Edge),
            "admin" => Some(RoleKind::Admin),
            _ => None,
        }
    }
}

/// Names of edges and admins: 1-64 letters, digits, `-`, `_` or `.`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_BYTES
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Role {
    /// Builds a role from its kind and identity (a node id for a ledger, a
    /// name otherwise), checking the identity's shape.
    pub fn new(kind: RoleKind, id: &str) -> Result<Role, String> {
        match kind {
            RoleKind::Ledger => match id.parse::<u64>() {
                Ok(n) if n > 0 && id == n.to_string() => Ok(Role::Ledger(n)),
                _ => Err(format!("ledger id {id:?} must be a node id (1, 2, …)")),
            },
            RoleKind::Edge | RoleKind::Admin if valid_name(id) => {
                Ok(if kind == RoleKind::Edge { Role::Edge(id.to_string()) } else { Role::Admin(id.to_string()) })
            }
            _ => Err(format!(
                "{} name {id:?} must be 1-{MAX_NAME_BYTES} letters, digits, '-', '_' or '.'",
                kind.as_str()
            )),
        }
    }

    pub fn kind(&self) -> RoleKind {
        match self {
            Role::Ledger(_) => RoleKind::Ledger,
            Role::Edge(_) => RoleKind::Edge,
            Role::Admin(_) => RoleKind::Admin,
        }
    }

    /// The identity part: the node id or the name.
    pub fn id(&self) -> String {
        match self {
            Role::Ledger(n) => n.to_string(),
            Role::Edge(n) | Role::Admin(n) => n.clone(),
        }
    }

    /// `spiffe://tollgate/<role>/<id>`.
    pub fn uri(&self) -> String {
        format!("{URI_PREFIX}{}/{}", self.kind().as_str(), self.id())
    }

    /// Parses a SAN URI; `None` unless it is a well-formed Tollgate identity.
    pub fn from_uri(uri: &str) -> Option<Role> {
        let (kind, id) = uri.strip_prefix(URI_PREFIX)?.split_once('/')?;
        Role::new(RoleKind::parse(kind)?, id).ok()
    }

    /// The role a DER certificate names: its one Tollgate SAN URI.
    pub fn from_certificate(der: &CertificateDer<'_>) -> Result<Role, RoleError> {
        let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|_| RoleError::Unparsable)?;
        let mut found = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name {
                    if uri.starts_with(URI_PREFIX) {
                        found.push(Role::from_uri(uri).ok_or_else(|| RoleError::Malformed(uri.to_string()))?);
                    }
                }
            }
        }
        match found.len() {
            0 => Err(RoleError::Missing),
            1 => Ok(found.remove(0)),
            _ => Err(RoleError::Ambiguous),
        }
    }
}

/// `ledger:1`, `edge:eu-1`, `admin:ann` (as the audit trail names callers).
impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind().as_str(), self.id())
    }
}

/// Why a certificate names no usable role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("the certificate could not be parsed")]
    Unparsable,
    #[error("the certificate has no SAN URI {URI_PREFIX}<ledger|edge|admin>/<id>")]
    Missing,
    #[error("the certificate's SAN URI {0:?} is not {URI_PREFIX}<ledger|edge|admin>/<id>")]
    Malformed(String),
    #[error("the certificate names more than one Tollgate role")]
    Ambiguous,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_bad_ones_are_refused() {
        for role in [Role::Ledger(3), Role::Edge("eu-west.1".into()), Role::Admin("ann_b".into())] {
            assert_eq!(Role::from_uri(&role.uri()), Some(role.clone()), "{role}");
        }
        assert_eq!(Role::Ledger(3).uri(), "spiffe://tollgate/ledger/3");
        assert_eq!(Role::Edge("x".into()).to_string(), "edge:x");
        for bad in [
            "spiffe://tollgate/ledger/0",
            "spiffe://tollgate/ledger/01",
            "spiffe://tollgate/ledger/-1",
            "spiffe://tollgate/edge/",
            "spiffe://tollgate/edge/a b",
            "spiffe://tollgate/edge/a/b",
            "spiffe://tollgate/root/x",
            "spiffe://other/edge/x",
        ] {
            assert_eq!(Role::from_uri(bad), None, "{bad}");
        }
        assert!(Role::new(RoleKind::Admin, &"a".repeat(65)).is_err());
    }
}
