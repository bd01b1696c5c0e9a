//! Decoding a GOPROXY request path into typed coordinates, once.
//!
//! The raw path is percent-decoded exactly once, split at the first `/@`
//! into the case-escaped module path and the endpoint, and both halves are
//! case-unescaped and validated with the Go toolchain's rules. Bad escapes
//! and invalid paths are [`ErrorKind::Invalid`] (400); paths that are not
//! GOPROXY endpoints are [`ErrorKind::NotFound`] (404).

use modmesh_proto::{Coordinates, Error, ModulePath, Result, Version};

/// The longest request path considered at all.
pub const MAX_PATH: usize = 4096;

/// A GOPROXY endpoint with its typed coordinates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/{module}/@v/list`
    List(ModulePath),
    /// `/{module}/@latest`
    Latest(ModulePath),
    /// `/{module}/@v/{version}.info`
    Info(Coordinates),
    /// `/{module}/@v/{version}.mod`
    Mod(Coordinates),
    /// `/{module}/@v/{version}.zip`
    Zip(Coordinates),
}

/// Decodes a raw request path (as sent, still percent-encoded).
pub fn parse(raw_path: &str) -> Result<Route> {
    if raw_path.len() > MAX_PATH {
        return Err(Error::invalid(format!(
            "request path longer than {MAX_PATH} bytes"
        )));
    }
    let decoded = percent_encoding::percent_decode_str(raw_path)
        .decode_utf8()
        .map_err(|_| Error::invalid("request path is not valid UTF-8 after percent-decoding"))?;
    let path = decoded
        .strip_prefix('/')
        .ok_or_else(|| Error::invalid("request path must start with /"))?;
    let Some((module, endpoint)) = path.split_once("/@") else {
        return Err(Error::not_found("not a GOPROXY endpoint"));
    };
    let route = |module: ModulePath| -> Result<Route> {
        if endpoint == "latest" {
            return Ok(Route::Latest(module));
        }
        if endpoint == "v/list" {
            return Ok(Route::List(module));
        }
        let Some(file) = endpoint.strip_prefix("v/") else {
            return Err(Error::not_found("not a GOPROXY endpoint"));
        };
        let (version, ext) = file
            .rsplit_once('.')
            .ok_or_else(|| Error::not_found("not a GOPROXY endpoint"))?;
        if !matches!(ext, "info" | "mod" | "zip") {
            return Err(Error::not_found("not a GOPROXY endpoint"));
        }
        let c = Coordinates {
            module,
            version: Version::from_escaped(version)?,
        };
        Ok(match ext {
            "info" => Route::Info(c),
            "mod" => Route::Mod(c),
            _ => Route::Zip(c),
        })
    };
    route(ModulePath::from_escaped(module)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use modmesh_proto::ErrorKind;

    fn kind(p: &str) -> ErrorKind {
        parse(p).unwrap_err().kind
    }

    #[test]
    fn endpoints_decode_to_typed_coordinates() {
        assert_eq!(
            parse("/github.com/!azure/go/@v/list").unwrap(),
            Route::List(ModulePath::new("github.com/Azure/go").unwrap())
        );
        assert_eq!(
            parse("/example.com/a/@latest").unwrap(),
            Route::Latest(ModulePath::new("example.com/a").unwrap())
        );
        assert_eq!(
            parse("/example.com/a/v2/@v/v2.0.0-!r!c1.info").unwrap(),
            Route::Info(Coordinates::new("example.com/a/v2", "v2.0.0-RC1").unwrap())
        );
        assert_eq!(
            parse("/example.com/a/@v/v1.0.0+incompatible.zip").unwrap(),
            Route::Zip(Coordinates::new("example.com/a", "v1.0.0+incompatible").unwrap())
        );
        assert_eq!(
            parse("/example.com/a/@v/master.mod").unwrap(),
            Route::Mod(Coordinates::new("example.com/a", "master").unwrap())
        );
        // Percent-encoding is decoded once.
        assert_eq!(
            parse("/example.com/a/@v/v1.0.0%2Bincompatible.info").unwrap(),
            Route::Info(Coordinates::new("example.com/a", "v1.0.0+incompatible").unwrap())
        );
    }

    #[test]
    fn hostile_paths_are_client_errors() {
        for p in [
            "/example.com/../etc/@v/list",
            "/example.com/%2e%2e/etc/@v/list",
            "/%2e%2e/@v/list",
            "/example.com/a/@v/..%2f..%2fx.info",
            "/example.com/%252e%252e/@v/list",
            "/example.com/!/@v/list",
            "/example.com/a!/@v/list",
            "/example.com/!A/@v/list",
            "/example.com/Upper/@v/list",
            "/example.com/%C3%A9/@v/list",
            "/example.com/a%00/@v/list",
            "/-x.com/@v/list",
            "/example.com/a/@v/-v1.info",
            "/example.com/a/@v/--help.info",
            "/example.com/a/@v/$(touch%20x).info",
            "/example.com/a/@v/a;b.info",
            "/example.com/a/@v/a%7Cb.info",
            "/example.com/a/@v/%60id%60.info",
            "/example.com/a/@v/a&&b.info",
            "/example.com/a%5cb/@v/list",
            "/example.com/a/@v/%ff.info",
            "/example.com/a/@v/x/y.info",
        ] {
            assert_eq!(kind(p), ErrorKind::Invalid, "{p}");
        }
        assert_eq!(
            kind(&format!("/example.com/{}/@v/list", "a".repeat(8192))),
            ErrorKind::Invalid
        );
    }

    #[test]
    fn non_endpoints_are_not_found() {
        for p in [
            "/",
            "/favicon.ico",
            "/example.com/a",
            "/example.com/a/@v/",
            "/example.com/a/@v/v1.0.0.tar",
            "/example.com/a/@v/v1.0.0",
            "/example.com/a/@x",
        ] {
            assert_eq!(kind(p), ErrorKind::NotFound, "{p}");
        }
    }
}
