//! Compiles the test-only contract of a sixth service (`proto/`) with
//! `protox`, as `custodian-proto` compiles the suite's: its Rust types, and
//! the encoded descriptor set of its own file, which the kit adds to the
//! suite's declarations at run time (`custodian_kit::declare::add_contracts`).

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let own = manifest.join("proto");
    let suite = manifest.join("../proto");
    println!("cargo:rerun-if-changed={}", own.display());
    let file = "custodian/notes/v1/note_service.proto";

    let mut compiler = protox::Compiler::new([&own, &suite])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_file(file)?;
    let fds = compiler.file_descriptor_set();
    // Its own file only (its imports are the suite's contracts, in the
    // pool already), encoded from the compiler's pool: prost's descriptor
    // types would drop the custom options, which are the declarations.
    let own = compiler
        .descriptor_pool()
        .get_file_by_name(file)
        .ok_or("the contract compiled")?
        .encode_to_vec();
    let mut set = Vec::new();
    prost::encoding::bytes::encode(1, &own, &mut set);
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("notes_descriptor.bin"), set)?;
    let own_only: Vec<_> = fds.file.iter().filter(|f| f.name() == file).collect();

    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".custodian.common", "::custodian_proto::common")
        .extern_path(".custodian.privacy", "::custodian_proto::privacy");
    for message in &own_only[0].message_type {
        let full_name = format!("custodian.notes.v1.{}", message.name());
        builder = builder.message_attribute(
            format!(".{full_name}"),
            format!(
                "#[derive(::prost_reflect::ReflectMessage)] \
                 #[prost_reflect(descriptor_pool = \"crate::notes::POOL\", message_name = \"{full_name}\")]"
            ),
        );
    }
    // Code is generated for the imports too (prost resolves types through
    // them); only this contract's module is included.
    builder.compile_fds(fds)?;
    Ok(())
}
