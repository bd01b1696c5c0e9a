//! Athens-compatible configuration: the same `config.toml` keys, the same
//! `ATHENS_*` environment overrides (environment beats file), the same
//! defaults, plus the mesh's own keys for where each service listens and
//! where its clients reach it.
//!
//! The file is `-config_file <path>`, else `./athens.toml` if present, else
//! none. Keys this build does not use are ignored, so an Athens config file
//! loads as it is. Unlike Athens, the result is always validated, and an
//! error names the key and the problem.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("config: {key}: {problem}")]
pub struct ConfigError {
    /// The key (file name or env name) at fault.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

fn err(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// The whole configuration. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct Config {
    /// `GO_ENV`: development or production.
    pub GoEnv: String,
    /// `GO_BINARY_PATH`: the go command to run.
    pub GoBinary: String,
    /// `ATHENS_GO_BINARY_ENV_VARS` (`;`-separated): extra `KEY=VALUE`
    /// entries for the go command's environment. Unlike Athens the default is
    /// empty, so the go command uses its own upstream (`go env GOPROXY`).
    pub GoBinaryEnvVars: Vec<String>,
    /// `ATHENS_GOGET_WORKERS`: concurrent `go mod download` runs.
    pub GoGetWorkers: usize,
    /// `ATHENS_GOGET_DIR`: parent directory of the fetcher's work dirs and
    /// shared module cache (empty: the OS temp dir).
    pub GoGetDir: String,
    /// `ATHENS_PROTOCOL_WORKERS`: concurrent requests that go upstream.
    pub ProtocolWorkers: usize,
    /// `ATHENS_LOG_LEVEL`.
    pub LogLevel: String,
    /// `ATHENS_LOG_FORMAT`: plain or json.
    pub LogFormat: String,
    /// `ATHENS_TIMEOUT`: seconds for go commands and backend calls.
    pub Timeout: u64,
    /// `ATHENS_STORAGE_TYPE`.
    pub StorageType: String,
    /// `ATHENS_PORT` (or `PORT`): the gateway's HTTP address.
    pub Port: String,
    /// `ATHENS_SINGLE_FLIGHT_TYPE`.
    pub SingleFlightType: String,
    /// `ATHENS_SHUTDOWN_TIMEOUT`: seconds in-flight requests get on SIGTERM.
    pub ShutdownTimeout: u64,
    /// `[Storage]` blocks.
    pub Storage: StorageConfig,
    /// `ATHENS_STORAGE_SVC_LISTEN`: where `storage-svc` serves gRPC (empty:
    /// `:50051`). When set for an embedded gateway, the gateway serves its
    /// in-process storage (module metadata included) there too.
    pub StorageSvcListen: String,
    /// `ATHENS_LOCK_SVC_LISTEN`: where `lock-svc` serves gRPC (empty: `:50052`).
    pub LockSvcListen: String,
    /// `ATHENS_FETCHER_SVC_LISTEN`: where `fetcher-svc` serves gRPC (empty: `:50053`).
    pub FetcherSvcListen: String,
    /// `ATHENS_STORAGE_SVC_URL`: where clients reach storage-svc; empty runs
    /// storage in the client's own process.
    pub StorageSvcURL: String,
    /// `ATHENS_LOCK_SVC_URL`: likewise for lock-svc.
    pub LockSvcURL: String,
    /// `ATHENS_FETCHER_SVC_URL`: likewise for fetcher-svc.
    pub FetcherSvcURL: String,
}

/// The `[Storage]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct StorageConfig {
    /// `[Storage.Disk]`.
    pub Disk: DiskConfig,
}

/// The `[Storage.Disk]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct DiskConfig {
    /// `ATHENS_DISK_STORAGE_ROOT`: the store's root directory. It must exist
    /// where the disk backend runs (checked when the backend is built, so one
    /// mesh file can name it for processes that do not hold the store).
    pub RootPath: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            GoEnv: "development".into(),
            GoBinary: "go".into(),
            GoBinaryEnvVars: Vec::new(),
            GoGetWorkers: 10,
            GoGetDir: String::new(),
            ProtocolWorkers: 30,
            LogLevel: "debug".into(),
            LogFormat: "plain".into(),
            Timeout: 300,
            StorageType: "memory".into(),
            Port: ":3000".into(),
            SingleFlightType: "memory".into(),
            ShutdownTimeout: 60,
            Storage: StorageConfig::default(),
            StorageSvcListen: String::new(),
            LockSvcListen: String::new(),
            FetcherSvcListen: String::new(),
            StorageSvcURL: String::new(),
            LockSvcURL: String::new(),
            FetcherSvcURL: String::new(),
        }
    }
}

/// Storage types this build serves.
pub const STORAGE_TYPES: &[&str] = &["memory", "disk"];
/// Single-flight types this build serves.
pub const SINGLE_FLIGHT_TYPES: &[&str] = &["memory"];

impl Config {
    /// Loads the configuration the way every binary does: the file named by
    /// `-config_file` in `args` (else `./athens.toml` if it exists), then the
    /// environment, then validation.
    pub fn from_args_and_env(args: &[String]) -> Result<Config, ConfigError> {
        let file = config_file_arg(args)?;
        let file = file.or_else(|| {
            let p = PathBuf::from("athens.toml");
            p.exists().then_some(p)
        });
        Self::load(file.as_deref(), |k| std::env::var(k).ok())
    }

    /// Loads `file` (if any) over the defaults, applies the environment as
    /// read by `env`, and validates.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| err("-config_file", format!("{}: {e}", path.display())))?;
                Self::parse(&text)?
            }
            None => Config::default(),
        };
        cfg.apply_env(env)?;
        cfg.normalize();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text over the defaults (no environment, no validation).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            // The key is what stands before `=` on the line of the error.
            let key = e
                .span()
                .and_then(|s| {
                    let start = text[..s.start].rfind('\n').map_or(0, |i| i + 1);
                    let line = text[start..].lines().next().unwrap_or("");
                    line.split_once('=').map(|(k, _)| k.trim().to_string())
                })
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| "config file".into());
            err(&key, e.message().to_string())
        })
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |k: &str| env(k).filter(|v| !v.is_empty());
        fn num<T: std::str::FromStr>(key: &str, v: String) -> Result<T, ConfigError> {
            v.trim()
                .parse()
                .map_err(|_| err(key, format!("{v:?} is not a non-negative integer")))
        }
        let strings: [(&str, &mut String); 14] = [
            ("GO_ENV", &mut self.GoEnv),
            ("GO_BINARY_PATH", &mut self.GoBinary),
            ("ATHENS_GOGET_DIR", &mut self.GoGetDir),
            ("ATHENS_LOG_LEVEL", &mut self.LogLevel),
            ("ATHENS_LOG_FORMAT", &mut self.LogFormat),
            ("ATHENS_STORAGE_TYPE", &mut self.StorageType),
            ("ATHENS_SINGLE_FLIGHT_TYPE", &mut self.SingleFlightType),
            ("ATHENS_DISK_STORAGE_ROOT", &mut self.Storage.Disk.RootPath),
            ("ATHENS_STORAGE_SVC_LISTEN", &mut self.StorageSvcListen),
            ("ATHENS_LOCK_SVC_LISTEN", &mut self.LockSvcListen),
            ("ATHENS_FETCHER_SVC_LISTEN", &mut self.FetcherSvcListen),
            ("ATHENS_STORAGE_SVC_URL", &mut self.StorageSvcURL),
            ("ATHENS_LOCK_SVC_URL", &mut self.LockSvcURL),
            ("ATHENS_FETCHER_SVC_URL", &mut self.FetcherSvcURL),
        ];
        for (key, field) in strings {
            if let Some(v) = get(key) {
                *field = v;
            }
        }
        if let Some(v) = get("ATHENS_PORT").or_else(|| get("PORT")) {
            self.Port = v;
        }
        if let Some(v) = get("ATHENS_GOGET_WORKERS") {
            self.GoGetWorkers = num("ATHENS_GOGET_WORKERS", v)?;
        }
        if let Some(v) = get("ATHENS_PROTOCOL_WORKERS") {
            self.ProtocolWorkers = num("ATHENS_PROTOCOL_WORKERS", v)?;
        }
        if let Some(v) = get("ATHENS_TIMEOUT") {
            self.Timeout = num("ATHENS_TIMEOUT", v)?;
        }
        if let Some(v) = get("ATHENS_SHUTDOWN_TIMEOUT") {
            self.ShutdownTimeout = num("ATHENS_SHUTDOWN_TIMEOUT", v)?;
        }
        if let Some(v) = get("ATHENS_GO_BINARY_ENV_VARS") {
            // Athens' EnvList: `;`-separated, trimmed, replaces the file's list.
            self.GoBinaryEnvVars = v
                .split(';')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        Ok(())
    }

    fn normalize(&mut self) {
        let p = self.Port.trim();
        if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
            self.Port = format!(":{p}");
        }
        self.StorageType = self.StorageType.trim().to_string();
        if self.SingleFlightType.trim().is_empty() {
            self.SingleFlightType = "memory".into();
        }
        if self.LogFormat.trim().is_empty() {
            self.LogFormat = "plain".into();
        }
    }

    /// Checks every key this build uses.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.GoBinary.trim().is_empty() {
            return Err(err("GoBinary", "must not be empty"));
        }
        for e in &self.GoBinaryEnvVars {
            if !e.contains('=') || e.starts_with('=') {
                return Err(err(
                    "GoBinaryEnvVars",
                    format!("{e:?} is not of the form KEY=VALUE"),
                ));
            }
        }
        if self.GoGetWorkers == 0 {
            return Err(err("GoGetWorkers", "must be greater than 0"));
        }
        if self.ProtocolWorkers == 0 {
            return Err(err("ProtocolWorkers", "must be greater than 0"));
        }
        if self.Timeout == 0 {
            return Err(err("Timeout", "must be greater than 0"));
        }
        if !matches!(self.LogFormat.as_str(), "plain" | "json") {
            return Err(err(
                "LogFormat",
                format!("{:?} is not one of plain, json", self.LogFormat),
            ));
        }
        crate::logging::parse_level(&self.LogLevel).map_err(|p| err("LogLevel", p))?;
        if !STORAGE_TYPES.contains(&self.StorageType.as_str()) {
            return Err(err(
                "StorageType",
                format!(
                    "{:?} is not supported (supported: {})",
                    self.StorageType,
                    STORAGE_TYPES.join(", ")
                ),
            ));
        }
        if self.StorageType == "disk" {
            let root = &self.Storage.Disk.RootPath;
            if root.is_empty() {
                return Err(err(
                    "Storage.Disk.RootPath",
                    "required when StorageType is disk",
                ));
            }
        }
        if !SINGLE_FLIGHT_TYPES.contains(&self.SingleFlightType.as_str()) {
            return Err(err(
                "SingleFlightType",
                format!(
                    "{:?} is not supported (supported: {})",
                    self.SingleFlightType,
                    SINGLE_FLIGHT_TYPES.join(", ")
                ),
            ));
        }
        self.http_addr()?;
        for (key, v) in [
            ("StorageSvcListen", &self.StorageSvcListen),
            ("LockSvcListen", &self.LockSvcListen),
            ("FetcherSvcListen", &self.FetcherSvcListen),
        ] {
            if !v.is_empty() {
                listen_addr(key, v)?;
            }
        }
        for (key, v) in [
            ("StorageSvcURL", &self.StorageSvcURL),
            ("LockSvcURL", &self.LockSvcURL),
            ("FetcherSvcURL", &self.FetcherSvcURL),
        ] {
            if !(v.is_empty() || v.starts_with("http://") || v.starts_with("https://")) {
                return Err(err(
                    key,
                    format!("{v:?} must start with http:// or https://"),
                ));
            }
        }
        Ok(())
    }

    /// The gateway's listen address from `Port` (`:3000` means all interfaces).
    pub fn http_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        let p = self.Port.trim();
        let full = if p.starts_with(':') {
            format!("0.0.0.0{p}")
        } else {
            p.to_string()
        };
        full.parse().map_err(|_| {
            err(
                "Port",
                format!("{:?} is not a port or host:port", self.Port),
            )
        })
    }

    /// `Timeout` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.Timeout)
    }

    /// `ShutdownTimeout` as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.ShutdownTimeout)
    }
}

/// Parses a `*SvcListen` value (`host:port`, or `:port` for all interfaces).
pub fn listen_addr(key: &str, v: &str) -> Result<std::net::SocketAddr, ConfigError> {
    let full = if v.starts_with(':') {
        format!("0.0.0.0{v}")
    } else {
        v.to_string()
    };
    full.parse()
        .map_err(|_| err(key, format!("{v:?} is not host:port")))
}

/// The value of `-config_file` (or `--config_file`, with `=` or a space).
fn config_file_arg(args: &[String]) -> Result<Option<PathBuf>, ConfigError> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let flag = a.trim_start_matches('-');
        if a.starts_with('-') && (flag == "config_file" || flag == "config-file") {
            let v = it
                .next()
                .ok_or_else(|| err("-config_file", "needs a path"))?;
            return Ok(Some(PathBuf::from(v)));
        }
        if let Some(v) = flag
            .strip_prefix("config_file=")
            .or_else(|| flag.strip_prefix("config-file="))
        {
            if a.starts_with('-') {
                return Ok(Some(PathBuf::from(v)));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn athens_defaults() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.StorageType, "memory");
        assert_eq!(c.Port, ":3000");
        assert_eq!(c.GoGetWorkers, 10);
        assert_eq!(c.ProtocolWorkers, 30);
        assert_eq!(c.Timeout, 300);
        assert_eq!(c.ShutdownTimeout, 60);
        assert_eq!(c.SingleFlightType, "memory");
        assert!(c.GoBinaryEnvVars.is_empty());
        assert_eq!(c.http_addr().unwrap().port(), 3000);
    }

    #[test]
    fn env_beats_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            format!(
                "Port = \":4000\"\nStorageType = \"disk\"\nGoBinaryEnvVars = [\"GOPROXY=direct\"]\nTimeout = 10\nUnknownAthensKey = 1\n[Storage.Disk]\nRootPath = {:?}\n[Storage.S3]\nRegion = \"x\"\n",
                dir.path().display().to_string()
            ),
        )
        .unwrap();
        let c = Config::load(Some(&file), env(&[])).unwrap();
        assert_eq!(c.Port, ":4000");
        assert_eq!(c.StorageType, "disk");
        assert_eq!(c.Timeout, 10);
        let c = Config::load(
            Some(&file),
            env(&[
                ("PORT", "5000"),
                ("ATHENS_TIMEOUT", "7"),
                ("ATHENS_GO_BINARY_ENV_VARS", "GOPROXY=off; GOFLAGS=-x"),
                ("ATHENS_STORAGE_SVC_URL", "http://127.0.0.1:1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.Port, ":5000");
        assert_eq!(c.Timeout, 7);
        assert_eq!(c.GoBinaryEnvVars, ["GOPROXY=off", "GOFLAGS=-x"]);
        assert_eq!(c.StorageSvcURL, "http://127.0.0.1:1");
        let c = Config::load(
            Some(&file),
            env(&[("PORT", "5000"), ("ATHENS_PORT", ":6000")]),
        )
        .unwrap();
        assert_eq!(c.Port, ":6000");
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::load(None, env(&[("ATHENS_STORAGE_TYPE", "disk")])).unwrap_err();
        assert_eq!(e.key, "Storage.Disk.RootPath");
        let e = Config::load(None, env(&[("ATHENS_GOGET_WORKERS", "many")])).unwrap_err();
        assert_eq!(e.key, "ATHENS_GOGET_WORKERS");
        let e = Config::load(None, env(&[("ATHENS_STORAGE_TYPE", "floppy")])).unwrap_err();
        assert_eq!(e.key, "StorageType");
        let e = Config::load(None, env(&[("ATHENS_LOG_FORMAT", "xml")])).unwrap_err();
        assert_eq!(e.key, "LogFormat");
        let e = Config::load(None, env(&[("ATHENS_GO_BINARY_ENV_VARS", "NOEQUALS")])).unwrap_err();
        assert_eq!(e.key, "GoBinaryEnvVars");
        let e = Config::parse("Timeout = \"soon\"\n").unwrap_err();
        assert_eq!(e.key, "Timeout", "{e}");
    }

    #[test]
    fn config_file_flag_forms() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            config_file_arg(&a(&["bin", "-config_file", "x.toml"])).unwrap(),
            Some(PathBuf::from("x.toml"))
        );
        assert_eq!(
            config_file_arg(&a(&["bin", "--config_file=y.toml"])).unwrap(),
            Some(PathBuf::from("y.toml"))
        );
        assert_eq!(config_file_arg(&a(&["bin"])).unwrap(), None);
        assert!(config_file_arg(&a(&["bin", "-config_file"])).is_err());
    }
}
