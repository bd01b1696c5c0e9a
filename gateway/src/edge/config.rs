//! The edge keys: Athens' top-level keys for access control, listeners,
//! the filter file, the validator hook, the module index and the pages.

use modmesh_common::config::{err, ConfigError, Env, Section};
use serde::{Deserialize, Serialize};

/// Athens' top-level edge keys (and two of the gateway's own for the
/// validator hook).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct EdgeConfig {
    /// `BASIC_AUTH_USER`: with `BasicAuthPass`, every route but health and
    /// readiness needs these credentials.
    pub BasicAuthUser: String,
    /// `BASIC_AUTH_PASS`.
    pub BasicAuthPass: String,
    /// `ATHENS_TLSCERT_FILE`: PEM certificate chain; with `TLSKeyFile`,
    /// the gateway serves HTTPS (reloaded when the files change).
    pub TLSCertFile: String,
    /// `ATHENS_TLSKEY_FILE`: PEM private key.
    pub TLSKeyFile: String,
    /// `ATHENS_UNIX_SOCKET`: serve on this unix socket instead of `Port`.
    pub UnixSocket: String,
    /// `ATHENS_PATH_PREFIX`: every proxy route lives under this prefix.
    pub PathPrefix: String,
    /// `ATHENS_FILTER_FILE`: Athens' (deprecated) filter file.
    pub FilterFile: String,
    /// `ATHENS_GLOBAL_ENDPOINT`: where filter `D` rules send the client.
    pub GlobalEndpoint: String,
    /// `ATHENS_PROXY_VALIDATOR`: URL the validator hook is POSTed to.
    pub ValidatorHook: String,
    /// `ATHENS_PROXY_VALIDATOR_TIMEOUT`: seconds the hook has to answer.
    pub ValidatorHookTimeout: u64,
    /// `ATHENS_PROXY_VALIDATOR_CACHE_TTL`: seconds a verdict is reused.
    pub ValidatorHookCacheTTL: u64,
    /// `ATHENS_ROBOTS_FILE`: served at `/robots.txt`.
    pub RobotsFile: String,
    /// `ATHENS_HOME_TEMPLATE_PATH`: the home page template.
    pub HomeTemplatePath: String,
    /// `ATHENS_INDEX_TYPE`: none, memory, postgres or mysql.
    pub IndexType: String,
    /// `PROXY_FORCE_SSL`: plain-HTTP requests (not behind a proxy saying
    /// `X-Forwarded-Proto: https`) are sent to https with 301.
    pub ForceSSL: bool,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            BasicAuthUser: String::new(),
            BasicAuthPass: String::new(),
            TLSCertFile: String::new(),
            TLSKeyFile: String::new(),
            UnixSocket: String::new(),
            PathPrefix: String::new(),
            FilterFile: String::new(),
            GlobalEndpoint: "http://localhost:3001".into(),
            ValidatorHook: String::new(),
            ValidatorHookTimeout: 10,
            ValidatorHookCacheTTL: 60,
            RobotsFile: "robots.txt".into(),
            HomeTemplatePath: "/var/lib/athens/home.html".into(),
            IndexType: "none".into(),
            ForceSSL: false,
        }
    }
}

impl Section for EdgeConfig {
    const PATH: &'static str = "";
    const ENV: &'static [Env] = &[
        Env::new("BASIC_AUTH_USER", "BasicAuthUser"),
        Env::new("BASIC_AUTH_PASS", "BasicAuthPass"),
        Env::new("ATHENS_TLSCERT_FILE", "TLSCertFile"),
        Env::new("ATHENS_TLSKEY_FILE", "TLSKeyFile"),
        Env::new("ATHENS_UNIX_SOCKET", "UnixSocket"),
        Env::new("ATHENS_PATH_PREFIX", "PathPrefix"),
        Env::new("ATHENS_FILTER_FILE", "FilterFile"),
        Env::new("ATHENS_GLOBAL_ENDPOINT", "GlobalEndpoint"),
        Env::new("ATHENS_PROXY_VALIDATOR", "ValidatorHook"),
        Env::new("ATHENS_PROXY_VALIDATOR_TIMEOUT", "ValidatorHookTimeout"),
        Env::new("ATHENS_PROXY_VALIDATOR_CACHE_TTL", "ValidatorHookCacheTTL"),
        Env::new("ATHENS_ROBOTS_FILE", "RobotsFile"),
        Env::new("ATHENS_HOME_TEMPLATE_PATH", "HomeTemplatePath"),
        Env::new("ATHENS_INDEX_TYPE", "IndexType"),
        Env::new("PROXY_FORCE_SSL", "ForceSSL"),
    ];

    fn validate(&self) -> Result<(), ConfigError> {
        // Athens silently runs an open proxy when only one of the pair is
        // set; here that is an error.
        if self.BasicAuthUser.is_empty() != self.BasicAuthPass.is_empty() {
            let missing = if self.BasicAuthUser.is_empty() {
                "BasicAuthUser"
            } else {
                "BasicAuthPass"
            };
            return Err(err(
                missing,
                "BasicAuthUser and BasicAuthPass must be set together",
            ));
        }
        if self.BasicAuthUser.contains(':') {
            return Err(err("BasicAuthUser", "must not contain ':'"));
        }
        if self.TLSCertFile.is_empty() != self.TLSKeyFile.is_empty() {
            let missing = if self.TLSCertFile.is_empty() {
                "TLSCertFile"
            } else {
                "TLSKeyFile"
            };
            return Err(err(
                missing,
                "TLSCertFile and TLSKeyFile must be set together",
            ));
        }
        let p = self.PathPrefix.trim();
        if !p.is_empty() && p != "/" {
            if !p.starts_with('/') {
                return Err(err("PathPrefix", format!("{p:?} must start with /")));
            }
            if p.contains(['?', '#', '{', '}', '*', ' ']) || p.contains("//") {
                return Err(err("PathPrefix", format!("{p:?} is not a plain URL path")));
            }
        }
        for (key, v) in [
            ("ValidatorHook", &self.ValidatorHook),
            ("GlobalEndpoint", &self.GlobalEndpoint),
        ] {
            if !(v.is_empty() || v.starts_with("http://") || v.starts_with("https://")) {
                return Err(err(
                    key,
                    format!("{v:?} must start with http:// or https://"),
                ));
            }
        }
        if self.ValidatorHookTimeout == 0 {
            return Err(err("ValidatorHookTimeout", "must be greater than 0"));
        }
        if !matches!(
            self.IndexType.trim(),
            "" | "none" | "memory" | "postgres" | "mysql"
        ) {
            return Err(err(
                "IndexType",
                format!(
                    "{:?} is not one of none, memory, postgres, mysql",
                    self.IndexType
                ),
            ));
        }
        Ok(())
    }
}

impl EdgeConfig {
    /// `PathPrefix` normalized: empty, or `/a/b` (no trailing slash).
    pub fn path_prefix(&self) -> String {
        let p = self.PathPrefix.trim().trim_end_matches('/');
        p.to_string()
    }

    /// Whether basic auth is on.
    pub fn basic_auth(&self) -> bool {
        !self.BasicAuthUser.is_empty()
    }

    /// Whether the gateway serves HTTPS.
    pub fn tls(&self) -> bool {
        !self.TLSCertFile.is_empty()
    }
}
