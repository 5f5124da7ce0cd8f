//! Regression tests for the edge's security review, one per finding, through
//! real processes: a one-node ledger over mutual TLS, `tollgate edge`
//! processes, and the `mock-upstream` binary as the provider (which reports
//! the request headers and body length it received in `x-mock-saw-headers`
//! and `x-mock-body-bytes`). Clients are plain HTTP/1.1 connections made
//! here, so each test controls exactly what goes over the wire.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_chaos::cluster::free_port;
use tollgate_chaos::pki::Pki;
use tollgate_proto::v1 as pb;
use tollgate_tls::Role;

use crate::harness::*;

// ------------------------------------------------------------------ tests

/// Finding 1: the gateway port speaks HTTPS with `--http-tls-cert/--http-tls-key`
/// and re-reads the files on SIGHUP. A client that trusts only the test CA
/// gets `/healthz` over TLS and sees exactly the issued certificate; a
/// plaintext request on that port gets no HTTP answer and is counted as a
/// failed handshake; after the files are re-issued and SIGHUP is sent, a new
/// connection is served the new certificate (compared as DER).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_serves_tls_and_reloads_its_certificate_on_sighup() {
    let s = setup(&[]).await;
    let ca = Pki::create(&s.dir.join("https-ca")).unwrap();
    let role = Role::Edge("gateway".into());
    let files = ca.issue(&role, &["127.0.0.1".into()]).unwrap();
    let ops = loopback();
    let (cert, key) = (files.cert.display().to_string(), files.key.display().to_string());
    let edge = s.edge("edge1", "", &["--http-tls-cert", &cert, "--http-tls-key", &key, "--ops-listen", &ops]);
    ready(&ops).await;

    let der = |p: &Path| tollgate_tls::cluster::read_certificates(p).unwrap().remove(0);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(&files.ca)).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    // A new connection: the certificate it was served and its /healthz.
    let https_healthz = || async {
        let tcp = TcpStream::connect(&edge.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let stream = tokio::time::timeout(Duration::from_secs(10), tls.connect(name, tcp)).await.unwrap().unwrap();
        let served = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
        (served, get_over(stream, "/healthz").await.unwrap())
    };

    let first = der(&files.cert);
    let (served, r) = https_healthz().await;
    assert_eq!(served, first);
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

    // Plaintext HTTP to the HTTPS port: no HTTP response, only a TLS alert
    // record (type 21, version 3.3, length 2: fatal decode_error), then EOF.
    let mut plain = TcpStream::connect(&edge.addr).await.unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut got)).await.expect("never closed");
    assert_eq!(got, [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32], "{:?}", String::from_utf8_lossy(&got));
    await_metric(&ops, r#"tollgate_connections_refused_total{reason="tls_handshake"}"#, 1).await;

    // Re-issue (new key, same files), SIGHUP: new connections get the new certificate.
    let files = ca.issue(&role, &["127.0.0.1".into()]).unwrap();
    let second = der(&files.cert);
    assert_ne!(first, second);
    assert!(Command::new("kill").args(["-HUP", &edge.pid().unwrap().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (served, r) = https_healthz().await;
        assert_eq!(r.status, 200);
        if served == second {
            break;
        }
        assert_eq!(served, first, "served a certificate that is neither");
        assert!(Instant::now() < deadline, "still the old certificate 10 s after SIGHUP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Finding 2: with `max_connections_per_ip = 4` and `first_byte_timeout_ms =
/// 500`, four idle sockets that never send a byte take all of one address's
/// slots: a fifth connection from it is closed at once (EOF, no response,
/// before any timeout could have fired) and counted as `per_ip_limit`;
/// `/healthz` on `--ops-listen` still answers meanwhile; the edge closes the
/// idle sockets after the first-byte timeout (not before 0.45 s, within
/// 2 s), after which the gateway port serves that address again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_take_every_slot() {
    let s = setup(&[]).await;
    let ops = loopback();
    let edge = s.edge("edge1", "max_connections_per_ip = 4\nfirst_byte_timeout_ms = 500", &["--ops-listen", &ops]);
    ready(&ops).await;

    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(&edge.addr).await.unwrap());
    }
    let mut fifth = TcpStream::connect(&edge.addr).await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), fifth.read(&mut buf)).await.unwrap().unwrap();
    let refused_after = opened.elapsed();
    assert_eq!(n, 0, "the fifth connection got data: {:?}", String::from_utf8_lossy(&buf[..n]));
    assert!(refused_after < Duration::from_millis(450), "closed after {refused_after:?}, not at once");
    // The operations port is not crowded out.
    let health = get(&ops, "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let page = get(&ops, "/metrics").await.body;
    assert_eq!(metric(&page, r#"tollgate_connections_refused_total{reason="per_ip_limit"}"#), Some(1), "{page}");

    for (i, mut sock) in idle.into_iter().enumerate() {
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await.unwrap().unwrap();
        let closed_after = opened.elapsed();
        assert_eq!(n, 0, "idle socket {i} got data: {:?}", String::from_utf8_lossy(&buf[..n]));
        assert!(
            closed_after >= Duration::from_millis(450) && closed_after <= Duration::from_secs(2),
            "idle socket {i} closed after {closed_after:?}"
        );
    }
    // The slots are given back.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = TcpStream::connect(&edge.addr).await.unwrap();
        if let Ok(r) = get_over(c, "/healthz").await {
            assert_eq!(r.status, 200);
            break;
        }
        assert!(Instant::now() < deadline, "the gateway port never served this address again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Finding 3: a ~30 MiB JSON body of a million small array items, three at
/// once, is admitted and forwarded intact (the mock receives every byte)
/// while the edge's peak RSS (VmHWM) stays below 400 MB; before the fix the
/// edge built a JSON tree of each body and three took 1.7 GB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_large_bodies_at_once_stay_within_memory() {
    let s = setup(&[]).await;
    let secret = s.key("eng", "ann@corp.io").await;
    let edge = s.edge("edge1", "", &[]);
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();

    let item = r#"{"role":"user","content":"x"},"#;
    let items = item.repeat(30 * 1024 * 1024 / item.len());
    let body = Bytes::from(format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{}]}}"#,
        items.trim_end_matches(',')
    ));
    assert!(body.len() > 30 * 1024 * 1024 - 64 && body.len() < 32 * 1024 * 1024, "{}", body.len());
    let calls = (0..3).map(|_| {
        let (addr, body, secret) = (edge.addr.clone(), body.clone(), secret.clone());
        tokio::spawn(async move { post(&addr, "/v1/messages", &anthropic(&secret), body).await })
    });
    for call in calls.collect::<Vec<_>>() {
        let r = call.await.unwrap();
        assert_eq!(r.status, 200, "{}", &r.body[..r.body.len().min(500)]);
        assert_eq!(r.header("x-mock-body-bytes"), Some(body.len().to_string().as_str()));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", edge.pid().unwrap())).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    eprintln!("edge peak RSS {} MB with three {}-byte bodies", peak_kb / 1024, body.len());
    assert!(peak_kb < 400 * 1024, "edge peak RSS {peak_kb} kB");
}

/// Finding 4: with `max_concurrent_per_key = 2` and slow streams (300 ms
/// between events), a key with two streams in flight gets a 429
/// `rate_limit_error` naming the limit for a third request, which never
/// reaches the provider; another key is not affected; once the two streams
/// end, the key is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_bounded_per_key() {
    let s = setup(&["--event-delay-ms", "300"]).await;
    let secret = s.key("eng", "ann@corp.io").await;
    let other = s.key("eng", "bob@corp.io").await;
    let edge = s.edge("edge1", "max_concurrent_per_key = 2", &[]);
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();
    let stream_body =
        json!({"model": "claude-sonnet-4-5", "max_tokens": 2, "stream": true, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();

    let (mut c1, mut c2) = (Conn::open(&edge.addr).await, Conn::open(&edge.addr).await);
    let s1 = c1.send("POST", "/v1/messages", &anthropic(&secret), stream_body.clone().into()).await;
    let s2 = c2.send("POST", "/v1/messages", &anthropic(&secret), stream_body.into()).await;
    assert_eq!((s1.status().as_u16(), s2.status().as_u16()), (200, 200));

    let third = post(&edge.addr, "/v1/messages", &anthropic(&secret), message("claude-sonnet-4-5", 10)).await;
    assert_eq!(
        third.error(),
        (
            429,
            "rate_limit_error".into(),
            "Tollgate: this API key already has 2 requests in flight, the most the gateway allows per key; retry \
             when one finishes"
                .into()
        )
    );
    assert_eq!(third.json()["type"], "error", "Anthropic's error shape: {}", third.body);
    let b = post(&edge.addr, "/v1/messages", &anthropic(&other), message("claude-sonnet-4-5", 10)).await;
    assert_eq!(b.status, 200, "{}", b.body);

    for s in [s1, s2] {
        let r = read(s).await;
        assert!(r.body.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"), "{}", r.body);
    }
    let again = post(&edge.addr, "/v1/messages", &anthropic(&secret), message("claude-sonnet-4-5", 10)).await;
    assert_eq!(again.status, 200, "{}", again.body);
    // The mock answered the two streams, the other key's request and the last one: not the refused one.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.mock.truth().len() < 4 {
        assert!(Instant::now() < deadline, "the mock logged {} responses", s.mock.truth().len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.mock.truth().len(), 4);
}

/// Finding 5: implausible model ids (a space, an ESC control character, 200
/// bytes) are a 400 `invalid_request_error` in Anthropic's shape naming the
/// problem, with the id echoed escaped and cut to 40 characters, on the
/// metered route and on count_tokens, never a 500, and none reaches the
/// provider. `max_tokens` above the model's documented maximum (64000 for
/// claude-sonnet-4-5) is a 400 naming it; the maximum itself is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implausible_models_and_limits_are_clear_400s() {
    let s = setup(&[]).await;
    let secret = s.key("eng", "ann@corp.io").await;
    let edge = s.edge("edge1", "", &[]);
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();
    let h = anthropic(&secret);

    let rule = "is not a valid model id (1-128 characters, no spaces or control characters)";
    let long = "a".repeat(200);
    let cases = [
        ("claude sonnet".to_string(), format!(r#"model: "claude sonnet" {rule}"#)),
        ("m\u{1b}[31m".to_string(), format!(r#"model: "m\u{{1b}}[31m" {rule}"#)),
        (long.clone(), format!(r#"model: "{}"… {rule}"#, &long[..40])),
    ];
    for (model, want) in &cases {
        for path in ["/v1/messages", "/v1/messages/count_tokens"] {
            let r = post(&edge.addr, path, &h, message(model, 10)).await;
            assert_eq!(r.error(), (400, "invalid_request_error".into(), want.clone()), "{path} {model:?}");
            assert_eq!(r.json()["type"], "error");
            assert!(!r.error().2.contains('\u{1b}'), "a raw control character is echoed");
        }
    }
    let over = post(&edge.addr, "/v1/messages", &h, message("claude-sonnet-4-5", 64_001)).await;
    assert_eq!(
        over.error(),
        (
            400,
            "invalid_request_error".into(),
            "max_tokens: 64001 is above the maximum of 64000 output tokens for claude-sonnet-4-5".into()
        )
    );
    assert_eq!(s.mock.truth().len(), 0, "a refused request reached the provider");
    let at_max = post(&edge.addr, "/v1/messages", &h, message("claude-sonnet-4-5", 64_000)).await;
    assert_eq!(at_max.status, 200, "{}", at_max.body);
}

/// Finding 6: what crosses the edge in each direction. The client's
/// `cookie`, `x-forwarded-for`, `forwarded`, `x-real-ip`, its `Connection`
/// header and the header that names (`x-secret-hop`) do not reach the
/// provider, while an unknown `x-custom-thing` does; the exact set of names
/// the mock saw is pinned. The provider's `set-cookie`,
/// `anthropic-organization-id` and `openai-organization` do not reach the
/// client, on a success or an error, while `request-id` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_headers_are_dropped_in_both_directions() {
    let s = setup(&[]).await;
    let secret = s.key("eng", "ann@corp.io").await;
    let edge = s.edge("edge1", "", &[]);
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();
    let h = with(
        &anthropic(&secret),
        &[
            ("cookie", "session=abc"),
            ("x-forwarded-for", "10.1.2.3"),
            ("forwarded", "for=10.1.2.3"),
            ("x-real-ip", "10.1.2.3"),
            ("connection", "x-secret-hop"),
            ("x-secret-hop", "1"),
            ("x-custom-thing", "kept"),
            ("x-mock-provider-headers", "1"),
        ],
    );
    let body = message("claude-sonnet-4-5", 10);
    let r = post(&edge.addr, "/v1/messages", &h, body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.mock_saw(),
        [
            "accept-encoding",
            "anthropic-version",
            "content-length",
            "content-type",
            "host",
            "x-api-key",
            "x-custom-thing",
            "x-mock-provider-headers"
        ]
    );
    assert_eq!(r.header("x-mock-body-bytes"), Some(body.len().to_string().as_str()));
    assert_eq!(r.header("request-id"), Some("req_mock_1"));
    for name in ["set-cookie", "anthropic-organization-id", "openai-organization"] {
        assert_eq!(r.header(name), None, "{name} reached the client");
    }

    // An upstream error passes through with its body, but not those headers.
    let e = post(&edge.addr, "/v1/messages", &with(&h, &[("x-mock-error", "429")]), body).await;
    assert_eq!(e.error().0, 429);
    assert_eq!(e.error().1, "rate_limit_error");
    assert!(e.mock_saw().contains(&"x-custom-thing".to_string()) && !e.mock_saw().contains(&"cookie".to_string()));
    for name in ["set-cookie", "anthropic-organization-id", "openai-organization"] {
        assert_eq!(e.header(name), None, "{name} reached the client with an error");
    }
}

/// Finding 7: when the provider refuses the gateway's own credential (the
/// edge runs with a wrong `ANTHROPIC_API_KEY`/`OPENAI_API_KEY`; the mock
/// expects another), the client gets a 502 in its provider's shape saying
/// so, and none of the provider's 401 body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_gateway_credential_is_the_gateways_502() {
    let s = setup(&[]).await;
    let secret = s.key("eng", "ann@corp.io").await;
    let wrong = [("ANTHROPIC_API_KEY", "sk-wrong"), ("OPENAI_API_KEY", "sk-wrong")];
    let edge = s.edge_to("edge1", &s.mock.url(), &wrong, "", &[]);
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();
    let want = "Tollgate: the model provider refused this gateway's own credential (HTTP 401); the gateway is \
                misconfigured: tell its operator";

    let a = post(&edge.addr, "/v1/messages", &anthropic(&secret), message("claude-sonnet-4-5", 10)).await;
    assert_eq!(a.error(), (502, "api_error".into(), want.into()));
    let bearer = format!("Bearer {secret}");
    let o = post(
        &edge.addr,
        "/v1/chat/completions",
        &[("authorization", bearer.as_str()), ("content-type", "application/json")],
        json!({"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    )
    .await;
    assert_eq!(o.error(), (502, "server_error".into(), want.into()));
    for r in [&a, &o] {
        for leak in ["invalid x-api-key", "Incorrect API key", "authentication_error", "sk-wrong", "req_mock"] {
            assert!(!r.body.contains(leak), "{leak:?} in {}", r.body);
        }
    }
}

/// Finding 8: an upstream that cannot be reached (a closed loopback port) is
/// a 502 whose body names neither the address nor the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_502_naming_no_internal_address() {
    let s = setup(&[]).await;
    let secret = s.key("eng", "ann@corp.io").await;
    let port = free_port().unwrap().to_string();
    let edge = s.edge_to("edge1", &format!("http://127.0.0.1:{port}"), &[], "", &[]);
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();

    let r = post(&edge.addr, "/v1/messages", &anthropic(&secret), message("claude-sonnet-4-5", 10)).await;
    assert_eq!(
        r.error(),
        (502, "api_error".into(), "Tollgate: could not reach the model provider; try again shortly".into())
    );
    assert!(!r.body.contains("127.0.0.1") && !r.body.contains(&port), "{}", r.body);
}

/// Finding 9: a `GET /v1/models` that carries a 100-byte body no longer
/// desynchronises its connection: the gateway answers the model list
/// itself (Claude Code's model discovery) from its price book, filtered by
/// the caller's policy, and the same client connection then serves a
/// `POST /v1/messages` whose whole body reaches the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_body_does_not_desynchronise_the_connection() {
    let s = setup(&[]).await;
    let secret = s.key("eng", "ann@corp.io").await;
    let a = &s.admin;
    let policy = pb::SetPolicyRequest {
        scope: "team:eng".into(),
        allowed_models: vec!["claude-sonnet-4-5".into(), "claude-opus-5-5".into()],
    };
    a.call(policy, |mut c, r| async move { c.set_policy(r).await }).await.unwrap();
    let edge = s.edge("edge1", "", &[]);
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();

    let mut conn = Conn::open(&edge.addr).await;
    let h = anthropic(&secret);
    let models =
        conn.call("GET", "/v1/models?limit=1000", &with(&h, &[("content-length", "100")]), "x".repeat(100)).await;
    assert_eq!(models.status, 200, "{}", models.body);
    assert_eq!(models.header("x-mock-body-bytes"), None, "the model list went upstream");
    let list = models.json();
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["claude-opus-5-5", "claude-sonnet-4-5"]);
    assert_eq!(list["data"][0]["display_name"], "Claude Opus 5.5");
    assert_eq!((list["has_more"].as_bool(), list["first_id"].as_str()), (Some(false), Some("claude-opus-5-5")));
    let body = message("claude-sonnet-4-5", 10);
    let m = conn.call("POST", "/v1/messages", &h, body.clone()).await;
    assert_eq!(m.status, 200, "{}", m.body);
    assert_eq!(m.header("x-mock-body-bytes"), Some(body.len().to_string().as_str()));
    assert_eq!(m.json()["type"], "message");
}

/// Finding 10: `/metrics` labels a model only by its listed family:
/// `claude-sonnet-4-5-20250929` counts as `claude-sonnet-4-5`, an unlisted
/// `mystery-model-1` (priced by the fallback) as `other`, and neither raw id
/// appears anywhere on the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_label_models_only_by_listed_family() {
    let s = setup(&[]).await;
    let secret = s.key("eng", "ann@corp.io").await;
    let edge = s.edge("edge1", "", &[]);
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();

    // A dated alias is its model; a model the price book does not list is
    // refused by default (unknown_model = "deny"), naming it.
    let r = post(&edge.addr, "/v1/messages", &anthropic(&secret), message("claude-sonnet-4-5-20250929", 10)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(&edge.addr, "/v1/messages", &anthropic(&secret), message("mystery-model-1", 10)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("model mystery-model-1 has no price"), "{}", r.body);
    let page = get(&edge.addr, "/metrics").await.body;
    for (label, status) in [("claude-sonnet-4-5", 200), ("other", 400)] {
        let series = format!(r#"tollgate_requests_total{{route="/v1/messages",model="{label}",status="{status}"}}"#);
        assert_eq!(metric(&page, &series), Some(1), "{series}: {page}");
    }
    assert!(!page.contains("20250929") && !page.contains("mystery"), "a raw model id is a label: {page}");

    // unknown_model = "dearest" admits it, still labelled `other`.
    let dear = s.edge("edge2", "[pricing]\nunknown_model = \"dearest\"", &[]);
    dear.wait_ready(Duration::from_secs(30)).await.unwrap();
    let r = post(&dear.addr, "/v1/messages", &anthropic(&secret), message("mystery-model-1", 10)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let page = get(&dear.addr, "/metrics").await.body;
    let series = r#"tollgate_requests_total{route="/v1/messages",model="other",status="200"}"#;
    assert_eq!(metric(&page, series), Some(1), "{page}");
}
