//! openraft's storage conformance suite (`openraft::testing::log::Suite`) run
//! against the real sled-backed log store and state machine, each case on a
//! fresh database in its own temporary directory.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::vote::leader_id_adv::LeaderId;
use openraft::StorageError;
use tollgate_ledger::raft_types::{TypeConfig, Vote};
use tollgate_ledger::store::{open_db, LogStore, StateMachineStore};

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = open_db(&dir.path().join("raft")).expect("open sled");
        let log = LogStore::new(&db).expect("log store");
        let sm =
            StateMachineStore::new(&open_db(&dir.path().join("snapshots")).expect("open sled")).expect("state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn sled_store_passes_openraft_suite() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Err(e) = rt.block_on(Suite::test_all(SledBuilder)) {
        panic!("storage suite failed: {e}");
    }
}

/// The state machine comes back from its last snapshot after a restart, with
/// the same digest, and the vote and log survive a reopen.
#[test]
fn snapshot_and_vote_survive_reopen() {
    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    use openraft::{RaftLogReader, RaftSnapshotBuilder};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let digest;
        {
            let db = open_db(&dir.path().join("raft")).unwrap();
            let mut log = LogStore::new(&db).unwrap();
            let mut sm = StateMachineStore::new(&open_db(&dir.path().join("snapshots")).unwrap()).unwrap();
            log.save_vote(&Vote::new(7, 2)).await.unwrap();
            let entry = tollgate_ledger::raft_types::Entry {
                log_id: openraft::LogId::new(LeaderId { term: 7, node_id: 2 }, 1),
                payload: openraft::EntryPayload::Normal(tollgate_ledger::state::Batch {
                    time_ms: 1_000,
                    cmds: vec![tollgate_ledger::state::Command::Admin {
                        actor: "t".into(),
                        op: tollgate_ledger::state::AdminOp::CreateTeam { name: "eng".into() },
                    }],
                }),
            };
            sm.apply(futures::stream::iter([Ok((entry, None))])).await.unwrap();
            let snap = sm.build_snapshot().await.unwrap();
            assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(1));
            digest = sm.read(|a| a.state.digest());
        }
        let db = open_db(&dir.path().join("raft")).unwrap();
        let mut log = LogStore::new(&db).unwrap();
        let mut sm = StateMachineStore::new(&open_db(&dir.path().join("snapshots")).unwrap()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(7, 2)));
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(1));
        assert_eq!(sm.read(|a| a.state.digest()), digest);
        assert!(sm.read(|a| a.state.teams.contains_key("eng")));
    });
}
