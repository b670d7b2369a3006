//! Compiles every contract under `../../proto` with `protox` (no system `protoc`
//! needed) and writes the encoded descriptor set for server reflection and for
//! the privacy declarations the service kit reads at run time.

use std::{env, fs, path::PathBuf};

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

    let mut compiler = protox::Compiler::new([&root, &third_party])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;
    let fds = compiler.file_descriptor_set();
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // `compile_fds` does not write the descriptor set, and reflection and
    // the kit need it with the custom options (the privacy declarations),
    // which prost's own descriptor types drop.
    fs::write(
        out.join("custodian_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".google.rpc", "::tonic_types");
    // Every Custodian message knows its own descriptor, so the kit can read
    // its privacy declarations and walk its fields generically.
    for file in &fds.file {
        let package = file.package();
        if !package.starts_with("custodian.") {
            continue;
        }
        let mut stack: Vec<(String, &prost_types::DescriptorProto)> = file
            .message_type
            .iter()
            .map(|m| (format!("{package}.{}", m.name()), m))
            .collect();
        while let Some((full_name, message)) = stack.pop() {
            if message.options.as_ref().is_some_and(|o| o.map_entry()) {
                continue;
            }
            builder = builder.message_attribute(
                format!(".{full_name}"),
                format!(
                    "#[derive(::prost_reflect::ReflectMessage)] \
                     #[prost_reflect(descriptor_pool = \"crate::DESCRIPTOR_POOL\", message_name = \"{full_name}\")]"
                ),
            );
            stack.extend(
                message
                    .nested_type
                    .iter()
                    .map(|m| (format!("{full_name}.{}", m.name()), m)),
            );
        }
    }
    builder.compile_fds(fds)?;
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
