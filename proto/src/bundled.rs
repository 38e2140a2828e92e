//! Where the bundled session lives on disk.
//!
//! The bundled race (`data/2023-british-gp-race.parquet`) is GPL-3.0 data (see
//! `data/PROVENANCE.md`), while Pitwall's binaries are Apache-2.0. So the binaries never carry
//! it: the server's embedded source and the CLI's default replay read the file at run time,
//! from the first of these places that holds it:
//!
//! 1. the file named by `PITWALL_BUNDLED` (an operator's own copy);
//! 2. `../share/pitwall/` beside the executable (an install: `/usr/local/bin/pitwall-server`
//!    reads `/usr/local/share/pitwall/`; the Docker images are laid out so);
//! 3. `data/` beside the executable;
//! 4. `data/` in the current directory;
//! 5. `data/` of the source tree the binary was built from, so `cargo run` on a fresh clone
//!    finds it (only the path is compiled in, never the data).

use std::path::{Path, PathBuf};

/// File name of the bundled session.
pub const FILE_NAME: &str = "2023-british-gp-race.parquet";
/// Session name of the bundled race.
pub const NAME: &str = "2023-british-gp-race";
/// Environment variable naming the bundled session's file explicitly.
pub const ENV: &str = "PITWALL_BUNDLED";

/// The places searched, in order (see the module docs).
pub fn candidates() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os(ENV) {
        return vec![PathBuf::from(p)];
    }
    let mut out = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        out.push(dir.join("../share/pitwall").join(FILE_NAME));
        out.push(dir.join("data").join(FILE_NAME));
    }
    out.push(Path::new("data").join(FILE_NAME));
    out.push(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../data")).join(FILE_NAME));
    out
}

/// The bundled session's file, or a one-line error saying where it was looked for.
pub fn path() -> Result<PathBuf, String> {
    let candidates = candidates();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(format!(
        "the bundled session {FILE_NAME} was not found (looked in: {}); it ships beside the \
         binaries, not inside them (GPL-3.0 data): set {ENV}=FILE or install it in \
         ../share/pitwall/ beside the executable",
        tried.join(", ")
    ))
}

/// The bundled session's bytes, read from [`path`].
pub fn read() -> Result<Vec<u8>, String> {
    let p = path()?;
    std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))
}
