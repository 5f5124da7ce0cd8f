//! A ledger's data dir written by the builds on openraft 0.9 still reads
//! after the move to openraft 0.10: the vote and snapshot meta (JSON), a log
//! entry and a snapshot (the ledger's binary encoding), as a 0.9 build wrote
//! them (a one-node ledger with eleven teams, snapshotted at index 9).
//! Upgrading a cluster is stop, replace the binary, start; these are what it
//! reads back.

use openraft::vote::leader_id_adv::LeaderId;
use openraft::{EntryPayload, LogId};
use tollgate_ledger::raft_types::{Entry, SnapshotMeta, Vote};
use tollgate_ledger::state::{AdminOp, Command};
use tollgate_ledger::store::decode_applied_bytes;

const VOTE: &[u8] = include_bytes!("fixtures/v09-vote.json");
const ENTRY: &[u8] = include_bytes!("fixtures/v09-entry.bin");
const SNAPSHOT_META: &[u8] = include_bytes!("fixtures/v09-snapshot-meta.json");
const SNAPSHOT: &[u8] = include_bytes!("fixtures/v09-snapshot.bin");

#[test]
fn a_data_dir_from_openraft_0_9_reads_the_same() {
    let vote: Vote = serde_json::from_slice(VOTE).unwrap();
    assert_eq!(vote, Vote::new_committed(1, 1));

    let entry: Entry = tollgate_ledger::codec::decode(ENTRY).unwrap();
    assert_eq!(entry.log_id, LogId::new(LeaderId { term: 1, node_id: 1 }, 13));
    let EntryPayload::Normal(batch) = entry.payload else { panic!("not a normal entry: {:?}", entry.payload) };
    assert_eq!(batch.time_ms, 1_796_031_265_192);
    assert_eq!(
        batch.cmds,
        vec![Command::Admin { actor: "admin-token".into(), op: AdminOp::CreateTeam { name: "tk".into() } }]
    );

    let meta: SnapshotMeta = serde_json::from_slice(SNAPSHOT_META).unwrap();
    assert_eq!(meta.last_log_id, Some(LogId::new(LeaderId { term: 1, node_id: 1 }, 9)));
    let voters: Vec<u64> = meta.last_membership.membership().voter_ids().collect();
    assert_eq!(voters, vec![1]);

    let applied = decode_applied_bytes(SNAPSHOT).unwrap();
    assert_eq!(applied.last_applied, meta.last_log_id);
    // Teams ta..tg were created at indexes 3..9.
    let teams: Vec<&str> = applied.state.teams.keys().map(String::as_str).collect();
    assert_eq!(teams, ["ta", "tb", "tc", "td", "te", "tf", "tg"]);
    applied.state.check_invariants().unwrap();
}
