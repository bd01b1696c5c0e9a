//! A fake Go toolchain module (`golang.org/toolchain@v0.0.1-go<release>.<os>-<arch>`)
//! in the layout the go command's toolchain switch checks.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Result;
use rand::{rngs::SmallRng, RngCore, SeedableRng};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::fixtures::ProxyDir;

/// The toolchain module path.
pub const TOOLCHAIN: &str = "golang.org/toolchain";

/// `GOARCH` of this machine.
pub fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The module version of toolchain `release` (e.g. `go1.99.1`) for linux
/// on this machine's architecture.
pub fn version(release: &str) -> String {
    format!("v0.0.1-{release}.linux-{}", goarch())
}

/// Writes toolchain `release` into `proxy`: `bin/go`, a shell script that
/// prints `fake toolchain <release>: <args>`, `bin/gofmt`, `pkg/tool/<os>_<arch>/`,
/// `lib/`, `VERSION`, and `filler` random bytes (stored, written in 1 MiB
/// chunks) as `pkg/tool/<os>_<arch>/compile`. Returns the zip's path.
pub fn write(proxy: &ProxyDir, release: &str, filler: u64) -> Result<PathBuf> {
    let v = version(release);
    let zip_path = proxy.file(TOOLCHAIN, &v, "zip");
    let dir = zip_path.parent().expect("@v dir").to_path_buf();
    fs::create_dir_all(&dir)?;
    fs::write(
        proxy.file(TOOLCHAIN, &v, "info"),
        serde_json::json!({ "Version": v, "Time": "2024-01-01T00:00:00Z" }).to_string(),
    )?;
    fs::write(
        proxy.file(TOOLCHAIN, &v, "mod"),
        format!("module {TOOLCHAIN}\n"),
    )?;
    let mut zw = ZipWriter::new(BufWriter::new(File::create(&zip_path)?));
    let prefix = format!("{TOOLCHAIN}@{v}/");
    let small = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    let tool = format!("pkg/tool/linux_{}", goarch());
    let files: Vec<(String, Vec<u8>)> = vec![
        (
            "bin/go".into(),
            format!("#!/bin/sh\necho \"fake toolchain {release}: $*\"\n").into_bytes(),
        ),
        ("bin/gofmt".into(), b"#!/bin/sh\nexit 0\n".to_vec()),
        (format!("{tool}/vet"), b"#!/bin/sh\nexit 0\n".to_vec()),
        ("lib/time/README".into(), b"fake\n".to_vec()),
        ("VERSION".into(), format!("{release}\n").into_bytes()),
    ];
    for (name, data) in files {
        zw.start_file(format!("{prefix}{name}"), small)?;
        zw.write_all(&data)?;
    }
    let stored = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .large_file(filler >= u32::MAX as u64);
    zw.start_file(format!("{prefix}{tool}/compile"), stored)?;
    let mut rng = SmallRng::seed_from_u64(filler ^ 0x70_01);
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = filler;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        rng.fill_bytes(&mut chunk[..n]);
        zw.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    zw.finish()?.flush()?;
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("list"))
        .and_then(|mut f| writeln!(f, "{v}"))?;
    Ok(zip_path)
}
