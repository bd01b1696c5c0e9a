//! `/catalog`, `/index`, `/robots.txt` and the home page `/`.

use crate::app::AppState;
use crate::error::HttpError;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use modmesh_proto::Error;
use serde::Deserialize;
use std::collections::HashMap;

const JSON: &str = "application/json; charset=utf-8";

/// The largest `pagesize` served (larger asks get this many).
pub const MAX_PAGE_SIZE: usize = 10_000;
/// Athens' default `/index` limit.
pub const DEFAULT_INDEX_LIMIT: usize = 2000;
/// The built-in `robots.txt`: no crawling.
pub const DEFAULT_ROBOTS: &str = "User-agent: *\nDisallow: /\n";

fn with_type(mut r: Response, ct: &'static str) -> Response {
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

fn bad_request(msg: impl Into<String>) -> Response {
    HttpError(Error::invalid(msg.into())).into_response()
}

/// `GET /catalog?token=&pagesize=`: a page of stored module versions in
/// Athens' JSON, `next` being the token of the following page.
pub async fn catalog(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let size = match q
        .get("pagesize")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        None => modmesh_storage::DEFAULT_PAGE_SIZE,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n > 0 => n.min(MAX_PAGE_SIZE),
            _ => return bad_request(format!("pagesize {s:?} is not a positive integer")),
        },
    };
    let token = q.get("token").map(String::as_str).filter(|t| !t.is_empty());
    let page = match state
        .service()
        .services()
        .storage
        .catalog(token, size, "")
        .await
    {
        Ok(p) => p,
        Err(e) => return HttpError(e).into_response(),
    };
    let modules: Vec<_> = page
        .entries
        .iter()
        .map(|c| serde_json::json!({"module": c.module.as_str(), "version": c.version.as_str()}))
        .collect();
    let mut body = serde_json::json!({ "modules": modules });
    if let Some(next) = page.next_page_token.filter(|t| !t.is_empty()) {
        body["next"] = next.into();
    }
    with_type(body.to_string().into_response(), JSON)
}

/// `/index` query parameters.
#[derive(Debug, Deserialize)]
pub struct IndexQuery {
    limit: Option<String>,
    since: Option<String>,
}

/// `GET /index?limit=&since=`: NDJSON lines `{"Path","Version","Timestamp"}`.
pub async fn index(State(state): State<AppState>, Query(q): Query<IndexQuery>) -> Response {
    let limit = match q.limit.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => DEFAULT_INDEX_LIMIT,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => return bad_request(format!("limit {s:?} is not a positive integer")),
        },
    };
    let since = match q.since.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => time::OffsetDateTime::UNIX_EPOCH,
        Some(s) => {
            match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
                Ok(t) => t,
                Err(_) => return bad_request(format!("since {s:?} is not an RFC 3339 time")),
            }
        }
    };
    let Some(idx) = state.edges().index.as_ref() else {
        return with_type(String::new().into_response(), JSON);
    };
    match idx.lines(since, limit).await {
        Ok(lines) => {
            let mut body = String::new();
            for l in lines {
                body.push_str(&serde_json::to_string(&l).unwrap_or_default());
                body.push('\n');
            }
            with_type(body.into_response(), JSON)
        }
        Err(e) => HttpError(e).into_response(),
    }
}

/// `GET /robots.txt`: `RobotsFile`; the built-in "no crawling" when the
/// default file is absent, 404 when a configured one is.
pub async fn robots(State(state): State<AppState>) -> Response {
    let cfg = &state.edges().config;
    let body = match tokio::fs::read(&cfg.RobotsFile).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && cfg.RobotsFile == "robots.txt" => {
            DEFAULT_ROBOTS.as_bytes().to_vec()
        }
        Err(e) => {
            tracing::info!(file = %cfg.RobotsFile, error = %e, "RobotsFile unreadable");
            return HttpError(Error::not_found("robots.txt not found")).into_response();
        }
    };
    with_type(body.into_response(), "text/plain; charset=utf-8")
}

/// The built-in home page template (`{{ .Host }}` and `{{ .NoSumPatterns }}`
/// are filled in, as in Athens' template data).
pub const DEFAULT_HOME: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>modmesh Go module proxy</title>
<style>body{font-family:sans-serif;margin:2em;max-width:50em}pre{background:#f4f4f4;padding:.7em}</style>
</head>
<body>
<h1>modmesh: a Go module proxy</h1>
<h2>Use this proxy</h2>
<p>Point the go command at it:</p>
<pre>export GOPROXY={{ .Host }}</pre>
<p>or, to keep it for every build of this user:</p>
<pre>go env -w GOPROXY={{ .Host }},direct</pre>
{{ if .NoSumPatterns }}<p>Modules this proxy keeps out of the checksum database:</p>
<pre>go env -w GONOSUMDB={{ .NoSumPatterns }}</pre>{{ end }}
<h2>Endpoints</h2>
<ul>
<li><code>{{ .Host }}/&lt;module&gt;/@v/list</code>, <code>@latest</code>, <code>@v/&lt;version&gt;.info</code>, <code>.mod</code>, <code>.zip</code>: the GOPROXY protocol</li>
<li><code>{{ .Host }}/catalog</code>: stored module versions, paged (<code>?pagesize=&amp;token=</code>)</li>
<li><code>{{ .Host }}/index</code>: versions in the order they arrived (<code>?since=&amp;limit=</code>)</li>
</ul>
</body>
</html>
"#;

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Fills the home template: `{{ .Host }}`, `{{ .NoSumPatterns }}` (values
/// HTML-escaped) and `{{ if .NoSumPatterns }}…{{ end }}` (spaces optional),
/// the subset of Go templates Athens' home page uses.
pub fn render_home(template: &str, host: &str, nosum: &str) -> String {
    let mut t = template.to_string();
    // Conditionals first (no nesting, as in Athens' template).
    while let Some((is, ie)) = find_action(&t, "if .NoSumPatterns") {
        let Some((es, ee)) = find_action(&t[ie..], "end") else {
            break;
        };
        let keep = if nosum.is_empty() {
            String::new()
        } else {
            t[ie..ie + es].to_string()
        };
        t.replace_range(is..ie + ee, &keep);
    }
    let host = html_escape(host);
    let nosum = html_escape(nosum);
    let mut out = String::with_capacity(t.len());
    let mut rest = t.as_str();
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find("}}") else {
            out.push_str(&rest[i..]);
            rest = "";
            break;
        };
        match rest[i + 2..i + j].trim() {
            ".Host" => out.push_str(&host),
            ".NoSumPatterns" => out.push_str(&nosum),
            _ => {}
        }
        rest = &rest[i + j + 2..];
    }
    out.push_str(rest);
    out
}

/// The (start, end) byte range of the first `{{ <action> }}` in `s`.
fn find_action(s: &str, action: &str) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(i) = s[from..].find("{{") {
        let i = from + i;
        let j = s[i..].find("}}")? + i + 2;
        let inner = s[i + 2..j - 2].trim().trim_matches('-').trim();
        if inner.split_whitespace().collect::<Vec<_>>().join(" ") == action {
            return Some((i, j));
        }
        from = j;
    }
    None
}

/// The proxy's URL as the client reached it: scheme (https when serving
/// TLS or behind `X-Forwarded-Proto: https`), host and `PathPrefix`.
fn base_url(headers: &HeaderMap, uri_host: Option<&str>, tls: bool, prefix: &str) -> String {
    let host = uri_host
        .map(str::to_string)
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "localhost".into());
    let forwarded_https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let scheme = if tls || forwarded_https {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}{prefix}")
}

/// `GET /`: the home page from `HomeTemplatePath`, else the built-in one.
pub async fn home(State(state): State<AppState>, req: axum::extract::Request) -> Response {
    let edges = state.edges();
    let cfg = &edges.config;
    let template = match tokio::fs::read_to_string(&cfg.HomeTemplatePath).await {
        Ok(t) => t,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %cfg.HomeTemplatePath, error = %e, "HomeTemplatePath unreadable; using the built-in page");
            }
            DEFAULT_HOME.to_string()
        }
    };
    let url = base_url(
        req.headers(),
        req.uri().authority().map(|a| a.as_str()),
        cfg.tls(),
        &cfg.path_prefix(),
    );
    let page = render_home(&template, &url, &edges.no_sum_patterns.join(","));
    let mut r = (StatusCode::OK, page).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_template_subset() {
        let t =
            "a {{ .Host }} b{{if .NoSumPatterns}} [{{ .NoSumPatterns }}]{{ end }} c {{.Unknown}}";
        assert_eq!(render_home(t, "http://h:1", ""), "a http://h:1 b c ");
        assert_eq!(
            render_home(t, "http://h:1", "x/*,y"),
            "a http://h:1 b [x/*,y] c "
        );
        assert_eq!(
            render_home("{{ .Host }}", "http://<script>", ""),
            "http://&lt;script&gt;"
        );
        let page = render_home(DEFAULT_HOME, "https://proxy.example:8443/p", "");
        assert!(page.contains("export GOPROXY=https://proxy.example:8443/p</pre>"));
        assert!(!page.contains("{{"));
    }
}
