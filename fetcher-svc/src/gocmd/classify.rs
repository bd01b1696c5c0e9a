//! Error classification: what a go command failure message means for the
//! caller (its [`ErrorKind`]) and for the `GOPROXY` chain (whether the next
//! entry may be tried after a `,`), and removal of server paths from the
//! message sent back.
//!
//! The rules, in order (a `server response:` body quoted by go is never
//! read, since an upstream's prose must not decide the kind):
//!
//! 0. The go command's own refusal of what it downloaded (a checksum
//!    mismatch, `SECURITY ERROR`, or a module that must be verified while
//!    `GOSUMDB=off`, as toolchain modules must) is `Permission` (403): the
//!    client is told no, not that an upstream failed.
//! 1. A checksum-database step (`verifying ...`) that failed otherwise is an upstream
//!    failure (`Unavailable`), or unreachable when the database could not
//!    be reached: its "not found" is not the module's.
//! 2. A connection that could not be made (DNS, refused, no route, proxy
//!    connect, TLS) is **unreachable** (`Unavailable`).
//! 3. A transfer that broke after connecting (reset, EOF, read timeout) is
//!    an upstream failure (`Unavailable`).
//! 4. An HTTP status go quotes: 404/410 is **not-exist** (`NotFound`, the
//!    only kind a `,` falls through on); 401/403 is `Permission`; any other
//!    4xx, 5xx or 429 is an upstream failure.
//! 5. go's own "does not exist" errors for a file proxy, and `GOPROXY=off`,
//!    are not-exist.
//! 6. An upstream that answered but holds nothing matching (`no matching
//!    versions`, `unknown revision`, `invalid version`, ...) is `NotFound`
//!    without fall-through, as the go command treats it.
//! 7. Anything else go reports is an upstream failure (`Unavailable`),
//!    never `Internal`.

use modmesh_proto::ErrorKind;

/// What a failed go run means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The upstream said the module or version is not there (404/410, a
    /// missing file of a file proxy, `GOPROXY=off`). `NotFound`; a `,` in
    /// `GOPROXY` falls through to the next entry.
    NotExist,
    /// The upstream answered but nothing matches the query. `NotFound`; a
    /// `,` does not fall through (the go command's rule).
    NoMatch,
    /// The upstream could not be reached at all. `Unavailable`.
    Unreachable,
    /// The upstream refused (401/403). `Permission`.
    Refused,
    /// The upstream failed (5xx, 429, a broken transfer, a refused
    /// checksum, anything unclassified). `Unavailable`.
    Failed,
}

impl Class {
    /// The error kind callers see.
    pub fn kind(self) -> ErrorKind {
        match self {
            Class::NotExist | Class::NoMatch => ErrorKind::NotFound,
            Class::Unreachable | Class::Failed => ErrorKind::Unavailable,
            Class::Refused => ErrorKind::Permission,
        }
    }
}

/// Messages that mean no connection could be made.
const UNREACHABLE: &[&str] = &[
    "proxyconnect",
    "no such host",
    "connection refused",
    "network is unreachable",
    "no route to host",
    "host is down",
    "server misbehaving",
    "temporary failure in name resolution",
    "could not resolve host",
    "could not resolve proxy",
    "failed to connect to",
    "tls handshake timeout",
    "x509: ",
    "tls: ",
];

/// Messages that mean a transfer broke after connecting.
const BROKEN: &[&str] = &[
    "connection reset",
    "i/o timeout",
    "timeout awaiting response headers",
    "client.timeout exceeded",
    "context deadline exceeded",
    "unexpected eof",
    "\": eof",
    "broken pipe",
    "connection timed out",
    "operation timed out",
    "http2: server sent goaway",
];

/// The go command refusing a module it downloaded.
const REFUSED: &[&str] = &[
    "checksum mismatch",
    "security error",
    "checksum database disabled by gosumdb=off",
];

/// go's "not there" messages for a file proxy and for `GOPROXY=off`.
const NOT_EXIST: &[&str] = &[
    "no such file or directory",
    "module lookup disabled",
    "disabled by goproxy=off",
];

/// Messages that mean the upstream holds nothing matching.
const NO_MATCH: &[&str] = &[
    "no matching versions",
    "unknown revision",
    "invalid version",
    "not found",
    "does not exist",
    "no such",
    "unrecognized import path",
    "declares its path as",
    "terminal prompts disabled",
    "repository not found",
];

/// The class of a go command failure message (its JSON `Error` or its
/// stderr). See the module docs for the rules.
pub fn class_of(message: &str) -> Class {
    let text = without_server_responses(message).to_ascii_lowercase();
    let unreachable = UNREACHABLE.iter().any(|p| text.contains(p))
        || (text.contains("dial tcp") && BROKEN.iter().any(|p| text.contains(p)));
    if REFUSED.iter().any(|p| text.contains(p)) {
        return Class::Refused;
    }
    if text.contains("verifying ") {
        return if unreachable {
            Class::Unreachable
        } else {
            Class::Failed
        };
    }
    if unreachable {
        return Class::Unreachable;
    }
    if BROKEN.iter().any(|p| text.contains(p)) {
        return Class::Failed;
    }
    let codes = status_codes(&text);
    if codes.iter().any(|c| *c == 404 || *c == 410) && codes.iter().all(|c| *c < 500) {
        return Class::NotExist;
    }
    if codes.iter().any(|c| *c == 401 || *c == 403) && codes.iter().all(|c| *c < 500) {
        return Class::Refused;
    }
    if !codes.is_empty() {
        return Class::Failed;
    }
    if NOT_EXIST.iter().any(|p| text.contains(p)) {
        return Class::NotExist;
    }
    if NO_MATCH.iter().any(|p| text.contains(p)) {
        return Class::NoMatch;
    }
    Class::Failed
}

/// The error kind of a go command failure message: see [`class_of`].
pub fn classify(message: &str) -> ErrorKind {
    class_of(message).kind()
}

/// `message` without the `server response:` sections go quotes from an
/// upstream (that line and the indented lines after it).
fn without_server_responses(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut skipping = false;
    for line in message.lines() {
        let indented = line.starts_with([' ', '\t']);
        if !indented {
            skipping = false;
        }
        if let Some(i) = line.find("server response:") {
            out.push_str(&line[..i]);
            out.push('\n');
            skipping = true;
            continue;
        }
        if skipping {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// HTTP status codes quoted by go as `...: NNN Status Text`.
pub(crate) fn status_codes(text: &str) -> Vec<u16> {
    let b = text.as_bytes();
    let mut codes = Vec::new();
    let mut i = 0;
    while let Some(off) = text[i..].find(": ") {
        let start = i + off + 2;
        let digits = &b[start..b.len().min(start + 3)];
        if digits.len() == 3
            && digits.iter().all(u8::is_ascii_digit)
            && matches!(b.get(start + 3), None | Some(b' ') | Some(b'\n'))
        {
            if let Ok(code) = std::str::from_utf8(digits).unwrap_or("").parse::<u16>() {
                if (100..600).contains(&code) {
                    codes.push(code);
                }
            }
        }
        i = start;
    }
    codes
}

/// What replaces a server path in a message sent back.
pub const NEUTRAL_PATH: &str = "<fetcher-dir>";

/// `text` with every path that starts with one of `prefixes` (up to the
/// next space, quote, colon, comma or parenthesis) replaced by
/// [`NEUTRAL_PATH`].
pub fn scrub_paths(text: &str, prefixes: &[String]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let hit = prefixes
            .iter()
            .filter(|p| !p.is_empty())
            .filter_map(|p| rest.find(p.as_str()))
            .min();
        let Some(start) = hit else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..start]);
        out.push_str(NEUTRAL_PATH);
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ':' | ',' | '(' | ')'))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_go_messages() {
        // Messages printed by go 1.26 against local upstreams.
        let cases: &[(&str, Class)] = &[
            (
                "example.com/Mixed/Case@v1.0.1: reading file:///tmp/gx/up/example.com/%21mixed/%21case/@v/v1.0.1.info: no such file or directory",
                Class::NotExist,
            ),
            (
                "go: module example.com/nope: reading file:///tmp/gx/up/example.com/nope/@v/list: no such file or directory\n",
                Class::NotExist,
            ),
            (
                "example.com/Mixed/Case@master: invalid version: reading file:///tmp/up/example.com/%21mixed/%21case/@v/master.info: no such file or directory",
                Class::NotExist,
            ),
            (
                "example.com/Mixed/Case@v1.0.1: reading http://127.0.0.1:18765/example.com/%21mixed/%21case/@v/v1.0.1.info: 404 File not found",
                Class::NotExist,
            ),
            (
                "go: module example.com/a/sub: reading http://127.0.0.1:18931/example.com/a/sub/@v/list: 404 File not found\n",
                Class::NotExist,
            ),
            (
                "go: module example.com/empty: no matching versions for query \"latest\"\n",
                Class::NoMatch,
            ),
            (
                "example.com/a@v1.0.0: reading http://127.0.0.1:18766/example.com/a/@v/v1.0.0.info: 410 Gone\n\tserver response: upstream says boom",
                Class::NotExist,
            ),
            (
                "example.com/a@v1.0.0: reading http://127.0.0.1:18766/example.com/a/@v/v1.0.0.info: 500 Internal Server Error\n\tserver response: not found",
                Class::Failed,
            ),
            (
                "example.com/a@v1.0.0: reading http://127.0.0.1:18766/example.com/a/@v/v1.0.0.info: 502 Bad Gateway\n\tserver response: upstream says boom",
                Class::Failed,
            ),
            (
                "go: module example.com/a: reading http://127.0.0.1:18766/example.com/a/@v/list: 503 Service Unavailable\n\tserver response: upstream says boom\n",
                Class::Failed,
            ),
            (
                "example.com/a@v1.0.0: reading http://127.0.0.1:18766/example.com/a/@v/v1.0.0.info: 403 Forbidden\n\tserver response: upstream says boom",
                Class::Refused,
            ),
            (
                "go: module golang.org/x: reading https://mirror.test/golang.org/x/@v/list: 403 Forbidden\n\tserver response: This module version is not available.\n",
                Class::Refused,
            ),
            (
                "go: module example.invalid/foo: reading https://mirror.test/example.invalid/foo/@v/list: 400 Bad Request\n\tserver response: Go module host not permitted\n",
                Class::Failed,
            ),
            (
                "example.com/a@v1.0.0: Get \"http://127.0.0.1:18766/example.com/a/@v/v1.0.0.info\": EOF",
                Class::Failed,
            ),
            (
                "example.com/a@v1.0.0: Get \"http://127.0.0.1:18766/example.com/a/@v/v1.0.0.info\": dial tcp 127.0.0.1:18766: connect: connection refused",
                Class::Unreachable,
            ),
            (
                "go: module example.com/nope: Get \"http://nonexistent.invalid/example.com/nope/@v/list\": dial tcp: lookup nonexistent.invalid on 10.0.0.53:53: no such host\n",
                Class::Unreachable,
            ),
            (
                "go: example.com/a/sub@latest: unrecognized import path \"example.com/a/sub\": https fetch: Get \"https://example.com/a/sub?go-get=1\": proxyconnect tcp: dial tcp 127.0.0.1:1: connect: connection refused\n",
                Class::Unreachable,
            ),
            (
                "go: golang.org/x/text/language@latest: unrecognized import path \"golang.org/x/text/language\": https fetch: Get \"https://golang.org/x/text/language?go-get=1\": dial tcp: lookup golang.org on 10.0.0.53:53: no such host\n",
                Class::Unreachable,
            ),
            (
                "example.com/a@v1.0.0: Get \"https://x.test/a\": dial tcp 10.1.2.3:443: i/o timeout",
                Class::Unreachable,
            ),
            (
                "example.com/a@v1.0.0: read tcp 127.0.0.1:1->127.0.0.1:2: i/o timeout",
                Class::Failed,
            ),
            (
                "go: example.com/nope@latest: module lookup disabled by GOPROXY=off\n",
                Class::NotExist,
            ),
            (
                "go: github.com/x/y@v1.0.0: invalid version: git ls-remote -q origin in /tmp/x: exit status 128:\n\tfatal: could not read Username for 'https://github.com': terminal prompts disabled\n",
                Class::NoMatch,
            ),
            (
                "verifying example.com/a@v1.0.0: checksum mismatch\n\tdownloaded: h1:x\n\tsum.golang.org: h1:y\n\nSECURITY ERROR\n",
                Class::Refused,
            ),
            (
                "go: golang.org/toolchain@v0.0.1-go1.99.1.linux-amd64: verifying module: checksum database disabled by GOSUMDB=off\n",
                Class::Refused,
            ),
            (
                "go: example.com/a@v1.0.0: verifying module: example.com/a@v1.0.0: Get \"https://sum.test/lookup/example.com/a@v1.0.0\": dial tcp: lookup sum.test on 10.0.0.53:53: no such host\n",
                Class::Unreachable,
            ),
            (
                "go: example.com/a@v1.0.0: parsing go.mod:\n\tmodule declares its path as: example.com/b\n\t        but was required as: example.com/a\n",
                Class::NoMatch,
            ),
            (
                "go: example.com/a@v1.2.3.4: invalid version: unknown revision v1.2.3.4\n",
                Class::NoMatch,
            ),
            (
                "verifying example.com/a@v1.0.0/go.mod: example.com/a@v1.0.0/go.mod: reading https://sum.golang.org/lookup/example.com/a@v1.0.0: 404 Not Found\n\tserver response: not found\n",
                Class::Failed,
            ),
            ("something odd happened", Class::Failed),
        ];
        for (msg, class) in cases {
            assert_eq!(class_of(msg), *class, "{msg}");
        }
        assert_eq!(classify("something odd happened"), ErrorKind::Unavailable);
        assert_eq!(classify("x: 404 Not Found"), ErrorKind::NotFound);
        assert_eq!(classify("x: 403 Forbidden"), ErrorKind::Permission);
        assert_eq!(
            classify("x: verifying module: checksum database disabled by GOSUMDB=off"),
            ErrorKind::Permission
        );
    }

    #[test]
    fn status_codes_are_found() {
        assert_eq!(status_codes("reading u: 404 not found"), vec![404]);
        assert_eq!(
            status_codes("dial tcp 127.0.0.1:18766: connect"),
            Vec::<u16>::new()
        );
        assert_eq!(status_codes("a: 500\nb: 410 gone"), vec![500, 410]);
        assert_eq!(status_codes("a: 5000 things"), Vec::<u16>::new());
    }

    #[test]
    fn paths_are_scrubbed() {
        let prefixes = vec![
            "/srv/goget/modmesh-".to_string(),
            "/var/cache/mc".to_string(),
        ];
        let msg = "git ls-remote -q origin in /srv/goget/modmesh-modcache/cache/vcs/0a1b: exit status 128 (dir \"/srv/goget/modmesh-job-x1/work\"), /var/cache/mc/x.zip, file:///srv/up/x";
        assert_eq!(
            scrub_paths(msg, &prefixes),
            "git ls-remote -q origin in <fetcher-dir>: exit status 128 (dir \"<fetcher-dir>\"), <fetcher-dir>, file:///srv/up/x"
        );
        assert_eq!(scrub_paths("nothing here", &prefixes), "nothing here");
        assert_eq!(scrub_paths("a", &[String::new()]), "a");
    }
}
