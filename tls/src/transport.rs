//! gRPC over TCP, with or without the cluster's mutual TLS, for tonic:
//! [`channel`] dials (one connector for both, so a connection that never
//! opened is recognised by type, see [`never_connected`]); [`incoming`]
//! accepts, runs TLS handshakes off the accept loop with a bound and a
//! deadline, and tags each connection with the caller's [`PeerInfo`],
//! which tonic puts in every request's extensions ([`peer`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::cluster::ClusterTls;
use crate::role::Role;

/// A byte stream either side of a connection can be.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Why a connection could not be opened. The request it was for was never
/// sent, so it certainly did not apply.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailed {
    #[error("the address has no host or port")]
    BadAddress,
    #[error("tcp connect: {0}")]
    Tcp(io::Error),
    #[error("tls handshake: {0}")]
    Tls(io::Error),
}

/// Dials `host:port` over TCP (no Nagle), then TLS when `tls` is set.
#[derive(Clone)]
pub struct Connector {
    tls: Option<Arc<ClusterTls>>,
}

impl Connector {
    pub fn new(tls: Option<Arc<ClusterTls>>) -> Connector {
        Connector { tls }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = ConnectFailed;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectFailed>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectFailed>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri.host().ok_or(ConnectFailed::BadAddress)?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().ok_or(ConnectFailed::BadAddress)?;
            let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(ConnectFailed::Tcp)?;
            let _ = tcp.set_nodelay(true);
            let Some(tls) = tls else { return Ok(TokioIo::new(Box::new(tcp) as Box<dyn Io>)) };
            let name = ServerName::try_from(host).map_err(|e| ConnectFailed::Tls(io::Error::other(e)))?;
            let stream = tokio_rustls::TlsConnector::from(tls.client_config())
                .connect(name, tcp)
                .await
                .map_err(ConnectFailed::Tls)?;
            Ok(TokioIo::new(Box::new(stream) as Box<dyn Io>))
        })
    }
}

/// A lazily connected channel to `addr` (`host:port`), over the cluster's
/// mutual TLS when `tls` is set. `configure` sets timeouts and the like.
pub fn channel(
    addr: &str,
    tls: Option<Arc<ClusterTls>>,
    configure: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = configure(Endpoint::from_shared(format!("{scheme}://{addr}"))?);
    Ok(endpoint.connect_with_connector_lazy(Connector { tls }))
}

/// Whether `status` says the call never left this process because no
/// connection could be opened (refused, unreachable, TLS refused), so the
/// request certainly did not apply. Decided from the error's source chain,
/// where tonic wraps every error of a connector in [`tonic::ConnectError`].
pub fn never_connected(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() || e.is::<ConnectFailed>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Who is on the other end of a server-side connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The role the client's certificate names; `Err` when it names none.
    pub role: Result<Role, crate::RoleError>,
}

/// The caller of a request served over [`incoming`].
pub fn peer<T>(req: &tonic::Request<T>) -> Option<&PeerInfo> {
    req.extensions().get::<PeerInfo>()
}

/// An accepted connection with its [`PeerInfo`].
pub struct ServerIo {
    io: Box<dyn Io>,
    info: PeerInfo,
}

impl Connected for ServerIo {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Most TLS handshakes in progress at once; more connections wait.
pub const MAX_HANDSHAKES: usize = 256;
/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` for a tonic server: plain TCP, or the
/// cluster's mutual TLS (handshakes run on their own tasks, at most
/// [`MAX_HANDSHAKES`] at once, each within [`HANDSHAKE_TIMEOUT`]; a failed
/// one is logged and dropped). Ends when the server stops reading it.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ClusterTls>>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<ServerIo>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Refused handshakes, logged at most once per [`REFUSAL_LOG_EVERY`] with
/// how many there were, so a flood of strangers cannot flood the log.
struct Refusals {
    count: std::sync::atomic::AtomicU64,
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

impl Refusals {
    fn note(&self, remote: SocketAddr, why: &str) {
        use std::sync::atomic::Ordering;
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
            *last = Some(std::time::Instant::now());
            self.count.store(0, Ordering::Relaxed);
            tracing::warn!(%remote, refused = n, "grpc: refused a connection that is not a cluster member's TLS ({why})");
        }
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<Arc<ClusterTls>>, tx: mpsc::Sender<io::Result<ServerIo>>) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let refusals = Arc::new(Refusals { count: Default::default(), last: Default::default() });
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tx.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: pause, keep serving.
                tracing::warn!(error = %e, "grpc accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &tls else {
            let info = PeerInfo { remote: Some(remote), role: Err(crate::RoleError::Missing) };
            if tx.send(Ok(ServerIo { io: Box::new(tcp), info })).await.is_err() {
                return;
            }
            continue;
        };
        let permit = tokio::select! {
            p = handshakes.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = tx.closed() => return,
        };
        let (acceptor, tx) = (tokio_rustls::TlsAcceptor::from(tls.server_config()), tx.clone());
        let refusals = refusals.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return refusals.note(remote, &e.to_string()),
                Err(_) => return refusals.note(remote, "no handshake within 10 s"),
            };
            let role = match stream.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                Some(cert) => Role::from_certificate(cert),
                None => Err(crate::RoleError::Missing),
            };
            let info = PeerInfo { remote: Some(remote), role };
            let _ = tx.send(Ok(ServerIo { io: Box::new(stream), info })).await;
        });
    }
}
