//! Compiles `users.proto` with protox (pure Rust, no `protoc`) and generates the tonic code.

use std::path::PathBuf;

use protox::prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=users.proto");
    let descriptors = protox::compile(["users.proto"], ["."])?;
    // Server reflection answers from the same descriptors the code was generated from.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("users_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
