//! Job directories: a fresh `<base>/modmesh-job-XXXX/{work,gopath}` per go
//! run, removed on drop even where the go command left read-only trees.

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
            .prefix(JOB_DIR_PREFIX)
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
