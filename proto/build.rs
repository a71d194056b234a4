//! Compiles every `.proto` under this crate with protox (no system `protoc`), writes the
//! descriptor set to `OUT_DIR` for server reflection and the compatibility test, and generates
//! prost types and tonic stubs from it.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

/// Every protobuf file of the system, relative to this crate's root.
const PROTOS: &[&str] = &[
    "tertulia/auth/v1/auth.proto",
    "tertulia/chat/v1/chat.proto",
    "tertulia/chat/v2/chat.proto",
    "tertulia/presence/v1/presence.proto",
    "tertulia/catalog/v1/catalog.proto",
    "tertulia/catalog/v2/catalog.proto",
    "tertulia/media/v1/media.proto",
    "tertulia/events/v1/events.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=tertulia");
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    fs::write(out.join("tertulia_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
