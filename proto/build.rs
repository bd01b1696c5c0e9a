//! Compiles the mesh's .proto files with a vendored protoc, so a fresh build
//! needs no system protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("modmesh_descriptor.bin"))
        .bytes(".")
        .compile_protos(
            &[
                "proto/types.proto",
                "proto/storage.proto",
                "proto/lock.proto",
                "proto/fetcher.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
