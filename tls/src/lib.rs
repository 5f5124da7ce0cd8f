//! Tollgate's trust between its own processes: the cluster PKI behind
//! `tollgate cert` ([`pki`]), the role a certificate names ([`role`]), the
//! mutual-TLS configs every ledger, edge and admin loads and reloads
//! ([`cluster`]), the gRPC transport over them ([`transport`]), and the TLS
//! of the edge's HTTP listener ([`http`]). Cryptography and certificate
//! parsing are rustls', rcgen's and x509-parser's; nothing here is hand-made.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod http;
pub mod pki;
pub mod role;
pub mod transport;

pub use cluster::{ClusterTls, TlsError, TlsFiles};
pub use role::{Role, RoleError, RoleKind};
pub use transport::{channel, incoming, never_connected, peer, PeerInfo};
