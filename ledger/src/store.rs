//! Raft storage on sled: the log and vote ([`LogStore`]) and the state
//! machine with its snapshots ([`StateMachineStore`]).
//!
//! Durability: sled only reaches disk on `flush`, so `save_vote` and
//! `append` flush before they report success (the append callback fires
//! after the flush, never before). The state machine lives in memory; its
//! snapshot is kept in sled, and on restart the state is the last snapshot
//! plus the committed log entries openraft re-applies after it.

// openraft fixes the storage error type; boxing it here would only add a conversion.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogState, RaftLogId, RaftLogReader, RaftSnapshotBuilder, StorageIOError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::metrics::LedgerMetrics;
use crate::raft_types::*;
use crate::state::LedgerState;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";
const KEY_SNAPSHOT_META: &[u8] = b"snapshot_meta";
const KEY_SNAPSHOT_DATA: &[u8] = b"snapshot_data";

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageError::IO { source: StorageIOError::new(subject, verb, openraft::AnyError::new(&e)) }
}

fn read_json<T: for<'de> Deserialize<'de>>(
    tree: &sled::Tree,
    key: &[u8],
    subject: ErrorSubject<NodeId>,
) -> Result<Option<T>, StorageError> {
    match tree.get(key).map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| io_err(subject, ErrorVerb::Read, e)),
    }
}

fn to_json<T: Serialize>(v: &T, subject: ErrorSubject<NodeId>) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(v).map_err(|e| io_err(subject, ErrorVerb::Write, e))
}

/// sled's log segment size (a power of two).
pub const SEGMENT_BYTES: usize = 8 * 1024 * 1024;

/// Opens (or creates) the ledger's sled database under `dir`.
pub fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    sled::Config::new()
        .path(dir)
        // Values (and the leaf pages holding them) above a quarter of a
        // segment become separate blob files, each written and synced on its
        // own; batched entries are tens of KB, so give them room.
        .segment_size(SEGMENT_BYTES)
        // Durability comes from explicit flushes; the background flusher
        // only adds writes.
        .flush_every_ms(None)
        .open()
}

/// The Raft log and vote, in two sled trees.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    metrics: Option<Arc<LedgerMetrics>>,
}

impl LogStore {
    pub fn new(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(LogStore { db: db.clone(), log: db.open_tree("log")?, meta: db.open_tree("meta")?, metrics: None })
    }

    /// Reports each append's write-and-fsync time to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<LedgerMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    async fn flush(&self, subject: ErrorSubject<NodeId>) -> Result<(), StorageError> {
        self.db.flush_async().await.map_err(|e| io_err(subject, ErrorVerb::Write, e))?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(i.to_be_bytes()),
            Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(i.to_be_bytes()),
            Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        // Purged entries may still be on disk for a moment (they are deleted
        // in the background, see `purge`): never return them.
        let purged: Option<LogId> = read_json(&self.meta, KEY_PURGED, ErrorSubject::Logs)?;
        let floor = purged.map_or(0, |p| p.index + 1);
        let mut out = Vec::new();
        for kv in self.log.range::<[u8; 8], _>((start, end)) {
            let (k, v) = kv.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            if <[u8; 8]>::try_from(k.as_ref()).is_ok_and(|k| u64::from_be_bytes(k) < floor) {
                continue;
            }
            let entry: Entry = crate::codec::decode(&v).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = read_json(&self.meta, KEY_PURGED, ErrorSubject::Logs)?;
        let last = match self.log.last().map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))? {
            None => None,
            Some((_, v)) => {
                let e: Entry = crate::codec::decode(&v).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                Some(*e.get_log_id())
            }
        };
        // A leftover entry at or below the purge point (deleted in the
        // background) is not the last log id.
        let last = match (last, last_purged) {
            (Some(l), Some(p)) if l.index <= p.index => Some(p),
            (l, p) => l.or(p),
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let v = to_json(vote, ErrorSubject::Vote)?;
        self.meta.insert(KEY_VOTE, v).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        // The vote must be on disk before we answer anyone with it.
        self.flush(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        read_json(&self.meta, KEY_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: losing it only means re-applying less on restart.
        let v = to_json(&committed, ErrorSubject::Store)?;
        self.meta.insert(KEY_COMMITTED, v).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(read_json::<Option<LogId>>(&self.meta, KEY_COMMITTED, ErrorSubject::Store)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let started = std::time::Instant::now();
        let mut batch = sled::Batch::default();
        let mut n = 0usize;
        for entry in entries {
            let v = crate::codec::encode(&entry).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            batch.insert(&entry.get_log_id().index.to_be_bytes(), v);
            n += 1;
        }
        self.log.apply_batch(batch).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        let written = started.elapsed();
        // Entries must be on disk before openraft counts them toward a quorum.
        let res = self.db.flush_async().await.map(|_| ()).map_err(std::io::Error::other);
        if let Some(m) = &self.metrics {
            m.log_flush(started.elapsed());
        }
        tracing::debug!(
            entries = n,
            write_us = written.as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "log append flushed"
        );
        callback.log_io_completed(res);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for kv in self.log.range(log_id.index.to_be_bytes()..) {
            let (k, _) = kv.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.flush(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash between the two steps leaves
        // extra entries, never a gap that the log state does not explain.
        let v = to_json(&Some(log_id), ErrorSubject::Logs)?;
        self.meta.insert(KEY_PURGED, v).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        self.flush(ErrorSubject::Logs).await?;
        // Deleting thousands of entries takes tens of milliseconds, and
        // openraft waits for `purge` before the next append: every commit
        // stalled for that long after each snapshot. The purge point is
        // durable above, openraft never reads below it, and leftovers after
        // a crash are harmless, so the deletion runs on a blocking thread.
        let log = self.log.clone();
        let upto = log_id.index;
        tokio::task::spawn_blocking(move || {
            let mut batch = sled::Batch::default();
            for (k, _) in log.range(..=upto.to_be_bytes()).flatten() {
                batch.remove(k);
            }
            if let Err(e) = log.apply_batch(batch) {
                tracing::error!("deleting purged log entries up to {upto}: {e}");
            }
        });
        Ok(())
    }
}

/// The applied state: what the digest, the APIs and snapshots read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub state: LedgerState,
}

impl Applied {
    pub fn applied_index(&self) -> u64 {
        self.last_applied.map(|l| l.index).unwrap_or(0)
    }
}

/// The state machine, shared with the API servers (which only read it).
#[derive(Clone)]
pub struct StateMachineStore {
    pub applied: Arc<RwLock<Applied>>,
    snapshots: sled::Tree,
    db: sled::Db,
    /// Bumped with the config index whenever an entry changes config.
    config_tx: Arc<watch::Sender<u64>>,
    /// Bumped with every applied index.
    applied_tx: Arc<watch::Sender<u64>>,
    /// The digest of the state at an applied index, computed at most once per
    /// index and by one caller at a time (status calls cannot pile up work).
    digest_cache: Arc<tokio::sync::Mutex<Option<(u64, String)>>>,
}

impl StateMachineStore {
    pub fn new(db: &sled::Db) -> Result<Self, StorageError> {
        let snapshots = db.open_tree("snapshots").map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        let mut applied = Applied::default();
        if let Some((meta, data)) = load_snapshot(&snapshots)? {
            applied = decode_applied(&data, &meta)?;
        }
        let (config_tx, _) = watch::channel(applied.state.config_index);
        let (applied_tx, _) = watch::channel(applied.applied_index());
        Ok(StateMachineStore {
            applied: Arc::new(RwLock::new(applied)),
            snapshots,
            db: db.clone(),
            config_tx: Arc::new(config_tx),
            applied_tx: Arc::new(applied_tx),
            digest_cache: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    pub fn watch_config(&self) -> watch::Receiver<u64> {
        self.config_tx.subscribe()
    }

    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// Reads the applied state under the lock.
    pub fn read<T>(&self, f: impl FnOnce(&Applied) -> T) -> T {
        let guard = self.applied.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// The applied index and the state digest at it. Hashing runs on a
    /// blocking thread over a copy, so applies wait only for the copy.
    pub async fn digest(&self) -> (u64, String) {
        let mut cache = self.digest_cache.lock().await;
        let index = self.read(|a| a.applied_index());
        if let Some((i, d)) = cache.as_ref() {
            if *i == index {
                return (*i, d.clone());
            }
        }
        let copy = self.read(|a| (a.applied_index(), a.state.clone()));
        let index = copy.0;
        let Ok(digest) = tokio::task::spawn_blocking(move || copy.1.digest()).await else {
            return (index, String::new());
        };
        *cache = Some((index, digest.clone()));
        (index, digest)
    }

    fn publish(&self) {
        let (cfg, idx) = self.read(|a| (a.state.config_index, a.applied_index()));
        self.config_tx.send_if_modified(|v| std::mem::replace(v, cfg) != cfg);
        self.applied_tx.send_if_modified(|v| std::mem::replace(v, idx) != idx);
    }
}

fn load_snapshot(tree: &sled::Tree) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
    let Some(meta) = read_json::<SnapshotMeta>(tree, KEY_SNAPSHOT_META, ErrorSubject::Snapshot(None))? else {
        return Ok(None);
    };
    let subject = ErrorSubject::Snapshot(Some(meta.signature()));
    let data = tree
        .get(KEY_SNAPSHOT_DATA)
        .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?
        .ok_or_else(|| io_err(subject, ErrorVerb::Read, std::io::Error::other("snapshot data missing")))?;
    Ok(Some((meta, data.to_vec())))
}

fn decode_applied(data: &[u8], meta: &SnapshotMeta) -> Result<Applied, StorageError> {
    let subject = ErrorSubject::Snapshot(Some(meta.signature()));
    let mut applied = decode_applied_bytes(data).map_err(|e| io_err(subject, ErrorVerb::Read, e))?;
    applied.state.rebuild_indexes();
    Ok(applied)
}

/// Decodes a snapshot. One written before `LedgerState` gained its last
/// fields is read as if they had their defaults: the encoding of the
/// defaults of the fields it lacks is appended and the whole decoded again,
/// and accepted only if it encodes back to exactly those bytes (a snapshot
/// cut short elsewhere stays an error). Two older formats exist: without
/// `prices`, `excess`, `attribution`; and also without `limits`,
/// `tombstones`. Decided on the decoder's end-of-input error, never on
/// message text.
pub fn decode_applied_bytes(data: &[u8]) -> Result<Applied, bincode::Error> {
    let eof = |e: &bincode::Error| matches!(&**e, bincode::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof);
    match crate::codec::decode_snapshot::<Applied>(data) {
        Err(e) if eof(&e) => {
            let d = LedgerState::default();
            // Each older format lacks the fields appended since, at its end.
            let leases = crate::codec::encode(&d.leases)?;
            let prices = [crate::codec::encode(&(&d.prices, &d.excess, &d.attribution))?, leases.clone()].concat();
            let limits = [crate::codec::encode(&(&d.limits, &d.tombstones))?, prices.clone()].concat();
            for (suffix, unnamed_tombstones) in [(leases, false), (prices, false), (limits, true)] {
                let mut padded = data.to_vec();
                padded.extend(suffix);
                let Ok(mut applied) = crate::codec::decode_snapshot::<Applied>(&padded) else { continue };
                if crate::codec::encode(&applied)? != padded {
                    continue;
                }
                if unnamed_tombstones {
                    // Its release tombstones were left by callers it did not
                    // name: they go where a replay of its log puts them (caller "").
                    applied.state.adopt_unnamed_tombstones();
                }
                return Ok(applied);
            }
            Err(e)
        }
        other => other,
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // Copy under the lock (applies wait only for the copy), encode on a
        // blocking thread so the runtime keeps serving RPCs meanwhile.
        let applied = self.read(|a| a.clone());
        let snapshot_id = match applied.last_applied {
            Some(l) => format!("{}-{}", l.leader_id, l.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.last_membership.clone(),
            snapshot_id,
        };
        let data = tokio::task::spawn_blocking(move || crate::codec::encode(&applied))
            .await
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        self.save_snapshot(&meta, &data).await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl StateMachineStore {
    async fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        // Meta and data in one atomic batch: a crash never pairs one with the other's peer.
        let mut batch = sled::Batch::default();
        batch.insert(KEY_SNAPSHOT_META, to_json(meta, subject.clone())?);
        batch.insert(KEY_SNAPSHOT_DATA, data);
        self.snapshots.apply_batch(batch).map_err(|e| io_err(subject.clone(), ErrorVerb::Write, e))?;
        self.db.flush_async().await.map_err(|e| io_err(subject, ErrorVerb::Write, e))?;
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self.read(|a| (a.last_applied, a.last_membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<LedgerResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        {
            let mut a = self.applied.write().unwrap_or_else(|p| p.into_inner());
            for entry in entries {
                let log_id = *entry.get_log_id();
                a.last_applied = Some(log_id);
                match entry.payload {
                    EntryPayload::Blank => {
                        a.state.note_index(log_id.index);
                        out.push(LedgerResponse::default());
                    }
                    EntryPayload::Normal(batch) => {
                        out.push(LedgerResponse(a.state.apply(log_id.index, &batch)));
                    }
                    EntryPayload::Membership(m) => {
                        a.state.note_index(log_id.index);
                        a.last_membership = StoredMembership::new(Some(log_id), m);
                        out.push(LedgerResponse::default());
                    }
                }
            }
        }
        self.publish();
        tracing::debug!(entries = out.len(), apply_us = started.elapsed().as_micros() as u64, "applied");
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let applied = decode_applied(&data, meta)?;
        self.save_snapshot(meta, &data).await?;
        *self.applied.write().unwrap_or_else(|p| p.into_inner()) = applied;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(load_snapshot(&self.snapshots)?.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}
