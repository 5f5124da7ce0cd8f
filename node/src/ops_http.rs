//! The operations endpoints of a ledger node (`tollgate ledger --http`):
//! `GET /healthz` (the process answers), `GET /readyz` (200 while the node
//! leads with a quorum's recent ack or follows a known leader, else 503) and
//! `GET /metrics` (Prometheus text). A small HTTP/1.1 server: bounded
//! connections, a header read timeout, no request bodies read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tollgate_ledger::probe::LedgerProbe;

/// Scrapers and probes need few connections; more wait for a slot.
const MAX_CONNECTIONS: usize = 64;

/// Binds `addr` and serves until `stop` is cancelled.
pub async fn start(
    addr: SocketAddr,
    probe: LedgerProbe,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener =
        TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding the HTTP address {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let probe = Arc::new(probe);
    let task = tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = stop.cancelled() => return,
            };
            let (stream, _) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("ops http accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            let probe = probe.clone();
            let service = service_fn(move |req| {
                let probe = probe.clone();
                async move { Ok::<_, Infallible>(handle(&probe, &req)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::spawn(async move {
                // A scrape is quick; a client that keeps the connection open
                // idle is cut off after a minute.
                let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
                drop(permit);
            });
        }
    });
    tracing::info!("ledger ops endpoints on http://{local} (/healthz, /readyz, /metrics)");
    Ok((local, task))
}

fn handle(probe: &LedgerProbe, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, ctype: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    };
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET is served here\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let line = probe.describe();
            if probe.in_touch() {
                text(StatusCode::OK, "text/plain", format!("ready: {line}\n"))
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready (no leader with a quorum): {line}\n"),
                )
            }
        }
        "/metrics" => text(StatusCode::OK, "text/plain; version=0.0.4", probe.render_metrics()),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found: try /healthz, /readyz or /metrics\n".into()),
    }
}
