//! Tollgate's gRPC wire types: the `.proto` files under `proto/` and the
//! tonic/prost code generated from them. Nothing else lives here: domain
//! types stay in the crates that own them and convert at their edges.
#![forbid(unsafe_code)]
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("tollgate.v1");
}

/// The encoded `FileDescriptorSet`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tollgate_descriptor.bin"));
