//! Athens-compatible configuration: the same `config.toml` keys, the same
//! `ATHENS_*` environment overrides (environment beats file), the same
//! defaults, plus the mesh's own keys for where each service listens and
//! where its clients reach it.
//!
//! The file is `-config_file <path>`, else `./athens.toml` if present, else
//! none. Keys this build does not use are ignored, so an Athens config file
//! loads as it is. Unlike Athens, the result is always validated, and an
//! error names the exact key and the problem.
//!
//! # Sections: config beside what it configures
//!
//! [`Config`] holds the top-level keys only. Every backend, driver or feature
//! owns a [`Section`]: one serde struct with Athens' key names and defaults,
//! the TOML table it lives in ([`Section::PATH`]) and its environment
//! overrides ([`Section::ENV`]). [`Config::section`] reads it: the file's
//! table, then the environment (converted to the type the default value has
//! at that key), then [`Section::validate`]. This module knows no backend by
//! name; adding one touches its own file only.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("config: {key}: {problem}")]
pub struct ConfigError {
    /// The key (full TOML path, or the environment variable's name) at fault.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

/// A [`ConfigError`] for `key`.
pub fn err(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// One environment override of a [`Section`] key.
#[derive(Debug, Clone, Copy)]
pub struct Env {
    /// The variable, e.g. `ATHENS_DISK_STORAGE_ROOT`.
    pub var: &'static str,
    /// The key inside the section's table, dotted for nested tables
    /// (`LockConfig.TTL`).
    pub key: &'static str,
    /// For list keys: the separator between entries.
    pub sep: char,
}

impl Env {
    /// `var` overrides `key`. A list key splits the value on `,`.
    pub const fn new(var: &'static str, key: &'static str) -> Env {
        Env { var, key, sep: ',' }
    }
    /// `var` overrides the list key `key`, entries separated by `sep`.
    pub const fn list(var: &'static str, key: &'static str, sep: char) -> Env {
        Env { var, key, sep }
    }
}

/// A table of the configuration owned by one backend, driver or feature.
///
/// The struct carries `#[serde(default)]` with Athens' defaults in its
/// `Default`, so a missing table or key takes the default.
pub trait Section: Serialize + DeserializeOwned + Default + 'static {
    /// The dotted TOML path of the table (`Storage.Disk`); empty for the
    /// top level.
    const PATH: &'static str;
    /// Environment overrides. When several variables name one key, the one
    /// listed first wins.
    const ENV: &'static [Env];
    /// Checks the values; errors name the full key ([`Section::key`]).
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
    /// The full TOML path of `key` in this section, for error messages.
    fn key(key: &str) -> String {
        if Self::PATH.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", Self::PATH)
        }
    }
}

/// The implementation named `name` in `registry` (a list of names with
/// their builders, kept by the crate that owns them), or an error naming
/// `key` and listing the names that exist.
pub fn pick<'a, B>(
    registry: &'a [(&'static str, B)],
    key: &str,
    name: &str,
) -> Result<&'a B, ConfigError> {
    let name = name.trim();
    registry
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| b)
        .ok_or_else(|| {
            let names: Vec<&str> = registry.iter().map(|(n, _)| *n).collect();
            err(
                key,
                format!(
                    "{name:?} is not supported (supported: {})",
                    names.join(", ")
                ),
            )
        })
}

/// Where environment values come from (the process, or a map in tests).
type EnvSource = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The loaded configuration: the top-level keys as fields, plus the file
/// and environment that [`Config::section`] reads the other tables from.
#[derive(Clone, Serialize, Deserialize)]
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
    /// The file's whole table (after `-config_file`), for [`Config::section`].
    #[serde(skip)]
    file: toml::Table,
    /// The environment, for [`Config::section`].
    #[serde(skip)]
    env: Option<EnvSource>,
    /// Key paths of the file some section has read, for [`Config::unread_keys`].
    #[serde(skip)]
    read: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut v = toml::Table::try_from(self).unwrap_or_default();
        v.retain(|_, x| !matches!(x, toml::Value::Table(_)));
        f.debug_struct("Config")
            .field("keys", &v)
            .finish_non_exhaustive()
    }
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
            StorageSvcListen: String::new(),
            LockSvcListen: String::new(),
            FetcherSvcListen: String::new(),
            StorageSvcURL: String::new(),
            LockSvcURL: String::new(),
            FetcherSvcURL: String::new(),
            file: toml::Table::new(),
            env: None,
            read: Default::default(),
        }
    }
}

impl Section for Config {
    const PATH: &'static str = "";
    const ENV: &'static [Env] = &[
        Env::new("GO_ENV", "GoEnv"),
        Env::new("GO_BINARY_PATH", "GoBinary"),
        Env::list("ATHENS_GO_BINARY_ENV_VARS", "GoBinaryEnvVars", ';'),
        Env::new("ATHENS_GOGET_WORKERS", "GoGetWorkers"),
        Env::new("ATHENS_GOGET_DIR", "GoGetDir"),
        Env::new("ATHENS_PROTOCOL_WORKERS", "ProtocolWorkers"),
        Env::new("ATHENS_LOG_LEVEL", "LogLevel"),
        Env::new("ATHENS_LOG_FORMAT", "LogFormat"),
        Env::new("ATHENS_TIMEOUT", "Timeout"),
        Env::new("ATHENS_STORAGE_TYPE", "StorageType"),
        Env::new("ATHENS_PORT", "Port"),
        Env::new("PORT", "Port"),
        Env::new("ATHENS_SINGLE_FLIGHT_TYPE", "SingleFlightType"),
        Env::new("ATHENS_SHUTDOWN_TIMEOUT", "ShutdownTimeout"),
        Env::new("ATHENS_STORAGE_SVC_LISTEN", "StorageSvcListen"),
        Env::new("ATHENS_LOCK_SVC_LISTEN", "LockSvcListen"),
        Env::new("ATHENS_FETCHER_SVC_LISTEN", "FetcherSvcListen"),
        Env::new("ATHENS_STORAGE_SVC_URL", "StorageSvcURL"),
        Env::new("ATHENS_LOCK_SVC_URL", "LockSvcURL"),
        Env::new("ATHENS_FETCHER_SVC_URL", "FetcherSvcURL"),
    ];

    fn validate(&self) -> Result<(), ConfigError> {
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
}

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
        env: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Result<Config, ConfigError> {
        let table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| err("-config_file", format!("{}: {e}", path.display())))?;
                parse_table(&text)?
            }
            None => toml::Table::new(),
        };
        let mut cfg = Config {
            file: table,
            env: Some(Arc::new(env)),
            ..Config::default()
        };
        cfg = cfg.section::<Config>()?;
        Ok(cfg)
    }

    /// Parses TOML text over the defaults (no environment, no validation).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let table = parse_table(text)?;
        let mut cfg: Config = from_table("", toml::Value::Table(table.clone()))?;
        cfg.file = table;
        Ok(cfg)
    }

    /// A configuration from `text` and the variables in `env` (for tests).
    pub fn from_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cfg = Config {
            file: parse_table(text)?,
            env: Some(Arc::new(move |k: &str| map.get(k).cloned())),
            ..Config::default()
        };
        cfg.section::<Config>()
    }

    /// Reads section `T`: its table from the file (defaults where absent),
    /// then its environment overrides, then [`Section::validate`].
    pub fn section<T: Section>(&self) -> Result<T, ConfigError> {
        let mut table = lookup(&self.file, T::PATH).unwrap_or_default();
        if T::PATH.is_empty() {
            // The top level reads its own keys only.
            table.retain(|_, v| !matches!(v, toml::Value::Table(_)));
        }
        let defaults = toml::Table::try_from(T::default())
            .map_err(|e| err(T::PATH, format!("defaults do not serialize: {e}")))?;
        let env = |k: &str| {
            self.env
                .as_ref()
                .and_then(|f| f(k))
                .filter(|v| !v.trim().is_empty())
        };
        // Later entries first, so that the first variable listed wins.
        for e in T::ENV.iter().rev() {
            if let Some(v) = env(e.var) {
                let value = env_value(e, &v, lookup_value(&defaults, e.key))?;
                insert(&mut table, e.key, value);
            }
        }
        let mut ignored = Vec::new();
        let mut v: T = from_table_noting(T::PATH, toml::Value::Table(table), &mut ignored)?;
        if let Some(file_table) = lookup(&self.file, T::PATH) {
            let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
            for key in leaf_keys(&file_table, "") {
                if !T::PATH.is_empty() || !key.contains('.') {
                    let unused = ignored
                        .iter()
                        .any(|i| key == *i || key.starts_with(&format!("{i}.")));
                    if !unused {
                        read.insert(join(T::PATH, &key));
                    }
                }
            }
        }
        if T::PATH.is_empty() {
            // `Config` carries the file and environment on to its sections.
            let any: &mut dyn std::any::Any = &mut v;
            if let Some(c) = any.downcast_mut::<Config>() {
                c.file = self.file.clone();
                c.env = self.env.clone();
                c.read = self.read.clone();
                c.normalize();
                c.check_misplaced()?;
            }
        }
        v.validate()?;
        Ok(v)
    }

    fn normalize(&mut self) {
        let p = self.Port.trim();
        if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
            self.Port = format!(":{p}");
        }
        self.StorageType = self.StorageType.trim().to_string();
        self.SingleFlightType = self.SingleFlightType.trim().to_string();
        if self.SingleFlightType.is_empty() {
            self.SingleFlightType = "memory".into();
        }
        if self.LogFormat.trim().is_empty() {
            self.LogFormat = "plain".into();
        }
    }

    /// Keys of the file that no section read so far, as full TOML paths,
    /// among those under `tables` (table paths such as `Storage`; `""` for
    /// the top level's own keys). A binary calls it once it has built
    /// everything, naming the tables it is responsible for, and warns of
    /// each: such a key does nothing in this build.
    pub fn unread_keys(&self, tables: &[&str]) -> Vec<String> {
        let read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        leaf_keys(&self.file, "")
            .into_iter()
            .filter(|k| !read.contains(k))
            .filter(|k| {
                tables.iter().any(|t| {
                    if t.is_empty() {
                        !k.contains('.')
                    } else {
                        k.starts_with(&format!("{t}."))
                    }
                })
            })
            .collect()
    }

    /// Keys of the mesh's top level that sit inside a table: TOML puts every
    /// key after a `[table]` header into that table, so a `StorageSvcURL`
    /// written below `[Storage.Disk]` would silently do nothing.
    fn check_misplaced(&self) -> Result<(), ConfigError> {
        const TOP_ONLY: &[&str] = &[
            "StorageSvcListen",
            "LockSvcListen",
            "FetcherSvcListen",
            "StorageSvcURL",
            "LockSvcURL",
            "FetcherSvcURL",
            "StorageType",
            "SingleFlightType",
            "ProtocolWorkers",
            "GoGetWorkers",
            "LogLevel",
            "LogFormat",
        ];
        for key in leaf_keys(&self.file, "") {
            if let Some((table, name)) = key.rsplit_once('.') {
                if TOP_ONLY.contains(&name) {
                    return Err(err(
                        &key,
                        format!(
                            "{name} is a top-level key but sits inside [{table}] (TOML puts every \
                             key after a [table] header into that table): move it above the first \
                             [table] header"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks every top-level key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Section::validate(self)
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

/// Parses TOML text; an error names the key on the line at fault.
fn parse_table(text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| {
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

/// `path.key`, or `key` for the top level.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Every leaf key of `t` as a dotted path under `prefix` (an array of tables
/// counts as one leaf).
fn leaf_keys(t: &toml::Table, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in t {
        let path = join(prefix, k);
        match v {
            toml::Value::Table(inner) if !inner.is_empty() => out.extend(leaf_keys(inner, &path)),
            _ => out.push(path),
        }
    }
    out
}

/// As [`from_table`], noting the keys the struct has no field for.
fn from_table_noting<T: DeserializeOwned>(
    path: &str,
    value: toml::Value,
    ignored: &mut Vec<String>,
) -> Result<T, ConfigError> {
    let mut note = |p: serde_ignored::Path<'_>| ignored.push(p.to_string());
    let de = serde_ignored::Deserializer::new(value, &mut note);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.path().to_string();
        let key = match (path.is_empty(), inner == ".") {
            (true, _) => inner,
            (false, true) => path.to_string(),
            (false, false) => format!("{path}.{inner}"),
        };
        err(&key, e.into_inner().to_string())
    })
}

/// Deserializes a section from `value`; an error names the full key path.
fn from_table<T: DeserializeOwned>(path: &str, value: toml::Value) -> Result<T, ConfigError> {
    from_table_noting(path, value, &mut Vec::new())
}

/// The table at dotted `path` in `t` (the whole of `t` for an empty path).
fn lookup(t: &toml::Table, path: &str) -> Option<toml::Table> {
    if path.is_empty() {
        return Some(t.clone());
    }
    let mut cur = t;
    for part in path.split('.') {
        cur = cur.get(part)?.as_table()?;
    }
    Some(cur.clone())
}

/// The value at dotted `key` in `t`.
fn lookup_value<'a>(t: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let (parents, last) = match key.rsplit_once('.') {
        Some((p, l)) => (Some(p), l),
        None => (None, key),
    };
    let mut cur = t;
    if let Some(p) = parents {
        for part in p.split('.') {
            cur = cur.get(part)?.as_table()?;
        }
    }
    cur.get(last)
}

/// Sets dotted `key` in `t`, creating tables on the way.
fn insert(t: &mut toml::Table, key: &str, value: toml::Value) {
    let mut cur = t;
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    for part in parts {
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        cur = entry.as_table_mut().expect("a table");
    }
    cur.insert(last.to_string(), value);
}

/// An environment value converted to the type the key's default has.
fn env_value(e: &Env, v: &str, default: Option<&toml::Value>) -> Result<toml::Value, ConfigError> {
    let v = v.trim();
    Ok(match default {
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            v.parse()
                .map_err(|_| err(e.var, format!("{v:?} is not an integer")))?,
        ),
        Some(toml::Value::Float(_)) => toml::Value::Float(
            v.parse()
                .map_err(|_| err(e.var, format!("{v:?} is not a number")))?,
        ),
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(match v {
            "true" | "TRUE" | "True" | "1" => true,
            "false" | "FALSE" | "False" | "0" => false,
            _ => return Err(err(e.var, format!("{v:?} is not true or false"))),
        }),
        Some(toml::Value::Array(_)) => toml::Value::Array(
            v.split(e.sep)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => toml::Value::String(v.to_string()),
    })
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

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
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
        let e = Config::load(None, env(&[("ATHENS_GOGET_WORKERS", "many")])).unwrap_err();
        assert_eq!(e.key, "ATHENS_GOGET_WORKERS");
        let e = Config::load(None, env(&[("ATHENS_LOG_FORMAT", "xml")])).unwrap_err();
        assert_eq!(e.key, "LogFormat");
        let e = Config::load(None, env(&[("ATHENS_GO_BINARY_ENV_VARS", "NOEQUALS")])).unwrap_err();
        assert_eq!(e.key, "GoBinaryEnvVars");
        let e = Config::parse("Timeout = \"soon\"\n").unwrap_err();
        assert_eq!(e.key, "Timeout", "{e}");
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    #[allow(non_snake_case)]
    struct Sample {
        RootPath: String,
        Workers: u32,
        Insecure: bool,
        Endpoints: Vec<String>,
        LockConfig: SampleLock,
    }
    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    #[allow(non_snake_case)]
    struct SampleLock {
        TTL: u64,
    }
    impl Section for Sample {
        const PATH: &'static str = "Storage.Sample";
        const ENV: &'static [Env] = &[
            Env::new("S_ROOT", "RootPath"),
            Env::new("S_WORKERS", "Workers"),
            Env::new("S_INSECURE", "Insecure"),
            Env::new("S_ENDPOINTS", "Endpoints"),
            Env::new("S_TTL", "LockConfig.TTL"),
        ];
    }

    #[test]
    fn sections_merge_env_over_file_by_type() {
        let text = "[Storage.Sample]\nRootPath = \"/a\"\nWorkers = 3\n[Storage.Sample.LockConfig]\nTTL = 5\n";
        let c = Config::from_text(text, &[]).unwrap();
        let s: Sample = c.section().unwrap();
        assert_eq!(s.RootPath, "/a");
        assert_eq!(s.Workers, 3);
        assert_eq!(s.LockConfig.TTL, 5);
        let c = Config::from_text(
            text,
            &[
                ("S_ROOT", "/b"),
                ("S_WORKERS", "7"),
                ("S_INSECURE", "true"),
                ("S_ENDPOINTS", "a:1, b:2"),
                ("S_TTL", "9"),
            ],
        )
        .unwrap();
        let s: Sample = c.section().unwrap();
        assert_eq!(
            s,
            Sample {
                RootPath: "/b".into(),
                Workers: 7,
                Insecure: true,
                Endpoints: vec!["a:1".into(), "b:2".into()],
                LockConfig: SampleLock { TTL: 9 },
            }
        );
        // A missing table is the defaults.
        let s: Sample = Config::from_text("", &[]).unwrap().section().unwrap();
        assert_eq!(s, Sample::default());
        // Errors name the full key, or the variable.
        let e = Config::from_text("[Storage.Sample]\nWorkers = \"x\"\n", &[])
            .unwrap()
            .section::<Sample>()
            .unwrap_err();
        assert_eq!(e.key, "Storage.Sample.Workers", "{e}");
        let e = Config::from_text("", &[("S_WORKERS", "many")])
            .unwrap()
            .section::<Sample>()
            .unwrap_err();
        assert_eq!(e.key, "S_WORKERS", "{e}");
        let e = Config::from_text("", &[("S_INSECURE", "maybe")])
            .unwrap()
            .section::<Sample>()
            .unwrap_err();
        assert_eq!(e.key, "S_INSECURE", "{e}");
    }

    #[test]
    fn unread_and_misplaced_keys_are_reported_by_full_path() {
        let text = "Port = \":1\"\nFilterFile = \"f\"\n[Storage.Sample]\nRootPath = \"/a\"\nTypo = 1\n[Storage.Other]\nX = 1\n[SingleFlight.Etcd]\nEndpoints = \"e\"\n";
        let c = Config::from_text(text, &[]).unwrap();
        let _: Sample = c.section().unwrap();
        let mut unread = c.unread_keys(&["", "Storage"]);
        unread.sort();
        assert_eq!(
            unread,
            ["FilterFile", "Storage.Other.X", "Storage.Sample.Typo"]
        );
        assert!(c.unread_keys(&["SingleFlight"]) == ["SingleFlight.Etcd.Endpoints"]);
        // A mesh key below a table header is an error naming its full path.
        let e = Config::from_text(
            "[Storage.Disk]\nRootPath = \"/x\"\nStorageSvcURL = \"http://s:1\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.key, "Storage.Disk.StorageSvcURL", "{e}");
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
