//! Credentials for private modules, as Athens takes them: `NETRCPath`,
//! `HGRCPath` and `GithubToken`.
//!
//! The netrc (the file `NETRCPath` names, plus a `github.com` entry for
//! `GithubToken`) is written to `<GoGetDir>/modmesh-netrc` (mode 0600) and
//! the go command gets `NETRC` pointing at it; `HGRCPath` reaches Mercurial
//! as `HGRCPATH`. An entry of `GoBinaryEnvVars` naming the same variable
//! wins. Neither the token nor the file's contents are logged.

use modmesh_common::config::{err, ConfigError, Env, Section};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// The private-module keys.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct PrivateConfig {
    /// `ATHENS_NETRC_PATH`: a netrc file with credentials for the hosts of
    /// private modules.
    pub NETRCPath: String,
    /// `ATHENS_HGRC_PATH`: an hgrc file for Mercurial.
    pub HGRCPath: String,
    /// `ATHENS_GITHUB_TOKEN`: a token for github.com.
    pub GithubToken: String,
}

impl std::fmt::Debug for PrivateConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateConfig")
            .field("NETRCPath", &self.NETRCPath)
            .field("HGRCPath", &self.HGRCPath)
            .field(
                "GithubToken",
                &(!self.GithubToken.is_empty()).then_some("<set>"),
            )
            .finish()
    }
}

impl Section for PrivateConfig {
    const PATH: &'static str = "";
    const ENV: &'static [Env] = &[
        Env::new("ATHENS_NETRC_PATH", "NETRCPath"),
        Env::new("ATHENS_HGRC_PATH", "HGRCPath"),
        Env::new("ATHENS_GITHUB_TOKEN", "GithubToken"),
    ];
}

/// The netrc file the go command is pointed at, below `base`.
pub const NETRC_FILE: &str = "modmesh-netrc";

impl PrivateConfig {
    /// Writes what the go command needs below `base` and returns the
    /// `KEY=VALUE` entries to add to its environment.
    pub fn prepare(&self, base: &Path) -> Result<Vec<String>, ConfigError> {
        let mut env = Vec::new();
        if !self.NETRCPath.is_empty() || !self.GithubToken.is_empty() {
            let mut text = String::new();
            if !self.NETRCPath.is_empty() {
                text = std::fs::read_to_string(&self.NETRCPath)
                    .map_err(|e| err("NETRCPath", format!("cannot be read: {}", e.kind())))?;
                if !text.ends_with('\n') {
                    text.push('\n');
                }
            }
            if !self.GithubToken.is_empty() {
                text.push_str(&format!(
                    "machine github.com login {} password x-oauth-basic\n",
                    self.GithubToken
                ));
            }
            let key = if self.NETRCPath.is_empty() {
                "GithubToken"
            } else {
                "NETRCPath"
            };
            std::fs::create_dir_all(base)
                .map_err(|e| err(key, format!("GoGetDir cannot be made: {}", e.kind())))?;
            let path = base.join(NETRC_FILE);
            write_private(&path, text.as_bytes())
                .map_err(|e| err(key, format!("the netrc cannot be written: {}", e.kind())))?;
            env.push(format!("NETRC={}", path.display()));
        }
        if !self.HGRCPath.is_empty() {
            if !Path::new(&self.HGRCPath).is_file() {
                return Err(err("HGRCPath", "is not a file"));
            }
            env.push(format!("HGRCPATH={}", self.HGRCPath));
        }
        Ok(env)
    }
}

/// Writes `bytes` to `path` readable by the owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn netrc_and_token_are_written_privately() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("netrc");
        std::fs::write(&src, "machine git.example login u password p").unwrap();
        let p = PrivateConfig {
            NETRCPath: src.display().to_string(),
            HGRCPath: String::new(),
            GithubToken: "tok123".into(),
        };
        let base = d.path().join("base");
        let env = p.prepare(&base).unwrap();
        let file = base.join(NETRC_FILE);
        assert_eq!(env, [format!("NETRC={}", file.display())]);
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            text,
            "machine git.example login u password p\nmachine github.com login tok123 password x-oauth-basic\n"
        );
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "netrc readable by others: {mode:o}");
        assert!(!format!("{p:?}").contains("tok123"));
    }

    #[test]
    fn nothing_configured_adds_nothing_and_bad_files_name_their_key() {
        let d = tempfile::tempdir().unwrap();
        assert!(PrivateConfig::default()
            .prepare(d.path())
            .unwrap()
            .is_empty());
        let e = PrivateConfig {
            NETRCPath: d.path().join("missing").display().to_string(),
            ..Default::default()
        }
        .prepare(d.path())
        .unwrap_err();
        assert!(e.to_string().contains("NETRCPath"), "{e}");
        let e = PrivateConfig {
            HGRCPath: d.path().join("missing").display().to_string(),
            ..Default::default()
        }
        .prepare(d.path())
        .unwrap_err();
        assert!(e.to_string().contains("HGRCPath"), "{e}");
    }
}
