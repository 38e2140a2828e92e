//! Compiles `proto/*.proto` with protox (a pure-Rust protobuf compiler), so no system `protoc`
//! is needed, and generates the Rust types with prost-build.

fn main() {
    let files = ["telemetry.proto", "control.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["."]).expect("proto files compile");
    prost_build::Config::new()
        .compile_fds(descriptors)
        .expect("prost code generation");
}
