//! Error kinds to HTTP statuses, in one place. Bodies are plain text.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use modmesh_proto::{Error, ErrorKind};

/// The HTTP status for an error. `NotFound` and `Gone` are the two statuses
/// on which the go command falls back to the next proxy. An unavailable
/// upstream is 502 (bad gateway); an unavailable service of the mesh
/// (storage, lock) is 503.
pub fn status_of(e: &Error) -> StatusCode {
    match e.kind {
        ErrorKind::Unavailable if !e.upstream => StatusCode::SERVICE_UNAVAILABLE,
        kind => status(kind),
    }
}

/// The HTTP status for an error kind, taking unavailability to be the
/// upstream's (see [`status_of`]).
pub fn status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Gone => StatusCode::GONE,
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::AlreadyExists => StatusCode::CONFLICT,
        ErrorKind::Unavailable => StatusCode::BAD_GATEWAY,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Permission => StatusCode::FORBIDDEN,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An [`Error`] as an HTTP response.
#[derive(Debug)]
pub struct HttpError(pub Error);

impl From<Error> for HttpError {
    fn from(e: Error) -> Self {
        HttpError(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        if status.is_server_error() {
            tracing::error!(kind = %self.0.kind, error = %self.0.message, "request failed");
        } else {
            tracing::info!(kind = %self.0.kind, error = %self.0.message, "request refused");
        }
        // The log keeps the whole message (with the request id of the span);
        // the client gets it without the server's file-system paths.
        let mut body = public_message(&self.0.message);
        body.push('\n');
        let mut resp = (status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

/// `message` with every absolute file-system path replaced by `<path>`: a
/// client learns what went wrong with its module, not the server's layout.
/// Module paths and URLs are kept.
pub fn public_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find('/') {
        let (before, from) = rest.split_at(i);
        // A path starts at a '/' that begins a word (not inside a module
        // path or after "scheme:/").
        out.push_str(before);
        let starts_word = out
            .chars()
            .last()
            .is_none_or(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '(' | '[' | '=' | '`'));
        let next = from[1..].chars().next();
        if starts_word && next.is_some_and(|c| !c.is_whitespace() && c != '/') {
            let end = from
                .find(|c: char| {
                    c.is_whitespace() || matches!(c, '"' | '\'' | ')' | ']' | '`' | ',')
                })
                .unwrap_or(from.len());
            // Keep a trailing ':' (Go's "path: reason") outside the mask.
            let path = &from[..end];
            let trimmed = path.trim_end_matches(':');
            out.push_str("<path>");
            out.push_str(&path[trimmed.len()..]);
            rest = &from[end..];
        } else {
            out.push('/');
            rest = &from[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::public_message;

    #[test]
    fn paths_are_masked_module_paths_and_urls_kept() {
        assert_eq!(
            public_message("open /var/lib/athens/example.com/a/v1.0.0/source.zip: no such file"),
            "open <path>: no such file"
        );
        assert_eq!(
            public_message(
                "go: example.com/a@v1.0.0: reading https://proxy.example/x/@v/list: 404"
            ),
            "go: example.com/a@v1.0.0: reading https://proxy.example/x/@v/list: 404"
        );
        assert_eq!(
            public_message("GOMODCACHE=\"/tmp/modmesh-modcache\" (cache /tmp/x)"),
            "GOMODCACHE=\"<path>\" (cache <path>)"
        );
        assert_eq!(public_message("a / b"), "a / b");
    }
}
