//! `wan-relay`: the user-space WAN of `tollgate-chaos --topology regions`,
//! run inside one host's namespace. Each `--link LISTEN=TARGET` listens on a
//! local address (one of that namespace's loopback addresses, standing for a
//! host in another region) and relays every connection to the target across
//! the WAN ([`tollgate_chaos::wan`]: the delay each way, jitter and loss,
//! in order). Partitions stay in the kernel: the relay connects from the
//! host's own namespace, so the namespace's blackhole routes cut it as they
//! cut any other traffic. Runs until killed.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tollgate_chaos::wan::{Delay, WanLink};

#[derive(Parser)]
struct Args {
    /// `LISTEN=TARGET`, both `ip:port`; repeat for every link.
    #[arg(long = "link", required = true)]
    links: Vec<String>,
    /// Delay each way, in ms.
    #[arg(long, default_value_t = 30)]
    one_way_ms: u64,
    /// Up to this much more per chunk, in ms (never reordering).
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Chance that a chunk is lost once and arrives a retransmission late.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seed of the jitter and the loss.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse(link: &str) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let (l, t) = link.split_once('=').with_context(|| format!("--link {link:?}: want LISTEN=TARGET"))?;
    Ok((l.parse().with_context(|| format!("--link {link:?}"))?, t.parse().with_context(|| format!("--link {link:?}"))?))
}

async fn serve(a: Args) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&a.loss) {
        anyhow::bail!("--loss {} must be within 0..1", a.loss);
    }
    let delay = Delay {
        one_way: Duration::from_millis(a.one_way_ms),
        jitter: Duration::from_millis(a.jitter_ms),
        loss: a.loss,
    };
    let mut links = Vec::new();
    for (i, l) in a.links.iter().enumerate() {
        let (listen, target) = parse(l)?;
        let link = WanLink::start(listen, target, delay, a.seed.wrapping_mul(31).wrapping_add(i as u64))
            .await
            .with_context(|| format!("listening on {listen}"))?;
        links.push(link);
    }
    // The links relay until the process is killed.
    let _links = links;
    std::future::pending::<anyhow::Result<()>>().await
}

fn main() -> ExitCode {
    let a = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
