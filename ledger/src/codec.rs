//! The binary encoding of what the ledger writes to its log and snapshots
//! and sends between its nodes: bincode (varint), with a size limit on
//! decoding so a corrupt or hostile payload cannot ask for unbounded memory.
//! JSON stays for small metadata and for the canonical digest.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest value the ledger decodes (a snapshot of a very large state).
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

fn options() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_DECODE_BYTES)
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, bincode::Error> {
    options().serialize(v)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    options().deserialize(bytes)
}

#[cfg(test)]
mod tests {
    use crate::state::{Batch, Command, HoldId, Usage};

    #[test]
    fn batches_round_trip() {
        let b = Batch {
            time_ms: 42,
            cmds: vec![
                Command::Settle {
                    hold: HoldId(u128::MAX - 7),
                    cost: crate::money::NanoUsd(9),
                    usage: Usage { input_tokens: 3, ..Default::default() },
                    estimated: true,
                    session: Some("s".into()),
                },
                Command::Tick,
            ],
        };
        let bytes = super::encode(&b).unwrap();
        assert_eq!(super::decode::<Batch>(&bytes).unwrap(), b);
        assert!(super::decode::<Batch>(&bytes[..bytes.len() - 1]).is_err());
    }
}
