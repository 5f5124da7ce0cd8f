//! The cluster PKI end to end: `cert init` / `cert issue` files load as
//! identities with the right roles, and real TLS handshakes over loopback
//! admit a certificate of the cluster CA and refuse everything else.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tollgate_tls::pki::{init_ca, issue};
use tollgate_tls::transport::{never_connected, Connector};
use tollgate_tls::{ClusterTls, Role, TlsError, TlsFiles};
use tonic::transport::server::Connected;
use tower_service::Service;

fn files(dir: &Path, base: &str) -> TlsFiles {
    TlsFiles { ca: dir.join("ca.pem"), cert: dir.join(format!("{base}.pem")), key: dir.join(format!("{base}.key")) }
}

#[test]
fn issued_certificates_load_with_their_roles_and_keys_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let ca = init_ca(dir.path(), 30).unwrap();
    assert_eq!(std::fs::metadata(&ca.key).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(matches!(init_ca(dir.path(), 30), Err(tollgate_tls::pki::PkiError::Exists(_))));
    let hosts = vec!["127.0.0.1".to_string(), "ledger-1.internal".to_string()];
    for (role, hosts) in
        [(Role::Ledger(1), hosts.clone()), (Role::Edge("eu-1".into()), vec![]), (Role::Admin("ann".into()), vec![])]
    {
        let w = issue(dir.path(), &role, &hosts, 30).unwrap();
        assert_eq!(std::fs::metadata(&w.key).unwrap().permissions().mode() & 0o777, 0o600);
        let base = format!("{}-{}", role.kind().as_str(), role.id());
        assert_eq!(w.cert, dir.path().join(format!("{base}.pem")));
        let tls = ClusterTls::load(files(dir.path(), &base)).unwrap();
        assert_eq!(tls.role(), &role);
        tls.reload().unwrap();
    }
    // A ledger certificate must name the hosts it is reached at.
    assert!(issue(dir.path(), &Role::Ledger(2), &[], 30).is_err());
}

#[test]
fn a_certificate_of_another_ca_or_a_mismatched_key_does_not_load() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    init_ca(a.path(), 30).unwrap();
    init_ca(b.path(), 30).unwrap();
    issue(a.path(), &Role::Edge("x".into()), &[], 30).unwrap();
    issue(b.path(), &Role::Edge("x".into()), &[], 30).unwrap();
    let mut f = files(a.path(), "edge-x");
    f.ca = b.path().join("ca.pem");
    assert!(matches!(ClusterTls::load(f), Err(TlsError::Untrusted { .. })), "another CA's certificate loaded");
    let mut f = files(a.path(), "edge-x");
    f.key = b.path().join("edge-x.key");
    assert!(ClusterTls::load(f).is_err(), "a key that does not match its certificate loaded");
    // A reload that would change the identity is refused and changes nothing.
    issue(a.path(), &Role::Admin("x".into()), &[], 30).unwrap();
    let tls = ClusterTls::load(files(a.path(), "edge-x")).unwrap();
    std::fs::copy(a.path().join("admin-x.pem"), a.path().join("edge-x.pem")).unwrap();
    std::fs::copy(a.path().join("admin-x.key"), a.path().join("edge-x.key")).unwrap();
    assert!(matches!(tls.reload(), Err(TlsError::RoleChanged { .. })));
    assert_eq!(tls.role(), &Role::Edge("x".into()));
}

/// Dials `addr` with `client` and returns whether the handshake completed,
/// and the role the server saw (if it accepted).
async fn handshake(
    server: std::sync::Arc<ClusterTls>,
    client: Option<std::sync::Arc<ClusterTls>>,
) -> (bool, Option<Result<Role, tollgate_tls::RoleError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = tollgate_tls::incoming(listener, Some(server));
    let uri: tonic::transport::Uri = format!("https://{addr}").parse().unwrap();
    let mut connector = Connector::new(client);
    let dial = tokio::spawn(async move {
        let io = connector.call(uri).await;
        // Keep the client's side open until the server has judged it.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        io.is_ok()
    });
    let seen = tokio::time::timeout(std::time::Duration::from_secs(2), incoming.next()).await;
    let role = match seen {
        Ok(Some(Ok(io))) => Some(io.connect_info().role),
        _ => None,
    };
    (dial.await.unwrap(), role)
}

#[tokio::test]
async fn handshakes_admit_the_cluster_ca_and_refuse_the_rest() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    init_ca(a.path(), 30).unwrap();
    init_ca(b.path(), 30).unwrap();
    let local = vec!["127.0.0.1".to_string()];
    issue(a.path(), &Role::Ledger(1), &local, 30).unwrap();
    issue(a.path(), &Role::Edge("e1".into()), &local, 30).unwrap();
    issue(b.path(), &Role::Edge("e1".into()), &[], 30).unwrap();
    let ledger = ClusterTls::load(files(a.path(), "ledger-1")).unwrap();
    let edge = ClusterTls::load(files(a.path(), "edge-e1")).unwrap();
    let stranger = ClusterTls::load(files(b.path(), "edge-e1")).unwrap();

    let (ok, role) = handshake(ledger.clone(), Some(edge.clone())).await;
    assert!(ok);
    assert_eq!(role.unwrap().unwrap(), Role::Edge("e1".into()));
    // Another CA's client: the server refuses the handshake.
    let (_, role) = handshake(ledger.clone(), Some(stranger)).await;
    assert!(role.is_none(), "a certificate of another CA was accepted");
    // A plaintext client never completes a TLS handshake: the server hands
    // no connection to the gRPC layer.
    let (_, role) = handshake(ledger.clone(), None).await;
    assert!(role.is_none(), "a plaintext client got a connection");
    // An edge's certificate cannot pose as a ledger server.
    let (ok, _) = handshake(edge.clone(), Some(ledger)).await;
    assert!(!ok, "a client accepted a server whose certificate names an edge");
}

#[tokio::test]
async fn a_refused_connection_is_recognised_by_type_as_never_connected() {
    // A port nothing listens on: the call fails before any byte is sent.
    let port = { std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port() };
    let ch = tollgate_tls::channel(&format!("127.0.0.1:{port}"), None, |e| e).unwrap();
    let mut client = tollgate_proto::v1::raft_service_client::RaftServiceClient::new(ch);
    let status = client.vote(tollgate_proto::v1::RaftPayload { data: vec![] }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(never_connected(&status), "{status:?}");
    // A status that came back from a server is not.
    assert!(!never_connected(&tonic::Status::unavailable("tcp connect error")));
}
