//! Job directories: a fresh `<base>/modmesh-job-<owner>-XXXX/{work,gopath}`
//! per go run, removed on drop even where the go command left read-only
//! trees. `<owner>` names the fetcher process that made it
//! ([`modmesh_common::owner`]), and the directory holds the process group of its go run
//! (`pgid`), so that [`sweep`] — run at start-up and periodically by every
//! fetcher sharing the base directory — kills what a killed fetcher left
//! running and removes its directories.

use modmesh_proto::{Error, Result};
use std::path::{Path, PathBuf};

/// Prefix of the per-run directories under the base directory.
pub const JOB_DIR_PREFIX: &str = "modmesh-job-";

/// A per-run directory, removed on drop.
#[derive(Debug)]
pub(crate) struct JobDir {
    pub root: PathBuf,
    /// The working directory (holds no `go.mod`).
    pub work: PathBuf,
    /// The run's own `GOPATH`.
    pub gopath: PathBuf,
}

impl JobDir {
    /// Creates a job directory under `base` (creating `base` too). Errors
    /// are `Internal` and name no path; the log has the full error.
    pub fn create(base: &Path) -> Result<JobDir> {
        let fail = |e: std::io::Error| {
            tracing::error!(base = %base.display(), error = %e, "cannot create a go work directory under GoGetDir");
            Error::internal(format!(
                "cannot create a work directory under GoGetDir: {}",
                e.kind()
            ))
        };
        std::fs::create_dir_all(base).map_err(fail)?;
        let root = tempfile::Builder::new()
            .prefix(&format!(
                "{JOB_DIR_PREFIX}{}-",
                modmesh_common::owner::tag()
            ))
            .tempdir_in(base)
            .map_err(fail)?
            .keep();
        let job = JobDir {
            work: root.join("work"),
            gopath: root.join("gopath"),
            root,
        };
        std::fs::create_dir(&job.work).map_err(fail)?;
        std::fs::create_dir(&job.gopath).map_err(fail)?;
        Ok(job)
    }
}

impl JobDir {
    /// Records the process group of the go run using this directory, so a
    /// sweep can kill it if this process dies.
    pub fn record_group(&self, pgid: i32) {
        if let Err(e) = std::fs::write(self.root.join(PGID_FILE), pgid.to_string()) {
            tracing::warn!(dir = %self.root.display(), error = %e, "cannot record the go process group");
        }
    }
}

/// The file of a job directory naming its go run's process group.
const PGID_FILE: &str = "pgid";

/// Whether the owner named in a job directory name is known dead.
fn owner_dead(name: &str) -> Option<bool> {
    modmesh_common::owner::dead(name.strip_prefix(JOB_DIR_PREFIX)?)
}

/// Kills the go process groups recorded in job directories under `base`
/// whose owning fetcher is dead, and removes those directories; returns how
/// many were removed.
pub fn sweep(base: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if owner_dead(&name) != Some(true) {
            continue;
        }
        let dir = e.path();
        if let Some(pgid) = std::fs::read_to_string(dir.join(PGID_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|&g| g > 1)
        {
            match nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            ) {
                Ok(()) => {
                    tracing::warn!(pgid, dir = %dir.display(), "killed a go process group left by a dead fetcher")
                }
                Err(nix::errno::Errno::ESRCH) => {}
                Err(err) => {
                    tracing::warn!(pgid, error = %err, "cannot kill a go process group left by a dead fetcher")
                }
            }
        }
        match remove_dir_all_forced(&dir) {
            Ok(()) => removed += 1,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(dir = %dir.display(), error = %err, "cannot remove a job directory left by a dead fetcher")
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, base = %base.display(), "removed job directories of dead fetchers");
    }
    removed
}

impl Drop for JobDir {
    fn drop(&mut self) {
        if let Err(e) = remove_dir_all_forced(&self.root) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.root.display(), error = %e, "cannot remove go work directory");
            }
        }
    }
}

/// Removes a directory tree the go command wrote, first making every
/// directory in it writable (the go command makes module trees read-only).
/// Symbolic links are not followed.
pub fn remove_dir_all_forced(path: &Path) -> std::io::Result<()> {
    fn make_writable(p: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let Ok(md) = std::fs::symlink_metadata(p) else {
            return;
        };
        if !md.is_dir() {
            return;
        }
        let mode = md.permissions().mode();
        if mode & 0o700 != 0o700 {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o700));
        }
        if let Ok(entries) = std::fs::read_dir(p) {
            for e in entries.flatten() {
                make_writable(&e.path());
            }
        }
    }
    make_writable(path);
    std::fs::remove_dir_all(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_removal_handles_read_only_trees() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("tree/sub");
        std::fs::create_dir_all(&ro).unwrap();
        std::fs::write(ro.join("f"), "x").unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        remove_dir_all_forced(&dir.path().join("tree")).unwrap();
        assert!(!dir.path().join("tree").exists());
    }

    #[test]
    fn a_job_dir_is_created_and_removed() {
        let base = tempfile::tempdir().unwrap();
        let job = JobDir::create(&base.path().join("nested")).unwrap();
        assert!(job.work.is_dir() && job.gopath.is_dir());
        let root = job.root.clone();
        assert!(root
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(JOB_DIR_PREFIX));
        drop(job);
        assert!(!root.exists());
    }

    #[test]
    fn a_dead_owners_job_dirs_and_groups_are_swept() {
        use std::os::unix::process::CommandExt;
        let base = tempfile::tempdir().unwrap();
        // A live owner (this process): kept.
        let mine = JobDir::create(base.path()).unwrap();
        // A dead owner: a child that has exited, with a sleeping process
        // group of its own recorded in its directory.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        gone.wait().unwrap();
        let mine_tag = modmesh_common::owner::tag();
        let boot = mine_tag.split_once('p').unwrap().0;
        let dead = base
            .path()
            .join(format!("{JOB_DIR_PREFIX}{boot}p{gone_pid}s1-abc"));
        std::fs::create_dir_all(dead.join("work/ro")).unwrap();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .unwrap();
        std::fs::write(dead.join(PGID_FILE), sleeper.id().to_string()).unwrap();
        // Not ours: never touched.
        let other = base.path().join("modmesh-job-unrelated");
        std::fs::create_dir(&other).unwrap();
        assert_eq!(sweep(base.path()), 1);
        assert!(!dead.exists());
        assert!(mine.root.is_dir() && other.is_dir());
        let status = sleeper.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "the recorded group was killed");
    }

    #[test]
    fn a_job_dir_error_names_no_path() {
        let base = tempfile::tempdir().unwrap();
        let file = base.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        let e = JobDir::create(&file.join("below")).unwrap_err();
        assert_eq!(e.kind, modmesh_proto::ErrorKind::Internal);
        assert!(!e.message.contains(&*base.path().to_string_lossy()), "{e}");
        assert!(e.message.contains("GoGetDir"), "{e}");
    }
}
