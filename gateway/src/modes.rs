//! Athens' network and download modes.
//!
//! - `NetworkMode` (`ATHENS_NETWORK_MODE`) decides what `list` and `@latest`
//!   do with the upstream: `strict` (an upstream failure is the answer),
//!   `offline` (the upstream is never asked: storage answers), `fallback`
//!   (storage answers when the upstream fails).
//! - `DownloadMode` (`ATHENS_DOWNLOAD_MODE`) decides what a miss of a
//!   version's `.info`, `.mod` or `.zip` does: `sync` (fetch, then serve),
//!   `async` (404 now, fetch in the background), `redirect` (301 to
//!   `DownloadURL`, no fetch), `async_redirect` (301 and a background
//!   fetch), `none` (404), or per module from Athens' HCL download file,
//!   given as `file:<path>` or `custom:<base64 of the file>`.

use modmesh_common::config::{err, ConfigError, Env, Section};
use serde::{Deserialize, Serialize};

/// What `list` and `@latest` do with the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// An upstream failure is the answer.
    Strict,
    /// The upstream is never asked.
    Offline,
    /// Storage answers when the upstream fails.
    Fallback,
}

/// What a miss does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fetch, then serve.
    Sync,
    /// Answer 404 at once and fetch in the background.
    Async,
    /// Answer 301 to the download URL; no fetch.
    Redirect,
    /// Answer 301 to the download URL and fetch in the background.
    AsyncRedirect,
    /// Answer 404; no fetch.
    None,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        Some(match s.trim() {
            "sync" => Mode::Sync,
            "async" => Mode::Async,
            "redirect" => Mode::Redirect,
            "async_redirect" => Mode::AsyncRedirect,
            "none" => Mode::None,
            _ => return Option::None,
        })
    }

    /// Whether the mode answers with a redirect.
    pub fn redirects(self) -> bool {
        matches!(self, Mode::Redirect | Mode::AsyncRedirect)
    }
}

/// One `download "<pattern>" { ... }` block.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    pattern: String,
    mode: Mode,
    url: String,
}

/// The download policy: a mode and URL per module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadPolicy {
    mode: Mode,
    url: String,
    rules: Vec<Rule>,
}

impl Default for DownloadPolicy {
    fn default() -> Self {
        DownloadPolicy {
            mode: Mode::Sync,
            url: String::new(),
            rules: Vec::new(),
        }
    }
}

impl DownloadPolicy {
    /// The mode and redirect base URL for `module`: the first block whose
    /// pattern matches, in file order, else the top level.
    pub fn for_module(&self, module: &str) -> (Mode, &str) {
        for r in &self.rules {
            if matches_prefix_patterns(&r.pattern, module) {
                let url = if r.url.is_empty() { &self.url } else { &r.url };
                return (r.mode, url);
            }
        }
        (self.mode, &self.url)
    }

    /// Parses Athens' HCL download file.
    pub fn from_hcl(text: &str, key: &str) -> Result<Self, ConfigError> {
        let body: hcl::Body =
            hcl::from_str(text).map_err(|e| err(key, format!("not a download file: {e}")))?;
        let string = |e: &hcl::Expression, what: &str| match e {
            hcl::Expression::String(s) => Ok(s.clone()),
            _ => Err(err(key, format!("{what} must be a string"))),
        };
        let mode = |s: &str| {
            Mode::parse(s).ok_or_else(|| {
                err(
                    key,
                    format!("mode {s:?} is not one of sync, async, redirect, async_redirect, none"),
                )
            })
        };
        let mut policy = DownloadPolicy::default();
        let mut saw_mode = false;
        for a in body.attributes() {
            match a.key() {
                "mode" => {
                    policy.mode = mode(&string(a.expr(), "mode")?)?;
                    saw_mode = true;
                }
                "downloadURL" => policy.url = string(a.expr(), "downloadURL")?,
                other => return Err(err(key, format!("unknown attribute {other:?}"))),
            }
        }
        if !saw_mode {
            return Err(err(key, "the download file needs a top-level mode"));
        }
        for b in body.blocks() {
            if b.identifier() != "download" {
                return Err(err(key, format!("unknown block {:?}", b.identifier())));
            }
            let pattern = match b.labels() {
                [l] => l.as_str().to_string(),
                _ => return Err(err(key, "a download block takes one pattern label")),
            };
            let mut rule = Rule {
                pattern,
                mode: policy.mode,
                url: String::new(),
            };
            let mut saw = false;
            for a in b.body().attributes() {
                match a.key() {
                    "mode" => {
                        rule.mode = mode(&string(a.expr(), "mode")?)?;
                        saw = true;
                    }
                    "downloadURL" => rule.url = string(a.expr(), "downloadURL")?,
                    other => return Err(err(key, format!("unknown attribute {other:?}"))),
                }
            }
            if !saw {
                return Err(err(
                    key,
                    format!("download {:?} needs a mode", rule.pattern),
                ));
            }
            policy.rules.push(rule);
        }
        policy.check(key)?;
        Ok(policy)
    }

    fn check(&self, key: &str) -> Result<(), ConfigError> {
        let bad = |u: &str| !(u.starts_with("http://") || u.starts_with("https://"));
        if self.mode.redirects() && bad(&self.url) {
            return Err(err(
                key,
                "a redirect mode needs DownloadURL (an http:// or https:// URL)",
            ));
        }
        for r in &self.rules {
            let url = if r.url.is_empty() { &self.url } else { &r.url };
            if r.mode.redirects() && bad(url) {
                return Err(err(
                    key,
                    format!(
                        "download {:?}: a redirect mode needs downloadURL (an http:// or https:// URL)",
                        r.pattern
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The mode keys (top level of the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct ModesConfig {
    /// `ATHENS_NETWORK_MODE`: strict, offline or fallback.
    pub NetworkMode: String,
    /// `ATHENS_DOWNLOAD_MODE`: sync, async, redirect, async_redirect, none,
    /// `file:<path>` or `custom:<base64>`.
    pub DownloadMode: String,
    /// `ATHENS_DOWNLOAD_URL`: the redirect base for a keyword mode.
    pub DownloadURL: String,
}

impl Default for ModesConfig {
    fn default() -> Self {
        ModesConfig {
            NetworkMode: "strict".into(),
            DownloadMode: "sync".into(),
            DownloadURL: String::new(),
        }
    }
}

impl Section for ModesConfig {
    const PATH: &'static str = "";
    const ENV: &'static [Env] = &[
        Env::new("ATHENS_NETWORK_MODE", "NetworkMode"),
        Env::new("ATHENS_DOWNLOAD_MODE", "DownloadMode"),
        Env::new("ATHENS_DOWNLOAD_URL", "DownloadURL"),
    ];
    fn validate(&self) -> Result<(), ConfigError> {
        self.network_mode()?;
        self.download_policy()?;
        Ok(())
    }
}

impl ModesConfig {
    /// The network mode.
    pub fn network_mode(&self) -> Result<NetworkMode, ConfigError> {
        match self.NetworkMode.trim() {
            "" | "strict" => Ok(NetworkMode::Strict),
            "offline" => Ok(NetworkMode::Offline),
            "fallback" => Ok(NetworkMode::Fallback),
            other => Err(err(
                "NetworkMode",
                format!("{other:?} is not one of strict, offline, fallback"),
            )),
        }
    }

    /// The download policy (reads the download file for `file:`).
    pub fn download_policy(&self) -> Result<DownloadPolicy, ConfigError> {
        let m = self.DownloadMode.trim();
        if let Some(path) = m.strip_prefix("file:") {
            let text = std::fs::read_to_string(path)
                .map_err(|e| err("DownloadMode", format!("{path}: {e}")))?;
            return DownloadPolicy::from_hcl(&text, "DownloadMode");
        }
        if let Some(b64) = m.strip_prefix("custom:") {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| err("DownloadMode", format!("custom: not base64: {e}")))?;
            let text =
                String::from_utf8(raw).map_err(|_| err("DownloadMode", "custom: not UTF-8"))?;
            return DownloadPolicy::from_hcl(&text, "DownloadMode");
        }
        let mode = Mode::parse(if m.is_empty() { "sync" } else { m }).ok_or_else(|| {
            err(
                "DownloadMode",
                format!(
                    "{m:?} is not one of sync, async, redirect, async_redirect, none, file:<path>, custom:<base64>"
                ),
            )
        })?;
        let policy = DownloadPolicy {
            mode,
            url: self.DownloadURL.trim().to_string(),
            rules: Vec::new(),
        };
        policy.check("DownloadURL")?;
        Ok(policy)
    }
}

/// Go's `module.MatchPrefixPatterns`: whether any of the comma-separated
/// glob patterns matches a leading run of `target`'s path elements (as
/// GOPRIVATE patterns do).
pub fn matches_prefix_patterns(patterns: &str, target: &str) -> bool {
    for pattern in patterns.split(',') {
        let pattern = pattern.trim().trim_end_matches('/');
        if pattern.is_empty() {
            continue;
        }
        let n = pattern.split('/').count();
        let elems: Vec<&str> = target.split('/').collect();
        if elems.len() < n {
            continue;
        }
        let prefix = elems[..n].join("/");
        if glob_match(pattern, &prefix) {
            return true;
        }
    }
    false
}

/// Go's `path.Match` for `*`, `?` and `[...]` classes; `*` and `?` never
/// match `/`.
fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => {
                let rest = &p[1..];
                for i in 0..=n.len() {
                    if go(rest, &n[i..]) {
                        return true;
                    }
                    if i < n.len() && n[i] == '/' {
                        break;
                    }
                }
                false
            }
            Some('?') => !n.is_empty() && n[0] != '/' && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(end) = p.iter().position(|&c| c == ']') else {
                    return false;
                };
                if n.is_empty() || n[0] == '/' {
                    return false;
                }
                let class = &p[1..end];
                let (negate, class) = match class.first() {
                    Some('^') => (true, &class[1..]),
                    _ => (false, class),
                };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == '-' {
                        if class[i] <= n[0] && n[0] <= class[i + 2] {
                            hit = true;
                        }
                        i += 3;
                    } else {
                        if class[i] == n[0] {
                            hit = true;
                        }
                        i += 1;
                    }
                }
                hit != negate && go(&p[end + 1..], &n[1..])
            }
            Some('\\') if p.len() > 1 => !n.is_empty() && n[0] == p[1] && go(&p[2..], &n[1..]),
            Some(&c) => !n.is_empty() && n[0] == c && go(&p[1..], &n[1..]),
        }
    }
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_patterns_match_as_goprivate_does() {
        assert!(matches_prefix_patterns(
            "github.com/org",
            "github.com/org/repo/v2"
        ));
        assert!(matches_prefix_patterns(
            "*.corp.example",
            "git.corp.example/x"
        ));
        assert!(matches_prefix_patterns(
            "github.com/a*/b",
            "github.com/abc/b/c"
        ));
        assert!(!matches_prefix_patterns(
            "github.com/a*/b",
            "github.com/abc/c"
        ));
        assert!(!matches_prefix_patterns(
            "github.com/org",
            "github.com/organisation"
        ));
        assert!(matches_prefix_patterns(
            "x.io,github.com/o?g",
            "github.com/org/r"
        ));
        assert!(!matches_prefix_patterns("", "github.com/org"));
    }

    #[test]
    fn the_download_file_picks_the_first_matching_block() {
        let text = r#"
            downloadURL = "https://proxy.example"
            mode = "async_redirect"
            download "github.com/gomods/*" {
                mode = "sync"
            }
            download "golang.org/x/*" {
                mode = "none"
            }
            download "github.com/pkg/*" {
                mode = "redirect"
                downloadURL = "https://other.example"
            }
        "#;
        let p = DownloadPolicy::from_hcl(text, "DownloadMode").unwrap();
        assert_eq!(
            p.for_module("github.com/gomods/athens"),
            (Mode::Sync, "https://proxy.example")
        );
        assert_eq!(p.for_module("golang.org/x/text").0, Mode::None);
        assert_eq!(
            p.for_module("github.com/pkg/errors"),
            (Mode::Redirect, "https://other.example")
        );
        assert_eq!(p.for_module("example.com/a").0, Mode::AsyncRedirect);
        // The same through custom:<base64> and file:<path>.
        use base64::Engine;
        let c = ModesConfig {
            DownloadMode: format!(
                "custom:{}",
                base64::engine::general_purpose::STANDARD.encode(text)
            ),
            ..Default::default()
        };
        assert_eq!(c.download_policy().unwrap(), p);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("download.hcl");
        std::fs::write(&f, text).unwrap();
        let c = ModesConfig {
            DownloadMode: format!("file:{}", f.display()),
            ..Default::default()
        };
        assert_eq!(c.download_policy().unwrap(), p);
    }

    #[test]
    fn bad_modes_are_refused_naming_the_key() {
        let c = ModesConfig {
            NetworkMode: "sometimes".into(),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "NetworkMode");
        let c = ModesConfig {
            DownloadMode: "redirect".into(),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "DownloadURL");
        let c = ModesConfig {
            DownloadMode: "custom:@@@".into(),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "DownloadMode");
        assert!(
            DownloadPolicy::from_hcl("mode = \"sometimes\"\ndownloadURL = \"\"\n", "k").is_err()
        );
        assert!(DownloadPolicy::from_hcl("download \"x\" {\n mode = \"sync\"\n}\n", "k").is_err());
    }
}
