//! Compiles the `.proto` files with protox (pure Rust), so a fresh machine
//! needs no system `protoc`, and keeps the encoded descriptor set for gRPC
//! server reflection.

use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/tollgate/v1/raft.proto", "proto/tollgate/v1/ledger.proto", "proto/tollgate/v1/admin.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("tollgate_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
