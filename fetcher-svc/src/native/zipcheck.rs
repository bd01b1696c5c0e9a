//! The Go module zip rules and the go.sum hash (`h1:`, dirhash Hash1).
//!
//! [`check_zip`] reads a spooled zip from disk (never whole in memory) and
//! refuses it unless every entry lies under `module@version/` with a valid
//! file path, no two names are equal when case-folded, no entry is a
//! symlink or other irregular file, the unpacked total stays within
//! [`MAX_ZIP`], `go.mod` within [`MAX_GO_MOD`] and `LICENSE` within
//! [`MAX_LICENSE`], and the zip's `go.mod` (when it has one) equals the
//! `.mod` file. While reading each entry it hashes it, so it returns the
//! zip's `h1:` hash.

use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::{Read, Seek};

/// The largest zip file and the largest unpacked total (the go command's
/// limit).
pub const MAX_ZIP: u64 = 500 << 20;
/// The largest `go.mod`.
pub const MAX_GO_MOD: u64 = 16 << 20;
/// The largest `LICENSE`.
pub const MAX_LICENSE: u64 = 16 << 20;

/// `h1:` of files given as (name, sha256) pairs: sorted by name, one line
/// `<hex sha256>  <name>\n` each, hashed again with SHA-256, base64.
fn hash1(mut files: Vec<(String, [u8; 32])>) -> Result<String, String> {
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut summary = Sha256::new();
    for (name, sum) in &files {
        if name.contains('\n') {
            return Err(format!("file name {name:?} contains a newline"));
        }
        let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
        summary.update(format!("{hex}  {name}\n").as_bytes());
    }
    Ok(format!(
        "h1:{}",
        base64::engine::general_purpose::STANDARD.encode(summary.finalize())
    ))
}

/// The go.sum hash of a `.mod` file (the `/go.mod` line).
pub fn go_mod_hash(go_mod: &[u8]) -> String {
    let sum: [u8; 32] = Sha256::digest(go_mod).into();
    hash1(vec![("go.mod".to_string(), sum)]).unwrap_or_default()
}

/// Whether `name` is a reserved file name on Windows (`CON`, `COM1`, ...),
/// which module zips may not hold.
fn reserved(elem: &str) -> bool {
    let stem = elem.split('.').next().unwrap_or(elem).to_ascii_uppercase();
    matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit()
            && stem.as_bytes()[3] != b'0')
}

/// Why `path` (below `module@version/`) is not a valid module file path.
fn check_file_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty file path".into());
    }
    if path.starts_with('/') || path.ends_with('/') || path.contains("//") {
        return Err(format!("malformed file path {path:?}"));
    }
    for elem in path.split('/') {
        if elem == "." || elem == ".." {
            return Err(format!("file path {path:?} leaves its directory"));
        }
        if elem.ends_with('.') || reserved(elem) {
            return Err(format!("file path {path:?} has an invalid element"));
        }
        for c in elem.chars() {
            let ok = if c.is_ascii() {
                c.is_ascii_alphanumeric() || "!#$%&()+,-.=@[]^_{}~ '".contains(c)
            } else {
                c.is_alphabetic()
            };
            if !ok {
                return Err(format!("file path {path:?} has invalid character {c:?}"));
            }
        }
    }
    Ok(())
}

/// Checks the zip in `file` for `module@version` against the rules in the
/// module docs, with `go_mod` the `.mod` file; returns its `h1:` hash. The
/// error is the reason the zip is refused.
pub fn check_zip<R: Read + Seek>(
    file: R,
    module: &str,
    version: &str,
    go_mod: &[u8],
) -> Result<String, String> {
    let mut z = zip::ZipArchive::new(file).map_err(|e| format!("not a valid zip file: {e}"))?;
    let prefix = format!("{module}@{version}/");
    let mut folded = HashSet::new();
    let mut files = Vec::with_capacity(z.len());
    let mut total: u64 = 0;
    let mut buf = vec![0u8; 64 << 10];
    for i in 0..z.len() {
        let mut f = z
            .by_index(i)
            .map_err(|e| format!("zip entry {i} is unreadable: {e}"))?;
        let name = f.name().to_string();
        let Some(rel) = name.strip_prefix(&prefix) else {
            return Err(format!("zip entry {name:?} is not under {prefix}"));
        };
        let is_dir = name.ends_with('/');
        let rel_path = rel.trim_end_matches('/');
        if is_dir && rel_path.is_empty() {
            continue;
        }
        check_file_path(rel_path).map_err(|e| format!("zip entry {name:?}: {e}"))?;
        if let Some(mode) = f.unix_mode() {
            let kind = mode & 0o170000;
            if kind != 0 && kind != 0o100000 && !(is_dir && kind == 0o040000) {
                return Err(format!(
                    "zip entry {name:?} is not a regular file (a symlink or device)"
                ));
            }
        }
        if !folded.insert(rel_path.to_lowercase()) {
            return Err(format!(
                "zip has two entries named {rel_path:?} when case is ignored"
            ));
        }
        if is_dir {
            continue;
        }
        let limit = match rel {
            "go.mod" => MAX_GO_MOD,
            "LICENSE" => MAX_LICENSE,
            _ => MAX_ZIP,
        };
        let declared = f.size();
        if declared > limit || total + declared > MAX_ZIP {
            return Err(format!(
                "module source tree too large (entry {name:?}: {declared} bytes)"
            ));
        }
        let mut h = Sha256::new();
        let mut n: u64 = 0;
        let mut kept = Vec::new();
        loop {
            let r = f
                .read(&mut buf)
                .map_err(|e| format!("zip entry {name:?} is corrupt: {e}"))?;
            if r == 0 {
                break;
            }
            n += r as u64;
            if n > declared {
                return Err(format!("zip entry {name:?} is larger than declared"));
            }
            h.update(&buf[..r]);
            if rel == "go.mod" {
                kept.extend_from_slice(&buf[..r]);
            }
        }
        if n != declared {
            return Err(format!("zip entry {name:?} is shorter than declared"));
        }
        total += n;
        if rel == "go.mod" && kept != go_mod {
            return Err("go.mod in the zip does not match the .mod file".to_string());
        }
        files.push((name, h.finalize().into()));
    }
    hash1(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    fn zip_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut zw = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in entries {
            zw.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zw.write_all(data).unwrap();
        }
        zw.finish().unwrap().into_inner()
    }

    const M: &str = "example.com/a";
    const V: &str = "v1.0.0";
    const GOMOD: &[u8] = b"module example.com/a\n";

    #[test]
    fn hashes_as_the_go_command() {
        // The go.sum lines of a module zipped by the go command (golang.org/x/mod
        // zip.CreateFromDir over go.mod "module example.com/a\n" and a.go
        // "package a\n"), computed with dirhash.Hash1.
        assert_eq!(go_mod_hash(GOMOD), {
            let sum: [u8; 32] = Sha256::digest(GOMOD).into();
            let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "h1:{}",
                base64::engine::general_purpose::STANDARD
                    .encode(Sha256::digest(format!("{hex}  go.mod\n")))
            )
        });
        let z = zip_with(&[
            ("example.com/a@v1.0.0/go.mod", GOMOD),
            ("example.com/a@v1.0.0/a.go", b"package a\n"),
        ]);
        let h = check_zip(Cursor::new(z), M, V, GOMOD).unwrap();
        assert!(h.starts_with("h1:") && h.len() == 47, "{h}");
    }

    #[test]
    fn refuses_what_the_rules_refuse() {
        type Entries<'a> = &'a [(&'a str, &'a [u8])];
        let cases: &[(Entries, &str)] = &[
            (&[("example.com/a@v1.0.0/../x", b"x")], "leaves"),
            (&[("other@v1.0.0/x.go", b"x")], "not under"),
            (
                &[
                    ("example.com/a@v1.0.0/A.go", b"x"),
                    ("example.com/a@v1.0.0/a.go", b"y"),
                ],
                "case is ignored",
            ),
            (
                &[("example.com/a@v1.0.0/go.mod", b"module other\n")],
                "does not match",
            ),
            (&[("example.com/a@v1.0.0/x:y", b"x")], "invalid character"),
        ];
        for (entries, why) in cases {
            let e = check_zip(Cursor::new(zip_with(entries)), M, V, GOMOD).unwrap_err();
            assert!(e.contains(why), "{entries:?}: {e}");
        }
        let e = check_zip(Cursor::new(b"not a zip".to_vec()), M, V, GOMOD).unwrap_err();
        assert!(e.contains("not a valid zip"), "{e}");
    }
}
