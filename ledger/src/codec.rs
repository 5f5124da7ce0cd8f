//! The binary encoding of what the ledger writes to its log and snapshots
//! and sends between its nodes: bincode (varint), with a size limit on
//! decoding so a corrupt or hostile payload cannot ask for unbounded memory.
//! JSON stays for small metadata and for the canonical digest.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The most a value received from the network or read from the log may ask
/// the decoder to allocate. Snapshots written by this node are decoded with
/// [`decode_snapshot`], bounded by their own size instead.
pub const MAX_DECODE_BYTES: u64 = 256 << 20;

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, bincode::Error> {
    bincode::DefaultOptions::new().serialize(v)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::DefaultOptions::new().with_limit(MAX_DECODE_BYTES).deserialize(bytes)
}

/// Decodes a snapshot: it may be larger than any message, so the bound is
/// a multiple of its encoded size (what the decoded state can take).
pub fn decode_snapshot<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    let limit = (bytes.len() as u64).saturating_mul(8).max(MAX_DECODE_BYTES);
    bincode::DefaultOptions::new().with_limit(limit).deserialize(bytes)
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
