//! Money: [`tollgate_types::money`], re-exported where the ledger's code names it.

pub use tollgate_types::money::*;
