//! Athens' filter file (`FilterFile`, deprecated in Athens, kept working).
//!
//! One rule per line: `+` include, `-` exclude (403), `D` direct (303 to
//! `GlobalEndpoint` plus the request path); then an optional module path
//! prefix (whole `/`-separated segments) and an optional comma-separated
//! list of version qualifiers. A line holding only a sign sets the default
//! for every module. `#` starts a comment line.
//!
//! For a module path, the deepest rule along its segments whose qualifiers
//! match the requested version wins; rules without qualifiers always match,
//! and every rule matches requests without a version (`list`, `@latest`).
//! With no rule, the default applies; with no default, include.
//!
//! Qualifiers: `v1.2` (a version prefix; `*` trimmed, and a `.` appended to
//! prefixes with fewer than two dots, so `v1` means `v1.*`), `~1.2.3`
//! (`>= 1.2.3`, same minor), `^1.2.3` (`>= 1.2.3`, same major), `<1.2.3`
//! (lower than 1.2.3).

use crate::route::{self, Route};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use modmesh_proto::coords::compare_versions;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

/// The largest filter file read (a config error beyond it).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `+`: serve as usual.
    Include,
    /// `-`: refuse with 403.
    Exclude,
    /// `D`: send the client to `GlobalEndpoint` with 303.
    Direct,
}

#[derive(Debug, Default)]
struct Node {
    rule: Option<Rule>,
    qualifiers: Vec<Qualifier>,
    next: HashMap<String, Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Qualifier {
    Prefix(String),
    Tilde(String),
    Caret(String),
    Below(String),
}

impl Qualifier {
    fn parse(q: &str) -> Result<Qualifier, String> {
        let q = q.trim().trim_end_matches('*');
        let Some(first) = q.chars().next() else {
            return Err("empty version qualifier".into());
        };
        let semver = |rest: &str| -> Result<String, String> {
            let parts: Vec<&str> = rest.split('.').collect();
            if parts.len() != 3 || parts.iter().any(|p| p.parse::<u64>().is_err()) {
                return Err(format!("{q:?}: expected major.minor.patch after {first}"));
            }
            Ok(format!("v{rest}"))
        };
        Ok(match first {
            'v' => {
                let mut p = q.to_string();
                if !p.ends_with('.') && p.matches('.').count() < 2 {
                    p.push('.');
                }
                Qualifier::Prefix(p)
            }
            '~' => Qualifier::Tilde(semver(&q[1..])?),
            '^' => Qualifier::Caret(semver(&q[1..])?),
            '<' => Qualifier::Below(semver(&q[1..])?),
            _ => return Err(format!("{q:?}: a qualifier starts with v, ~, ^ or <")),
        })
    }

    fn matches(&self, version: &str) -> bool {
        // (major, minor) of a vX.Y.Z[-pre][+build] version.
        let core = |v: &str| -> Option<(u64, u64)> {
            let v = v.strip_prefix('v')?;
            let v = v.split(['-', '+']).next()?;
            let mut it = v.split('.');
            let (a, b, c) = (it.next()?, it.next()?, it.next()?);
            if it.next().is_some() || c.parse::<u64>().is_err() {
                return None;
            }
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        match self {
            Qualifier::Prefix(p) => version.starts_with(p.as_str()),
            Qualifier::Tilde(q) | Qualifier::Caret(q) | Qualifier::Below(q) => {
                let (Some(v), Some(qc)) = (core(version), core(q)) else {
                    return false;
                };
                let ord = compare_versions(version, q);
                match self {
                    Qualifier::Tilde(_) => v == qc && ord != Ordering::Less,
                    Qualifier::Caret(_) => v.0 == qc.0 && ord != Ordering::Less,
                    _ => ord == Ordering::Less,
                }
            }
        }
    }
}

/// A parsed filter file.
#[derive(Debug, Default)]
pub struct Filter {
    root: Node,
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.trim()
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
}

/// With `GoEnv = "production"` (as in Athens): the filter file must not be
/// writable by group or others, nor executable by them.
pub fn check_permissions(path: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("{path}: {e}"))?
        .permissions()
        .mode();
    if mode & 0o033 != 0 {
        return Err(format!(
            "{path}: mode {:o} lets group or others write or execute it (GoEnv is production)",
            mode & 0o777
        ));
    }
    Ok(())
}

impl Filter {
    /// Parses filter-file text; an error names the line.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let mut f = Filter::default();
        for (idx, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |m: String| format!("line {}: {m}", idx + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 3 {
                return Err(at("expected a sign, a module path and versions".into()));
            }
            let rule = match fields[0] {
                "+" => Rule::Include,
                "-" => Rule::Exclude,
                "D" => Rule::Direct,
                s => return Err(at(format!("{s:?} is not +, - or D"))),
            };
            let qualifiers = match fields.get(2) {
                Some(q) => q
                    .split(',')
                    .map(Qualifier::parse)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(at)?,
                None => Vec::new(),
            };
            let mut node = &mut f.root;
            for seg in segments(fields.get(1).copied().unwrap_or("")) {
                node = node.next.entry(seg.to_string()).or_default();
            }
            node.rule = Some(rule);
            node.qualifiers = qualifiers;
        }
        Ok(f)
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &str) -> Result<Filter, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(format!(
                "{path}: {} bytes; a filter file may hold at most {MAX_FILE_BYTES}",
                meta.len()
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        Filter::parse(&text).map_err(|e| format!("{path}: {e}"))
    }

    /// The rule for `module` at `version` (empty: a request without one).
    pub fn rule(&self, module: &str, version: &str) -> Rule {
        let mut found = None;
        let mut node = &self.root;
        for seg in segments(module) {
            let Some(n) = node.next.get(seg) else { break };
            node = n;
            let applies = version.is_empty()
                || n.qualifiers.is_empty()
                || n.qualifiers.iter().any(|q| q.matches(version));
            if applies && n.rule.is_some() {
                found = n.rule;
            }
        }
        found.or(self.root.rule).unwrap_or(Rule::Include)
    }
}

/// The filter with the endpoint `D` rules send clients to.
#[derive(Debug)]
pub struct FilterLayer {
    /// The rules.
    pub filter: Filter,
    /// `GlobalEndpoint`, without a trailing `/`.
    pub endpoint: String,
}

/// The middleware: applies to module routes only.
pub async fn apply(State(f): State<Arc<FilterLayer>>, req: Request, next: Next) -> Response {
    let (module, version) = match route::parse(req.uri().path()) {
        Ok(Route::List(m) | Route::Latest(m)) => (m, String::new()),
        Ok(Route::Info(c) | Route::Mod(c) | Route::Zip(c)) => (c.module, c.version.to_string()),
        Err(_) => return next.run(req).await,
    };
    match f.filter.rule(module.as_str(), &version) {
        Rule::Include => next.run(req).await,
        Rule::Exclude => {
            tracing::info!(module = %module, version, "refused by the filter file");
            let mut r = (StatusCode::FORBIDDEN, "forbidden by the filter file\n").into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        }
        Rule::Direct => {
            let to = format!("{}{}", f.endpoint, req.uri().path());
            match HeaderValue::from_str(&to) {
                Ok(loc) => {
                    let mut r = StatusCode::SEE_OTHER.into_response();
                    r.headers_mut().insert(header::LOCATION, loc);
                    r
                }
                Err(_) => (StatusCode::BAD_REQUEST, "bad path\n").into_response(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deepest_matching_rule_wins() {
        let f = Filter::parse(
            "# comment\n-\n+ github.com/a\n- github.com/a/b\nD example.com/direct/\n\n",
        )
        .unwrap();
        assert_eq!(f.rule("github.com/a", ""), Rule::Include);
        assert_eq!(f.rule("github.com/a/c", "v1.0.0"), Rule::Include);
        assert_eq!(f.rule("github.com/a/b", "v1.0.0"), Rule::Exclude);
        assert_eq!(f.rule("github.com/a/b/c", "v1.0.0"), Rule::Exclude);
        assert_eq!(f.rule("github.com/ab", "v1.0.0"), Rule::Exclude);
        assert_eq!(f.rule("example.com/direct/x", ""), Rule::Direct);
        assert_eq!(f.rule("other.org/x", ""), Rule::Exclude);
        let open = Filter::parse("- bad.org/x\n").unwrap();
        assert_eq!(open.rule("good.org/x", "v1.0.0"), Rule::Include);
        assert_eq!(open.rule("bad.org/x", "v1.0.0"), Rule::Exclude);
        assert_eq!(Filter::default().rule("a.b/c", ""), Rule::Include);
    }

    #[test]
    fn version_qualifiers() {
        let f = Filter::parse(
            "-\n+ m.io/prefix v1.2\n+ m.io/major v2\n+ m.io/tilde ~1.2.3\n+ m.io/caret ^1.2.3\n+ m.io/below <1.2.3\n+ m.io/list v1.0.0,v1.1*\n",
        )
        .unwrap();
        let ok = |m: &str, v: &str| f.rule(m, v) == Rule::Include;
        assert!(ok("m.io/prefix", "v1.2.0") && ok("m.io/prefix", "v1.2.9-rc.1"));
        assert!(!ok("m.io/prefix", "v1.20.0") && !ok("m.io/prefix", "v1.3.0"));
        assert!(ok("m.io/major", "v2.5.1") && !ok("m.io/major", "v20.0.0"));
        assert!(ok("m.io/tilde", "v1.2.3") && ok("m.io/tilde", "v1.2.7"));
        assert!(!ok("m.io/tilde", "v1.2.2") && !ok("m.io/tilde", "v1.3.0"));
        assert!(ok("m.io/caret", "v1.2.3") && ok("m.io/caret", "v1.9.0"));
        assert!(!ok("m.io/caret", "v1.2.0") && !ok("m.io/caret", "v2.0.0"));
        assert!(ok("m.io/below", "v1.2.2") && ok("m.io/below", "v0.58.9"));
        assert!(!ok("m.io/below", "v1.2.3") && !ok("m.io/below", "v1.3.0"));
        assert!(ok("m.io/list", "v1.0.0") && ok("m.io/list", "v1.1.4"));
        assert!(!ok("m.io/list", "v1.2.0"));
        assert!(!ok("m.io/tilde", "master"));
        // Requests without a version (list, @latest) see every rule.
        assert!(ok("m.io/tilde", ""));
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, line) in [
            ("+ a\n* b\n", "line 2"),
            ("+ a b c d\n", "line 1"),
            ("\n\n- a ~1.2\n", "line 3"),
            ("- a v1,,v2\n", "line 1"),
            ("- a x1.2.3\n", "line 1"),
        ] {
            let e = Filter::parse(text).unwrap_err();
            assert!(e.starts_with(line), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_huge_filter_parses_quickly_and_answers() {
        let mut text = String::from("-\n");
        for i in 0..200_000 {
            text.push_str(&format!(
                "+ example.com/org{}/mod{i} v1.{}\n",
                i % 100,
                i % 7
            ));
        }
        let started = std::time::Instant::now();
        let f = Filter::parse(&text).unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(f.rule("example.com/org5/mod105", "v1.0.3"), Rule::Include);
        assert_eq!(f.rule("example.com/org5/mod105", "v1.1.0"), Rule::Exclude);
        assert_eq!(f.rule("example.com/nothing", ""), Rule::Exclude);
    }
}
