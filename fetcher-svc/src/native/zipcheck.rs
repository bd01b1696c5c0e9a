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

/// Checks the zip read by `file` (see the module docs) against `module`,
/// `version` and the `.mod` file's `go_mod`; returns its `h1:` hash, or why
/// it is refused. The entries' names, kinds and declared sizes are checked
/// first, from the central directory; then the entries are inflated and
/// hashed on up to [`HASHERS`] threads at once (each with its own reader,
/// a clone of `file`), since the check is on the path of every cold zip.
pub fn check_zip<R: Read + Seek + Clone + Send>(
    file: R,
    module: &str,
    version: &str,
    go_mod: &[u8],
) -> Result<String, String> {
    let mut z = zip::ZipArchive::new(file).map_err(|e| format!("not a valid zip file: {e}"))?;
    let prefix = format!("{module}@{version}/");
    let mut folded = HashSet::new();
    // (index, name, declared size, the entry is go.mod)
    let mut entries: Vec<(usize, String, u64, bool)> = Vec::with_capacity(z.len());
    let mut total: u64 = 0;
    for i in 0..z.len() {
        let f = z
            .by_index_raw(i)
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
        total += declared;
        let is_go_mod = rel == "go.mod";
        entries.push((i, name, declared, is_go_mod));
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, HASHERS)
        .min(entries.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let hashed: Vec<Result<Sums, String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let mut z = z.clone();
                let (entries, next, failed) = (&entries, &next, &failed);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if k >= entries.len() || failed.load(std::sync::atomic::Ordering::Relaxed) {
                            return Ok(out);
                        }
                        let (i, name, declared, is_go_mod) = &entries[k];
                        let r = hash_entry(
                            &mut z,
                            *i,
                            name,
                            *declared,
                            is_go_mod.then_some(go_mod),
                            &mut buf,
                        );
                        match r {
                            Ok(sum) => out.push((k, sum)),
                            Err(e) => {
                                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("the zip check failed".to_string()))
            })
            .collect()
    });
    let mut files = Vec::with_capacity(entries.len());
    for part in hashed {
        for (k, sum) in part? {
            files.push((entries[k].1.clone(), sum));
        }
    }
    hash1(files)
}

/// One hashing thread's results: (position in the entry list, SHA-256).
type Sums = Vec<(usize, [u8; 32])>;

/// How many threads at most inflate and hash one zip's entries.
pub const HASHERS: usize = 4;

/// Inflates entry `i` (`name`, of `declared` bytes) and returns its
/// SHA-256; with `go_mod`, the entry must also equal it.
fn hash_entry<R: Read + Seek>(
    z: &mut zip::ZipArchive<R>,
    i: usize,
    name: &str,
    declared: u64,
    go_mod: Option<&[u8]>,
    buf: &mut [u8],
) -> Result<[u8; 32], String> {
    let mut f = z
        .by_index(i)
        .map_err(|e| format!("zip entry {i} is unreadable: {e}"))?;
    let mut h = Sha256::new();
    let mut n: u64 = 0;
    let mut kept = Vec::new();
    loop {
        let r = f
            .read(buf)
            .map_err(|e| format!("zip entry {name:?} is corrupt: {e}"))?;
        if r == 0 {
            break;
        }
        n += r as u64;
        if n > declared {
            return Err(format!("zip entry {name:?} is larger than declared"));
        }
        h.update(&buf[..r]);
        if go_mod.is_some() {
            kept.extend_from_slice(&buf[..r]);
        }
    }
    if n != declared {
        return Err(format!("zip entry {name:?} is shorter than declared"));
    }
    if go_mod.is_some_and(|m| kept != m) {
        return Err("go.mod in the zip does not match the .mod file".to_string());
    }
    Ok(h.finalize().into())
}

/// A clonable reader of a file at its own position (`pread`), so that
/// several threads can read one spool file at once.
#[derive(Debug, Clone)]
pub struct FileAt {
    file: std::sync::Arc<std::fs::File>,
    pos: u64,
    len: u64,
}

impl FileAt {
    /// A reader of `file` from its start.
    pub fn new(file: std::fs::File) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(FileAt {
            file: std::sync::Arc::new(file),
            pos: 0,
            len,
        })
    }
}

impl Read for FileAt {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(&*self.file, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for FileAt {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let at = match to {
            std::io::SeekFrom::Start(n) => Some(n),
            std::io::SeekFrom::End(d) => self.len.checked_add_signed(d),
            std::io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = at.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
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
    fn many_entries_hash_as_one_reader_would_on_every_thread() {
        // 300 entries of uneven sizes, hashed on several threads, from a
        // spool file: the h1 of an independent computation.
        let mut entries: Vec<(String, Vec<u8>)> =
            vec![("example.com/a@v1.0.0/go.mod".to_string(), GOMOD.to_vec())];
        for i in 0..300usize {
            let data: Vec<u8> = (0..(i * 997) % 50_000)
                .map(|j| (j * 31 + i) as u8)
                .collect();
            entries.push((format!("example.com/a@v1.0.0/d{}/f{i}.go", i % 7), data));
        }
        let refs: Vec<(&str, &[u8])> = entries
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let z = zip_with(&refs);
        let mut spool = tempfile::tempfile().unwrap();
        spool.write_all(&z).unwrap();
        let h = check_zip(FileAt::new(spool).unwrap(), M, V, GOMOD).unwrap();
        assert_eq!(h, modmesh_test_support::zip_h1(&z));
        // A go.mod that differs is found whichever thread reads it.
        let e = check_zip(Cursor::new(z), M, V, b"module other\n").unwrap_err();
        assert!(e.contains("go.mod"), "{e}");
    }

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
