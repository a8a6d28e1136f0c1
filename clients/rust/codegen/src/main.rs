//! Generates the Rust stubs for proto/mabeam/v1 into the directory given as the first argument.
//!
//! Run by `tools/protogen.sh` with PROTOC pointing at tools/protoc (the protoc inside grpcio-tools),
//! so the SDK itself needs no protoc and no build script: its generated code is committed.
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = env::args().skip(1);
    let out: PathBuf = args.next().ok_or("usage: mabeam-codegen OUT_DIR PROTO_ROOT")?.into();
    let root: PathBuf = args.next().ok_or("usage: mabeam-codegen OUT_DIR PROTO_ROOT")?.into();
    let mut protos: Vec<PathBuf> = fs::read_dir(root.join("mabeam/v1"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    protos.sort();
    fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .build_server(false)
        .emit_rerun_if_changed(false)
        .out_dir(&out)
        .compile_protos(&protos, &[root])?;
    Ok(())
}
