//! Compiles every contract under `../../proto` with `protox` (no system `protoc`
//! needed) and writes the encoded descriptor set for server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.join("../../proto");
    // Third-party contracts served by reflection only (their Rust types come
    // from other crates): google.rpc error details, so grpcurl can print them.
    let third_party = manifest.join("third_party");
    println!("cargo:rerun-if-changed={}", root.display());
    println!("cargo:rerun-if-changed={}", third_party.display());

    let mut files = Vec::new();
    collect_protos(&root, &mut files)?;
    collect_protos(&third_party, &mut files)?;
    files.sort();

    let fds = protox::compile(&files, [&root, &third_party])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // `compile_fds` does not write the descriptor set, and reflection needs it.
    fs::write(out.join("custodian_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".google.rpc", "::tonic_types")
        .compile_fds(fds)?;
    Ok(())
}

fn collect_protos(dir: &PathBuf, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
