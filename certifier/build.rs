//! Compiles `proto/certifier.proto` and `proto/raft.proto` with protox (pure Rust, no system
//! `protoc`) and generates prost messages plus the tonic client and server.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/certifier.proto");
    println!("cargo:rerun-if-changed=proto/raft.proto");
    let fds = protox::compile(["proto/certifier.proto", "proto/raft.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // Row images and keys become `bytes::Bytes`: chunks are sliced and
        // forwarded without copying.
        .bytes(".")
        // Undecodable requests become InvalidArgument (see src/codec.rs).
        .codec_path("crate::codec::StrictProstCodec")
        .compile_fds(fds)?;
    Ok(())
}
