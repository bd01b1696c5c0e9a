//! HTTP basic auth (`BasicAuthUser`, `BasicAuthPass`), compared in
//! constant time. Health and readiness stay open.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The `WWW-Authenticate` challenge (Athens' realm).
pub const CHALLENGE: &str = "Basic realm=\"basic auth required\"";

/// Paths (relative to `PathPrefix`) that never need credentials.
pub const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// The expected credentials, kept as digests so that comparing them takes
/// the same time whatever the lengths of the offered ones.
#[derive(Clone)]
pub struct BasicAuth {
    user: [u8; 32],
    pass: [u8; 32],
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BasicAuth(..)")
    }
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

impl BasicAuth {
    /// Credentials `user`:`pass`.
    pub fn new(user: &str, pass: &str) -> Self {
        BasicAuth {
            user: digest(user.as_bytes()),
            pass: digest(pass.as_bytes()),
        }
    }

    /// Whether `headers` carry the expected credentials. Any malformed
    /// `Authorization` header is simply not the credentials.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some((user, pass)) = offered(headers) else {
            return false;
        };
        let ok = self.user.ct_eq(&digest(&user)) & self.pass.ct_eq(&digest(&pass));
        ok.into()
    }
}

/// The (user, password) of a well-formed `Authorization: Basic` header.
fn offered(headers: &HeaderMap) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let value = value.as_bytes();
    if value.len() > 8192 {
        return None;
    }
    let (scheme, rest) = value.split_at(value.iter().position(|b| *b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let token = rest.trim_ascii();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    let colon = raw.iter().position(|b| *b == b':')?;
    Some((raw[..colon].to_vec(), raw[colon + 1..].to_vec()))
}

/// The middleware: 401 with a challenge unless the credentials match or
/// the path is one of [`OPEN_PATHS`].
pub async fn require(State(auth): State<Arc<BasicAuth>>, req: Request, next: Next) -> Response {
    if OPEN_PATHS.contains(&req.uri().path()) || auth.allows(req.headers()) {
        return next.run(req).await;
    }
    tracing::info!(path = %req.uri().path(), "basic auth refused");
    let mut r = (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response();
    let h = r.headers_mut();
    h.insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(CHALLENGE),
    );
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &[u8]) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        m
    }

    fn basic(s: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
        .into_bytes()
    }

    #[test]
    fn credentials_must_match_exactly() {
        let a = BasicAuth::new("alice", "s3cret:x");
        assert!(a.allows(&h(&basic("alice:s3cret:x"))));
        assert!(a.allows(&h(b"basic YWxpY2U6czNjcmV0Ong=")));
        assert!(!a.allows(&h(&basic("alice:s3cret"))));
        assert!(!a.allows(&h(&basic("alic:s3cret:x"))));
        assert!(!a.allows(&h(&basic("alice"))));
        assert!(!a.allows(&HeaderMap::new()));
        for bad in [
            &b"Basic"[..],
            b"Basic ",
            b"Basic !!!notbase64!!!",
            b"Bearer YWxpY2U6czNjcmV0Ong=",
            b"YWxpY2U6czNjcmV0Ong=",
            b"Basic \xff\xfe",
        ] {
            assert!(!a.allows(&h(bad)), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut two = h(&basic("alice:s3cret:x"));
        two.append(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(&basic("alice:s3cret:x")).unwrap(),
        );
        assert!(!a.allows(&two));
    }
}
