//! The `GOPROXY` list, walked entry by entry.
//!
//! The go command reports only one error for a whole list, and prefers the
//! error of a `direct` entry: behind a firewall, "the upstream proxy said
//! 404" turns into "the VCS host could not be reached". So the fetcher runs
//! the go command once per entry, with `GOPROXY` set to that entry alone,
//! and applies the list's rules itself:
//!
//! - entries are separated by `,` or `|`; empty entries are skipped;
//!   `direct` and `off` end the list (later entries are ignored);
//! - after a failure, the next entry is tried if the failure was
//!   "not there" (404/410, see [`Class::NotExist`]), or if the entry was
//!   followed by `|` (any failure);
//! - when every entry tried failed, the error returned is the first of the
//!   most telling rank: an upstream that answered with a failure
//!   (5xx, 403, a timeout, a refused checksum) before an upstream that
//!   answered "not there" or "no match", before one that could not be
//!   reached. So a module an upstream said does not exist is `NotFound`
//!   even when a later `direct` could not reach anything;
//! - a local fault (the go binary missing, no work directory) stops the
//!   walk at once.
//!
//! Modules matching `GONOPROXY` (which defaults to `GOPRIVATE`) are not
//! split: the go command fetches them directly whatever the list says.

use super::classify::Class;
use modmesh_proto::{Error, Result};
use std::future::Future;

/// One entry of a `GOPROXY` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry as written (a URL, `direct` or `off`).
    pub url: String,
    /// Followed by `|`: the next entry is tried after any failure.
    pub fall_back_on_error: bool,
}

/// The entries of a `GOPROXY` value, as the go command reads them.
pub fn parse(goproxy: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut rest = goproxy;
    while !rest.is_empty() {
        let (url, fall_back_on_error) = match rest.find([',', '|']) {
            Some(i) => {
                let sep = rest.as_bytes()[i];
                let url = &rest[..i];
                rest = &rest[i + 1..];
                (url, sep == b'|')
            }
            None => {
                let url = rest;
                rest = "";
                (url, false)
            }
        };
        let url = url.trim();
        if url.is_empty() {
            continue;
        }
        let end = url == "direct" || url == "off";
        out.push(Entry {
            url: url.to_string(),
            fall_back_on_error,
        });
        if end {
            break;
        }
    }
    out
}

/// `goproxy` (a list or one entry) with the passwords of URLs such as
/// `https://user:pass@host` replaced by `xxxxx`, for logs.
pub fn redacted(goproxy: &str) -> String {
    let mut out = String::with_capacity(goproxy.len());
    let mut rest = goproxy;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find([',', '|', '/']).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let user = authority[..at].split(':').next().unwrap_or("");
                if authority[..at].contains(':') {
                    out.push_str(user);
                    out.push_str(":xxxxx");
                } else {
                    out.push_str(user);
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Whether `target` (a module path) matches one of the comma-separated
/// `path.Match` globs in `patterns`, each matched against as many leading
/// path elements of `target` as it has (the go command's
/// `GONOPROXY`/`GOPRIVATE` rule).
pub fn matches_prefix_patterns(patterns: &str, target: &str) -> bool {
    for glob in patterns.split(',') {
        let glob = glob.strip_suffix('/').unwrap_or(glob);
        if glob.is_empty() {
            continue;
        }
        let mut n = glob.matches('/').count();
        let mut prefix = target;
        for (i, b) in target.bytes().enumerate() {
            if b == b'/' {
                if n == 0 {
                    prefix = &target[..i];
                    break;
                }
                n -= 1;
            }
        }
        if n > 0 {
            continue;
        }
        if glob_match(glob.as_bytes(), prefix.as_bytes()) {
            return true;
        }
    }
    false
}

/// `path.Match`: `*` any run of non-`/` bytes, `?` one non-`/` byte,
/// `[...]` a class (ranges, `^` negation), `\` escapes. A malformed
/// pattern matches nothing.
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => {
            let rest = &p[1..];
            let mut i = 0;
            loop {
                if glob_match(rest, &s[i..]) {
                    return true;
                }
                if i == s.len() || s[i] == b'/' {
                    return false;
                }
                i += 1;
            }
        }
        Some(b'?') => !s.is_empty() && s[0] != b'/' && glob_match(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some(&c) = s.first() else {
                return false;
            };
            if c == b'/' {
                return false;
            }
            let mut i = 1;
            let negate = p.get(i) == Some(&b'^');
            if negate {
                i += 1;
            }
            let mut matched = false;
            let mut first = true;
            loop {
                let Some(&lo) = p.get(i) else {
                    return false;
                };
                if lo == b']' && !first {
                    i += 1;
                    break;
                }
                first = false;
                let (lo, next) = if lo == b'\\' {
                    match p.get(i + 1) {
                        Some(&e) => (e, i + 2),
                        None => return false,
                    }
                } else {
                    (lo, i + 1)
                };
                i = next;
                let mut hi = lo;
                if p.get(i) == Some(&b'-') && p.get(i + 1).is_some_and(|&b| b != b']') {
                    hi = p[i + 1];
                    if hi == b'\\' {
                        match p.get(i + 2) {
                            Some(&e) => {
                                hi = e;
                                i += 1;
                            }
                            None => return false,
                        }
                    }
                    i += 2;
                }
                if lo <= c && c <= hi {
                    matched = true;
                }
            }
            matched != negate && glob_match(&p[i..], &s[1..])
        }
        Some(b'\\') => match p.get(1) {
            Some(&e) => s.first() == Some(&e) && glob_match(&p[2..], &s[1..]),
            None => false,
        },
        Some(&c) => s.first() == Some(&c) && glob_match(&p[1..], &s[1..]),
    }
}

/// A failed attempt at one entry.
#[derive(Debug)]
pub struct Failure {
    /// What the failure means for the walk; `None` for a local fault, which
    /// stops it.
    pub class: Option<Class>,
    /// The error to return (its kind may be more precise than the class's,
    /// e.g. `Timeout`).
    pub error: Error,
}

impl Failure {
    /// A local fault: the walk stops with `error`.
    pub fn local(error: Error) -> Failure {
        Failure { class: None, error }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure::local(error)
    }
}

/// How telling a failure is when every entry failed (higher wins).
fn rank(class: Class) -> u8 {
    match class {
        Class::Unreachable => 0,
        Class::NotExist | Class::NoMatch => 1,
        Class::Refused | Class::Failed => 2,
    }
}

/// Tries `attempt` on each entry of `entries` in turn, by the rules in the
/// module docs. `entries` must not be empty.
pub async fn walk<T, F, Fut>(entries: &[Entry], mut attempt: F) -> Result<T>
where
    F: FnMut(&Entry) -> Fut,
    Fut: Future<Output = std::result::Result<T, Failure>>,
{
    let mut best: Option<(u8, Error)> = None;
    for entry in entries {
        let failure = match attempt(entry).await {
            Ok(v) => return Ok(v),
            Err(f) => f,
        };
        let Some(class) = failure.class else {
            return Err(failure.error);
        };
        tracing::debug!(entry = %redacted(&entry.url), ?class, error = %failure.error, "GOPROXY entry failed");
        let r = rank(class);
        if best.as_ref().is_none_or(|(b, _)| r > *b) {
            best = Some((r, failure.error));
        }
        if class != Class::NotExist && !entry.fall_back_on_error {
            break;
        }
    }
    Err(best
        .map(|(_, e)| e)
        .unwrap_or_else(|| Error::internal("the GOPROXY list has no entries")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use modmesh_proto::ErrorKind;

    fn e(url: &str, pipe: bool) -> Entry {
        Entry {
            url: url.into(),
            fall_back_on_error: pipe,
        }
    }

    #[test]
    fn lists_parse_as_the_go_command_reads_them() {
        assert_eq!(
            parse("http://a,https://b|direct"),
            [
                e("http://a", false),
                e("https://b", true),
                e("direct", false)
            ]
        );
        assert_eq!(parse(" a , ,b|"), [e("a", false), e("b", true)]);
        assert_eq!(parse("off,http://a"), [e("off", false)]);
        assert_eq!(parse("a|direct,b"), [e("a", true), e("direct", false)]);
        assert_eq!(parse(""), []);
        assert_eq!(parse("file:///x"), [e("file:///x", false)]);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("https://u:secret@a.test/p,http://b.test|https://tok@c.test,direct"),
            "https://u:xxxxx@a.test/p,http://b.test|https://tok@c.test,direct"
        );
        assert_eq!(redacted("file:///x"), "file:///x");
        assert_eq!(redacted("off"), "off");
    }

    #[test]
    fn prefix_patterns_match_per_path_element() {
        let m = matches_prefix_patterns;
        assert!(m("rsc.io/private", "rsc.io/private/bar"));
        assert!(m("rsc.io/private", "rsc.io/private"));
        assert!(!m("rsc.io/private", "rsc.io/privateer"));
        assert!(m("*.corp.example.com", "git.corp.example.com/a/b"));
        assert!(!m("*.corp.example.com", "corp.example.com/a"));
        assert!(m(
            "x.test,example.com/*/inner/",
            "example.com/nest/inner/pkg"
        ));
        assert!(!m("example.com/*/inner", "example.com/nest"));
        assert!(m("example.com/[a-c]at", "example.com/bat/x"));
        assert!(!m("example.com/[^a-c]at", "example.com/bat/x"));
        assert!(m("example.com/?at", "example.com/cat"));
        assert!(!m("", "example.com/a"));
        assert!(!m("example.com/[", "example.com/a"));
    }

    fn nf() -> Failure {
        Failure {
            class: Some(Class::NotExist),
            error: Error::not_found("404 here"),
        }
    }
    fn unreachable() -> Failure {
        Failure {
            class: Some(Class::Unreachable),
            error: Error::unavailable("no such host"),
        }
    }
    fn timeout() -> Failure {
        Failure {
            class: Some(Class::Failed),
            error: Error::timeout("timed out"),
        }
    }

    /// Walks `entries` where entry i answers `answers[i]`; returns the
    /// result and the entries tried.
    fn run(
        entries: &[Entry],
        answers: Vec<std::result::Result<u32, Failure>>,
    ) -> (Result<u32>, Vec<String>) {
        let answers = std::sync::Mutex::new(answers.into_iter());
        let tried = std::sync::Mutex::new(Vec::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let r = rt.block_on(walk(entries, |entry| {
            tried.lock().unwrap().push(entry.url.clone());
            let a = answers.lock().unwrap().next().expect("an answer");
            async move { a }
        }));
        (r, tried.into_inner().unwrap())
    }

    #[test]
    fn comma_falls_through_only_on_not_exist() {
        let list = parse("http://a,http://b,direct");
        let (r, tried) = run(&list, vec![Err(nf()), Ok(7)]);
        assert_eq!(r.unwrap(), 7);
        assert_eq!(tried, ["http://a", "http://b"]);
        // 404 then an unreachable direct: NotFound, not Unavailable.
        let (r, _) = run(&list, vec![Err(nf()), Err(nf()), Err(unreachable())]);
        assert_eq!(r.unwrap_err().kind, ErrorKind::NotFound);
        // A timeout stops a comma list.
        let (r, tried) = run(&list, vec![Err(timeout())]);
        assert_eq!(r.unwrap_err().kind, ErrorKind::Timeout);
        assert_eq!(tried, ["http://a"]);
        // "No match" is an answer: a comma does not fall through.
        let nomatch = Failure {
            class: Some(Class::NoMatch),
            error: Error::not_found("no matching versions"),
        };
        let (r, tried) = run(&list, vec![Err(nomatch)]);
        assert_eq!(r.unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(tried.len(), 1);
        // A refusal stops it too, and keeps its kind.
        let refused = Failure {
            class: Some(Class::Refused),
            error: Error::permission("403"),
        };
        let (r, tried) = run(&list, vec![Err(refused)]);
        assert_eq!(r.unwrap_err().kind, ErrorKind::Permission);
        assert_eq!(tried.len(), 1);
        // Everything unreachable: Unavailable.
        let (r, tried) = run(
            &parse("http://a|direct"),
            vec![Err(unreachable()), Err(unreachable())],
        );
        assert_eq!(r.unwrap_err().kind, ErrorKind::Unavailable);
        assert_eq!(tried.len(), 2);
    }

    #[test]
    fn pipe_falls_through_on_any_error_and_keeps_the_telling_one() {
        let list = parse("http://a|http://b|direct");
        let (r, tried) = run(&list, vec![Err(timeout()), Ok(1)]);
        assert_eq!(r.unwrap(), 1);
        assert_eq!(tried.len(), 2);
        let (r, _) = run(
            &list,
            vec![Err(unreachable()), Err(nf()), Err(unreachable())],
        );
        assert_eq!(r.unwrap_err().kind, ErrorKind::NotFound);
        // A timeout of an upstream that knows the module beats a later 404
        // and an unreachable direct.
        let (r, _) = run(&list, vec![Err(timeout()), Err(nf()), Err(unreachable())]);
        assert_eq!(r.unwrap_err().kind, ErrorKind::Timeout);
        // A local fault stops at once.
        let (r, tried) = run(
            &list,
            vec![Err(Failure::local(Error::internal("no go binary")))],
        );
        assert_eq!(r.unwrap_err().kind, ErrorKind::Internal);
        assert_eq!(tried.len(), 1);
        // Mixed separators: "a,b|direct": a's 404 falls through, b's 500
        // falls through by its pipe.
        let failed = Failure {
            class: Some(Class::Failed),
            error: Error::unavailable("500"),
        };
        let (r, tried) = run(&parse("a,b|direct"), vec![Err(nf()), Err(failed), Ok(3)]);
        assert_eq!(r.unwrap(), 3);
        assert_eq!(tried, ["a", "b", "direct"]);
    }
}
