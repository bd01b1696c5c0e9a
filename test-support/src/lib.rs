//! Helpers shared by the tests of every crate (and by the `testing`
//! features that export a crate's compliance or contract suite): written
//! once here instead of once per test file. No dependencies, so any crate
//! can use it without cost.

#![warn(missing_docs)]

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free loopback port, never handed out twice by this process (so two
/// servers started one after the other cannot be given the same port).
pub fn free_port() -> u16 {
    let mut used = PORTS.lock().unwrap_or_else(|p| p.into_inner());
    let used = used.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if used.insert(port) {
            return port;
        }
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Percent-decodes a URL path; `None` when an escape is malformed or the
/// result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let h = bytes.get(i + 1..i + 3)?;
            let h = std::str::from_utf8(h).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// go.sum's `h1:` hash (dirhash.Hash1) of a file set, from the plain
/// contents: an oracle written apart from the product's own, for tests that
/// check what the product computes from zips.
pub fn h1_of_files<N: AsRef<str>, B: AsRef<[u8]>>(files: &[(N, B)]) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let mut lines: Vec<(String, String)> = files
        .iter()
        .map(|(name, data)| {
            let name = name.as_ref();
            (
                name.to_string(),
                format!("{}  {name}\n", hex(&Sha256::digest(data.as_ref()))),
            )
        })
        .collect();
    lines.sort();
    let summary: String = lines.into_iter().map(|(_, l)| l).collect();
    format!(
        "h1:{}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(summary.as_bytes()))
    )
}

/// [`h1_of_files`] of the entries of a zip.
pub fn zip_h1(zip_bytes: &[u8]) -> String {
    use std::io::Read;
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).expect("a zip");
    let mut files = Vec::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).expect("a zip entry");
        let mut body = Vec::new();
        f.read_to_end(&mut body).expect("a zip entry's bytes");
        files.push((f.name().to_string(), body));
    }
    h1_of_files(&files)
}

/// Whether the tests run under CI (`CI=true`), where every real server must
/// be present: a missing one fails the test instead of skipping it.
pub fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Says why a test does nothing: prints `SKIPPED: why`, or panics under CI
/// (naming `deps`, the script that installs what is missing).
pub fn skip(why: &str, deps: &str) {
    if on_ci() {
        panic!("{why} (CI=true: real servers are required; run {deps})");
    }
    eprintln!("SKIPPED: {why}");
}

/// The path of program `name` on `PATH`, or in the system directories
/// server packages install into.
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            PathBuf::from("/usr/local/bin"),
            PathBuf::from("/usr/sbin"),
            PathBuf::from("/usr/bin"),
        ])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

type SpawnJob = (
    std::process::Command,
    std::sync::mpsc::Sender<std::io::Result<std::process::Child>>,
);

/// Spawns `cmd` so that it dies with the test process: from one spawner
/// thread that lives as long as the process, with SIGKILL as the child's
/// parent-death signal (which fires when the spawning thread ends).
pub fn spawn_tied(mut cmd: std::process::Command) -> std::io::Result<std::process::Child> {
    use std::sync::{mpsc, OnceLock};
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("test-servers".into())
            .spawn(move || {
                for (mut cmd, back) in rx {
                    let _ = back.send(cmd.spawn());
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    // SAFETY: the closure only makes an async-signal-safe system call.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let (back, answer) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, back))
        .expect("spawner thread gone");
    answer.recv().expect("spawner thread gone")
}

/// A field of `/proc/<pid>/status` in KiB (`pid` "self" for this process).
fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Peak resident set size (`VmHWM`) of process `pid` in KiB. Linux only.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    status_kib(&pid.to_string(), "VmHWM:")
}

/// Peak resident set size (`VmHWM`) of this process in bytes. Linux only.
pub fn self_peak_rss() -> u64 {
    status_kib("self", "VmHWM:").expect("VmHWM in /proc/self/status") * 1024
}

/// Resets the peak RSS counter of process `pid` (`"self"` for this one) to
/// its current RSS.
pub fn reset_peak_rss(pid: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_ne!(free_port(), free_port());
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(percent_decode("a%2Fb%21").as_deref(), Some("a/b!"));
        assert_eq!(percent_decode("%zz"), None);
        assert!(self_peak_rss() > 0);
        reset_peak_rss("self").unwrap();
        assert!(vm_hwm_kib(std::process::id()).unwrap() > 0);
        // The h1 of one file "a" holding "x", by hand.
        let line = format!(
            "{}  a\n",
            hex(&<sha2::Sha256 as sha2::Digest>::digest(b"x"))
        );
        use base64::Engine;
        let want = format!(
            "h1:{}",
            base64::engine::general_purpose::STANDARD
                .encode(<sha2::Sha256 as sha2::Digest>::digest(line.as_bytes()))
        );
        assert_eq!(h1_of_files(&[("a", b"x")]), want);
        assert!(find_program("sh").is_some());
        let mut child = spawn_tied(std::process::Command::new("true")).unwrap();
        assert!(child.wait().unwrap().success());
    }
}
