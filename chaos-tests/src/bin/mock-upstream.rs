//! `mock-upstream`: a stand-in for the Anthropic and OpenAI APIs that tests
//! point the gateway at (see `tollgate_chaos::mock` for what it speaks and
//! the `x-mock-*` headers that steer it).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use tollgate_chaos::mock::{serve, MockConfig};

#[derive(Parser)]
struct Args {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Delay before each response starts, in ms.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Delay between SSE events, in ms.
    #[arg(long, default_value_t = 0)]
    event_delay_ms: u64,
    /// Output tokens when the request does not say (capped by max_tokens).
    #[arg(long, default_value_t = 50)]
    output_tokens: u64,
    /// Ground-truth log: one JSON line per response.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Accept only this upstream credential (x-api-key or bearer).
    #[arg(long)]
    expect_key: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let listener = tokio::net::TcpListener::bind(a.listen).await?;
    eprintln!("mock-upstream listening on {}", listener.local_addr()?);
    let cfg = MockConfig {
        latency_ms: a.latency_ms,
        event_delay_ms: a.event_delay_ms,
        output_tokens: a.output_tokens,
        log: a.log,
        expect_key: a.expect_key,
    };
    serve(listener, cfg).await?;
    Ok(())
}
