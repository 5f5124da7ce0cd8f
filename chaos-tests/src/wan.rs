//! A wide-area link in user space, for multi-region runs: a TCP relay that
//! delays every byte by a one-way latency (plus seeded jitter) in each
//! direction, keeps each direction in order, and can be cut and healed.
//! This machine's kernel (and CI's) has no netem, so the delay cannot be a
//! qdisc. Written here rather than taken from `noxious` (a Toxiproxy port):
//! what a run needs is this one toxic, in order, and a partition that
//! behaves like one for TCP: while the link is cut nothing is delivered and
//! bytes wait (bounded) until it heals or the endpoints give up, as a
//! retransmitting TCP connection would. Loss is modelled as TCP shows it
//! to the endpoints: a lost segment arrives one retransmission timeout
//! (200 ms, Linux's minimum) late, and what follows it waits behind it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::rng::Rng;

/// Bytes read at once, and chunks in flight per direction: at most 1 MiB
/// waits in a direction; beyond it the sender is slowed, as by TCP.
const CHUNK: usize = 16 * 1024;
const IN_FLIGHT: usize = 64;

/// How late a lost chunk arrives: Linux's minimum retransmission timeout.
pub const RETRANSMIT: Duration = Duration::from_millis(200);

/// One direction's delay.
#[derive(Debug, Clone, Copy)]
pub struct Delay {
    pub one_way: Duration,
    /// Up to this much more, per chunk (never reordering).
    pub jitter: Duration,
    /// Chance that a chunk is lost once and retransmitted ([`RETRANSMIT`] late).
    pub loss: f64,
}

/// A relay from `addr` to a target; stops when dropped.
pub struct WanLink {
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl WanLink {
    /// Listens on `listen` (port 0 for any) and relays each connection to
    /// `target` with `delay` each way; `seed` fixes the jitter.
    pub async fn start(listen: SocketAddr, target: SocketAddr, delay: Delay, seed: u64) -> std::io::Result<WanLink> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (open, open_rx) = watch::channel(true);
        let task = tokio::spawn(async move {
            let mut rng = Rng::new(seed);
            while let Ok((client, _)) = listener.accept().await {
                let seeds = (rng.next_u64(), rng.next_u64());
                tokio::spawn(relay(client, target, delay, seeds, open_rx.clone()));
            }
        });
        Ok(WanLink { addr, open, task })
    }

    /// Cuts the link: nothing is delivered until `heal`.
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    pub fn heal(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for WanLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, target: SocketAddr, delay: Delay, seeds: (u64, u64), open: watch::Receiver<bool>) {
    let Ok(server) = TcpStream::connect(target).await else { return };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::join!(pipe(cr, sw, delay, seeds.0, open.clone()), pipe(sr, cw, delay, seeds.1, open));
}

/// One direction: read, stamp each chunk with when it may arrive (never
/// before the one ahead of it), and write it then, while the link is open.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Delay,
    seed: u64,
    mut open: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(IN_FLIGHT);
    let reader = async move {
        let mut rng = Rng::new(seed);
        let mut last = Instant::now();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut late = delay.one_way + delay.jitter.mul_f64(rng.unit());
            if rng.unit() < delay.loss {
                late += RETRANSMIT;
            }
            last = last.max(Instant::now() + late);
            if tx.send((last, Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if open.wait_for(|o| *o).await.is_err() || to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server; its address.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn link(one_way_ms: u64, jitter_ms: u64) -> WanLink {
        lossy_link(one_way_ms, jitter_ms, 0.0).await
    }

    async fn lossy_link(one_way_ms: u64, jitter_ms: u64, loss: f64) -> WanLink {
        let delay =
            Delay { one_way: Duration::from_millis(one_way_ms), jitter: Duration::from_millis(jitter_ms), loss };
        WanLink::start("127.0.0.1:0".parse().unwrap(), echo().await, delay, 7).await.unwrap()
    }

    /// How long "ping" takes to come back through `l`.
    async fn ping(l: &WanLink) -> Duration {
        let mut s = TcpStream::connect(l.addr).await.unwrap();
        let t0 = std::time::Instant::now();
        s.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        t0.elapsed()
    }

    #[tokio::test]
    async fn a_round_trip_takes_both_one_way_delays() {
        let took = ping(&link(40, 0).await).await;
        assert!(took >= Duration::from_millis(80), "{took:?}");
    }

    #[tokio::test]
    async fn a_lost_chunk_arrives_one_retransmission_late() {
        let took = ping(&lossy_link(10, 0, 1.0).await).await;
        // Lost both ways: two retransmissions on top of the round trip.
        assert!(took >= 2 * RETRANSMIT + Duration::from_millis(20), "{took:?}");
    }

    #[tokio::test]
    async fn jitter_and_loss_never_reorder_or_lose_a_byte() {
        let l = lossy_link(1, 5, 0.05).await;
        let mut s = TcpStream::connect(l.addr).await.unwrap();
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let (mut r, mut w) = s.split();
        let mut got = vec![0u8; sent.len()];
        let both = async { tokio::join!(w.write_all(&sent), r.read_exact(&mut got)) };
        let (wrote, read) = tokio::time::timeout(Duration::from_secs(20), both).await.expect("bytes lost on the way");
        wrote.unwrap();
        read.unwrap();
        assert!(got == sent, "the stream came back changed");
    }

    #[tokio::test]
    async fn a_cut_link_delivers_nothing_until_it_heals_then_everything() {
        let l = link(1, 0).await;
        let mut s = TcpStream::connect(l.addr).await.unwrap();
        l.cut();
        s.write_all(b"held").await.unwrap();
        let mut got = [0u8; 4];
        let early = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut got)).await;
        assert!(early.is_err(), "delivered across a cut link");
        l.heal();
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(&got, b"held");
    }
}
