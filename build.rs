//! Compiles the protobuf contract in `proto/` with `protox` (a pure-Rust protobuf compiler),
//! so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/smki/v1/events.proto",
        "proto/smki/store/v1/store.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // BTreeMap for map fields: their iteration (and so anything derived from it) is ordered.
    prost_build::Config::new()
        .btree_map(["."])
        .compile_fds(fds)?;
    Ok(())
}
