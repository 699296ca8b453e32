//! Generates the ttrpc client/server code from `protos/` at build time with the pure-Rust
//! protobuf parser (no system `protoc`).

use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    let protos = [
        "protos/health.proto",
        "protos/diagnostics.proto",
        "protos/portforward.proto",
        "protos/oci.proto",
        "protos/types.proto",
        "protos/agent.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs(protos)
        .include("protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize { async_all: true, ..Default::default() })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("ttrpc code generation");
    // Generated files start with inner attributes, which `include!` does not accept.
    for entry in fs::read_dir(&out).expect("read OUT_DIR") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            strip_inner_attributes(&path);
        }
    }
}

fn strip_inner_attributes(path: &Path) {
    let text = fs::read_to_string(path).expect("read generated file");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            !l.starts_with("#![") && !l.starts_with("//!")
        })
        .collect();
    fs::write(path, kept.join("\n")).expect("write generated file");
}
