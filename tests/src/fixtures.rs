//! Made-up Go modules laid out as a GOPROXY directory.
//!
//! [`ProxyDir`] writes `<escaped module>/@v/{list, <escaped version>.info, .mod, .zip}`
//! exactly as the GOPROXY protocol serves them; [`standard_modules`] is a small
//! dependency graph that covers the awkward cases (mixed-case path, `/v2` module,
//! `+incompatible` version without go.mod, pre-release, pseudo-version), and
//! [`write_program`] writes a main module that requires all of them.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::{rngs::SmallRng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

pub use modmesh_proto::coords::escape;
pub use modmesh_proto::is_pseudo_version;

/// The GOPROXY URL path (leading `/`) of a module version's file, e.g.
/// `/example.com/!mixed/!case/@v/v1.2.3.zip`. `ext` is `info`, `mod` or `zip`.
pub fn url_path(module: &str, version: &str, ext: &str) -> String {
    format!("/{}/@v/{}.{ext}", escape(module), escape(version))
}

/// One version of a made-up module.
#[derive(Debug, Clone)]
pub struct ModuleVersion {
    /// Module path, unescaped (`example.com/Mixed/Case`).
    pub path: String,
    /// Canonical version (`v1.2.3`, `v2.0.0+incompatible`, pseudo-versions…).
    pub version: String,
    /// RFC 3339 time for the `.info` file.
    pub time: String,
    /// The go.mod, or `None` for a module without one (the `.mod` is then the
    /// synthetic `module <path>` and the zip has no go.mod).
    pub go_mod: Option<String>,
    /// Files of the zip, relative to the module root.
    pub files: Vec<(String, Vec<u8>)>,
}

impl ModuleVersion {
    /// The `.mod` file served for this version.
    pub fn mod_file(&self) -> String {
        match &self.go_mod {
            Some(m) => m.clone(),
            None => format!("module {}\n", self.path),
        }
    }

    /// The `.info` JSON served for this version.
    pub fn info_json(&self) -> String {
        serde_json::json!({ "Version": self.version, "Time": self.time }).to_string()
    }
}

/// A directory laid out as a GOPROXY (what `GOPROXY=file://DIR` or any static
/// HTTP server of it serves).
#[derive(Debug, Clone)]
pub struct ProxyDir {
    root: PathBuf,
}

impl ProxyDir {
    /// Uses (and creates) `root` as the proxy's top directory.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
        Ok(ProxyDir { root })
    }

    /// The top directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a module version's `ext` file (`info`, `mod`, `zip`) lives on disk.
    pub fn file(&self, module: &str, version: &str, ext: &str) -> PathBuf {
        self.root
            .join(url_path(module, version, ext).trim_start_matches('/'))
    }

    fn version_dir(&self, module: &str) -> Result<PathBuf> {
        let dir = self.root.join(escape(module)).join("@v");
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(dir)
    }

    /// Appends `version` to the module's `list` (creating it, possibly empty:
    /// pseudo-versions are not listed).
    fn add_to_list(&self, module: &str, version: &str) -> Result<()> {
        let list = self.version_dir(module)?.join("list");
        let mut f = OpenOptions::new().create(true).append(true).open(&list)?;
        if !is_pseudo_version(version) {
            writeln!(f, "{version}")?;
        }
        Ok(())
    }

    /// Writes `.info`, `.mod`, `.zip` (entries prefixed `<module>@<version>/`,
    /// deflated) and the list entry of one module version.
    pub fn add(&self, mv: &ModuleVersion) -> Result<()> {
        self.version_dir(&mv.path)?;
        fs::write(self.file(&mv.path, &mv.version, "info"), mv.info_json())?;
        fs::write(self.file(&mv.path, &mv.version, "mod"), mv.mod_file())?;
        let zip_path = self.file(&mv.path, &mv.version, "zip");
        let mut zw = ZipWriter::new(BufWriter::new(File::create(&zip_path)?));
        let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        let prefix = format!("{}@{}/", mv.path, mv.version);
        if let Some(m) = &mv.go_mod {
            zw.start_file(format!("{prefix}go.mod"), opts)?;
            zw.write_all(m.as_bytes())?;
        }
        for (name, data) in &mv.files {
            if name == "go.mod" {
                bail!("{}: put go.mod in ModuleVersion::go_mod", mv.path);
            }
            zw.start_file(format!("{prefix}{name}"), opts)?;
            zw.write_all(data)?;
        }
        zw.finish()?.flush()?;
        self.add_to_list(&mv.path, &mv.version)
    }

    /// Adds every module version of `mvs`.
    pub fn add_all(&self, mvs: &[ModuleVersion]) -> Result<()> {
        mvs.iter().try_for_each(|mv| self.add(mv))
    }

    /// Adds a module whose zip holds its go.mod and one *stored* (uncompressed)
    /// file `blob.bin` of `size` random bytes, written in 1 MiB chunks (no
    /// buffer of the whole size). Returns the zip's path.
    pub fn add_big(&self, module: &str, version: &str, size: u64) -> Result<PathBuf> {
        self.version_dir(module)?;
        let go_mod = format!("module {module}\n\ngo 1.21\n");
        let info = serde_json::json!({ "Version": version, "Time": "2024-03-04T05:06:07Z" });
        fs::write(self.file(module, version, "info"), info.to_string())?;
        fs::write(self.file(module, version, "mod"), &go_mod)?;
        let zip_path = self.file(module, version, "zip");
        let mut zw = ZipWriter::new(BufWriter::new(File::create(&zip_path)?));
        let prefix = format!("{module}@{version}/");
        zw.start_file(
            format!("{prefix}go.mod"),
            SimpleFileOptions::default().compression_method(CompressionMethod::Deflated),
        )?;
        zw.write_all(go_mod.as_bytes())?;
        let stored = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .large_file(size >= u32::MAX as u64);
        zw.start_file(format!("{prefix}blob.bin"), stored)?;
        let mut rng = SmallRng::seed_from_u64(size ^ 0x5eed);
        let mut chunk = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            rng.fill_bytes(&mut chunk[..n]);
            zw.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        zw.finish()?.flush()?;
        self.add_to_list(module, version)?;
        Ok(zip_path)
    }
}

impl ProxyDir {
    /// Writes a module version whose zip is `zip` as given (well-formed or
    /// not), with `.info`, `.mod` = `go_mod` and the list entry.
    pub fn add_raw(&self, module: &str, version: &str, go_mod: &str, zip: &[u8]) -> Result<()> {
        self.version_dir(module)?;
        let info = serde_json::json!({ "Version": version, "Time": "2024-01-01T00:00:00Z" });
        fs::write(self.file(module, version, "info"), info.to_string())?;
        fs::write(self.file(module, version, "mod"), go_mod)?;
        fs::write(self.file(module, version, "zip"), zip)?;
        self.add_to_list(module, version)
    }
}

/// A zip of `entries` (full names, contents), deflated.
pub fn zip_bytes(entries: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let mut zw = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for (name, data) in entries {
        zw.start_file(*name, opts)?;
        zw.write_all(data)?;
    }
    Ok(zw.finish()?.into_inner())
}

/// Hex SHA-256 of a file, read in chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub use modmesh_test_support::hex;

fn gomod(module: &str, requires: &[(&str, &str)]) -> Option<String> {
    let mut s = format!("module {module}\n\ngo 1.21\n");
    if !requires.is_empty() {
        s.push_str("\nrequire (\n");
        for (m, v) in requires {
            s.push_str(&format!("\t{m} {v}\n"));
        }
        s.push_str(")\n");
    }
    Some(s)
}

fn mv(path: &str, version: &str, go_mod: Option<String>, files: &[(&str, &str)]) -> ModuleVersion {
    ModuleVersion {
        path: path.into(),
        version: version.into(),
        time: "2024-01-02T03:04:05Z".into(),
        go_mod,
        files: files
            .iter()
            .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec()))
            .collect(),
    }
}

/// `example.com/base`: the leaf, with a release and a pre-release.
pub const BASE: &str = "example.com/base";
/// The pre-release of [`BASE`] everything ends up using.
pub const BASE_RC: &str = "v1.1.0-rc.1";
/// A mixed-case module path (escaped `example.com/!mixed/!case`).
pub const MIXED: &str = "example.com/Mixed/Case";
/// Version of [`MIXED`].
pub const MIXED_V: &str = "v1.2.3";
/// A major-version-2 module.
pub const LIB_V2: &str = "example.com/lib/v2";
/// Version of [`LIB_V2`].
pub const LIB_V2_V: &str = "v2.1.0";
/// A module served at a `+incompatible` version, without go.mod.
pub const LEGACY: &str = "example.com/legacy";
/// Version of [`LEGACY`].
pub const LEGACY_V: &str = "v2.0.0+incompatible";
/// A module known only by a pseudo-version.
pub const PSEUDO: &str = "example.com/pseudo";
/// Version of [`PSEUDO`].
pub const PSEUDO_V: &str = "v0.0.0-20240102030405-abcdefabcdef";

/// What the program of [`write_program`] prints (on stderr, via `println`).
pub const PROGRAM_OUTPUT: &str = "pseudo(lib/v2(mixed(base v1.1.0-rc.1)),legacy(base v1.1.0-rc.1))";

/// The made-up modules and their dependencies:
///
/// ```text
/// example.com/pseudo v0.0.0-2024…-abcdefabcdef ─┬─▶ example.com/lib/v2 v2.1.0 ─▶ example.com/Mixed/Case v1.2.3 ─▶ example.com/base v1.1.0-rc.1
///                                               └─▶ example.com/legacy v2.0.0+incompatible (no go.mod) ─▶ example.com/base
/// example.com/lib/v2 also requires example.com/base v1.0.0 (MVS picks v1.1.0-rc.1).
/// ```
///
/// Each holds a small package whose exported function calls into its dependency;
/// none imports the standard library, so a fresh build cache compiles little.
pub fn standard_modules() -> Vec<ModuleVersion> {
    vec![
        mv(
            BASE,
            "v1.0.0",
            gomod(BASE, &[]),
            &[(
                "base.go",
                "// Package base is the leaf of the fixture graph.\npackage base\n\n// Greet names the version.\nfunc Greet() string { return \"base v1.0.0\" }\n",
            )],
        ),
        mv(
            BASE,
            BASE_RC,
            gomod(BASE, &[]),
            &[(
                "base.go",
                "// Package base is the leaf of the fixture graph.\npackage base\n\n// Greet names the version.\nfunc Greet() string { return \"base v1.1.0-rc.1\" }\n",
            )],
        ),
        mv(
            MIXED,
            MIXED_V,
            gomod(MIXED, &[(BASE, BASE_RC)]),
            &[(
                "mixed.go",
                "// Package mixedcase lives at a mixed-case path.\npackage mixedcase\n\nimport \"example.com/base\"\n\n// Hello calls base.\nfunc Hello() string { return \"mixed(\" + base.Greet() + \")\" }\n",
            )],
        ),
        mv(
            LIB_V2,
            LIB_V2_V,
            gomod(LIB_V2, &[(MIXED, MIXED_V), (BASE, "v1.0.0")]),
            &[(
                "lib.go",
                "// Package lib is a /v2 module.\npackage lib\n\nimport mixedcase \"example.com/Mixed/Case\"\n\n// Lib calls mixedcase.\nfunc Lib() string { return \"lib/v2(\" + mixedcase.Hello() + \")\" }\n",
            )],
        ),
        mv(
            LEGACY,
            LEGACY_V,
            None,
            &[(
                "legacy.go",
                "// Package legacy predates modules.\npackage legacy\n\nimport \"example.com/base\"\n\n// Legacy calls base.\nfunc Legacy() string { return \"legacy(\" + base.Greet() + \")\" }\n",
            )],
        ),
        mv(
            PSEUDO,
            PSEUDO_V,
            gomod(PSEUDO, &[(LIB_V2, LIB_V2_V), (LEGACY, LEGACY_V)]),
            &[(
                "pseudo.go",
                "// Package pseudo is known only by a pseudo-version.\npackage pseudo\n\nimport (\n\t\"example.com/legacy\"\n\t\"example.com/lib/v2\"\n)\n\n// Pseudo calls lib and legacy.\nfunc Pseudo() string { return \"pseudo(\" + lib.Lib() + \",\" + legacy.Legacy() + \")\" }\n",
            )],
        ),
    ]
}

/// Writes the standard modules into a new [`ProxyDir`] at `root`.
pub fn standard_proxy(root: impl Into<PathBuf>) -> Result<ProxyDir> {
    let dir = ProxyDir::new(root)?;
    dir.add_all(&standard_modules())?;
    Ok(dir)
}

/// Writes a main module (`example.com/app`) into `dir` whose go.mod requires
/// every standard module at its version and whose `main` prints
/// [`PROGRAM_OUTPUT`].
pub fn write_program(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    let go_mod = format!(
        "module example.com/app\n\ngo 1.21\n\nrequire {PSEUDO} {PSEUDO_V}\n\nrequire (\n\t{MIXED} {MIXED_V} // indirect\n\t{BASE} {BASE_RC} // indirect\n\t{LEGACY} {LEGACY_V} // indirect\n\t{LIB_V2} {LIB_V2_V} // indirect\n)\n"
    );
    fs::write(dir.join("go.mod"), go_mod)?;
    fs::write(
        dir.join("main.go"),
        "package main\n\nimport \"example.com/pseudo\"\n\nfunc main() { println(pseudo.Pseudo()) }\n",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_the_go_command() {
        assert_eq!(escape("example.com/Mixed/Case"), "example.com/!mixed/!case");
        assert_eq!(escape("v1.0.0-RC"), "v1.0.0-!r!c");
        assert_eq!(
            url_path(LEGACY, LEGACY_V, "zip"),
            "/example.com/legacy/@v/v2.0.0+incompatible.zip"
        );
    }

    #[test]
    fn recognises_pseudo_versions() {
        assert!(is_pseudo_version(PSEUDO_V));
        assert!(is_pseudo_version("v1.2.4-0.20240102030405-abcdefabcdef"));
        assert!(is_pseudo_version(
            "v1.2.4-pre.0.20240102030405-abcdefabcdef"
        ));
        assert!(!is_pseudo_version(BASE_RC));
        assert!(!is_pseudo_version("v1.0.0"));
        assert!(!is_pseudo_version(LEGACY_V));
    }

    #[test]
    fn zips_carry_the_module_prefix_and_lists_skip_pseudo_versions() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = standard_proxy(tmp.path())?;
        for m in standard_modules() {
            let zip = File::open(dir.file(&m.path, &m.version, "zip"))?;
            let mut archive = zip::ZipArchive::new(zip)?;
            let prefix = format!("{}@{}/", m.path, m.version);
            let names: Vec<String> = archive.file_names().map(String::from).collect();
            assert!(names.iter().all(|n| n.starts_with(&prefix)), "{names:?}");
            let has_gomod = archive.by_name(&format!("{prefix}go.mod")).is_ok();
            assert_eq!(has_gomod, m.go_mod.is_some(), "{}", m.path);
        }
        let list = fs::read_to_string(tmp.path().join("example.com/base/@v/list"))?;
        assert_eq!(list, "v1.0.0\nv1.1.0-rc.1\n");
        let list = fs::read_to_string(tmp.path().join("example.com/pseudo/@v/list"))?;
        assert_eq!(list, "");
        assert_eq!(
            fs::read_to_string(dir.file(LEGACY, LEGACY_V, "mod"))?,
            "module example.com/legacy\n"
        );
        assert!(tmp
            .path()
            .join("example.com/!mixed/!case/@v/v1.2.3.mod")
            .is_file());
        Ok(())
    }

    #[test]
    fn big_module_has_one_stored_file_of_the_asked_size() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = ProxyDir::new(tmp.path())?;
        let zip = dir.add_big("example.com/big", "v1.0.0", 3 << 20)?;
        let mut archive = zip::ZipArchive::new(File::open(&zip)?)?;
        let blob = archive.by_name("example.com/big@v1.0.0/blob.bin")?;
        assert_eq!(blob.size(), 3 << 20);
        assert_eq!(blob.compression(), CompressionMethod::Stored);
        Ok(())
    }
}
