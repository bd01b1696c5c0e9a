//! Owner tags for files a process leaves while it works (temporary save
//! directories, go job directories): `b<boot>p<pid>s<start>`, naming this
//! boot of this machine, the process id and the process's start time, so
//! that another process sharing the directory can tell for sure that the
//! owner is dead (and not a reused pid) and clean up at once.

/// This process's tag: `b<boot id, 8 hex>p<pid>s<start time in ticks>`.
pub fn tag() -> String {
    let pid = std::process::id();
    format!("b{}p{pid}s{}", boot_id(), start_time(pid).unwrap_or(0))
}

/// Whether the owner a name starts with (a [`tag`] then `-`) is dead:
/// `Some(true)` when it was a process of this boot that no longer runs,
/// `Some(false)` when it runs, `None` when the name holds no tag or one of
/// another boot or machine (then only age can tell).
pub fn dead(name: &str) -> Option<bool> {
    let rest = name.strip_prefix('b')?;
    let (boot, rest) = rest.split_once('p')?;
    if boot != boot_id() {
        return None;
    }
    let (pid, rest) = rest.split_once('s')?;
    let (start, _) = rest.split_once('-')?;
    let pid: u32 = pid.parse().ok()?;
    let start: u64 = start.parse().ok()?;
    Some(start_time(pid) != Some(start))
}

/// The first 8 hex digits of this boot's id (`unknown` without `/proc`).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().chars().filter(|c| *c != '-').take(8).collect())
        .unwrap_or_else(|| "unknown".into())
}

/// The start time of process `pid` (clock ticks since boot), if it runs.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields after
    // the last ')' start with field 3; the start time is field 22.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_owner_is_alive_and_an_exited_one_dead() {
        let me = format!("{}-x", tag());
        assert_eq!(dead(&me), Some(false));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let gone = format!("b{}p{pid}s1-x", boot_id());
        assert_eq!(dead(&gone), Some(true));
        assert_eq!(dead("unrelated-name"), None);
        assert_eq!(dead(&format!("bffffffffp{pid}s1-x")), None, "another boot");
    }
}
