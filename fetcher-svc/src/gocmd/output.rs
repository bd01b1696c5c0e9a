//! Go output parsing: the JSON `go mod download -json` and `go list -m
//! -json` print, the `.info` document built from it, and go's error text as
//! one clean line.

use bytes::Bytes;
use modmesh_proto::{Error, Result};
use serde::Deserialize;

/// The longest go message put into an error.
pub(crate) const MAX_MESSAGE: usize = 4000;

/// The JSON `go mod download -json` prints.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub(crate) struct ModDownload {
    pub path: String,
    pub version: String,
    pub info: String,
    pub go_mod: String,
    pub zip: String,
    pub sum: String,
    pub error: String,
}

/// The part of `go list -m -json` output used here.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub(crate) struct ListModule {
    pub version: String,
    pub versions: Option<Vec<String>>,
    pub time: Option<String>,
}

/// The JSON `go env -json NAME...` prints.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub(crate) struct GoEnvJson {
    pub GOPROXY: String,
    pub GONOPROXY: String,
    pub GOSUMDB: String,
    pub GONOSUMDB: String,
    pub GOPRIVATE: String,
}

/// A `.info` document.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct InfoJson {
    version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
}

/// The `.info` JSON of `m`.
pub(crate) fn info_json(m: ListModule) -> Result<Bytes> {
    let info = InfoJson {
        version: m.version,
        time: m.time.filter(|t| !t.is_empty()),
    };
    serde_json::to_vec(&info)
        .map(Bytes::from)
        .map_err(|e| Error::internal(format!("encoding .info: {e}")))
}

/// The first JSON value in `out`, if it parses as `T`.
pub(crate) fn first_json<T: serde::de::DeserializeOwned>(out: &[u8]) -> Option<T> {
    serde_json::Deserializer::from_slice(out)
        .into_iter::<T>()
        .next()
        .and_then(|r| r.ok())
}

/// Reads a small file the go command reported (`.info`, `.mod`).
pub(crate) async fn read_small(path: &str, what: &str) -> Result<Bytes> {
    tokio::fs::read(path).await.map(Bytes::from).map_err(|e| {
        tracing::error!(path, error = %e, "reading a downloaded file failed");
        Error::internal(format!("reading the downloaded {what} file: {}", e.kind()))
    })
}

/// go's message as one line: trimmed lines without the `go: ` prefixes,
/// joined by spaces, at most a few thousand bytes.
pub fn clean_message(raw: &str) -> String {
    let mut out = String::new();
    for line in raw.lines() {
        let mut t = line.trim();
        while let Some(rest) = t.strip_prefix("go: ") {
            t = rest.trim_start();
        }
        if t.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(t);
    }
    if out.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cleaned() {
        assert_eq!(
            clean_message("go: module example.com/a: reading x: 503 Service Unavailable\n\tserver response: boom\n"),
            "module example.com/a: reading x: 503 Service Unavailable server response: boom"
        );
        assert!(clean_message(&"x".repeat(10_000)).len() <= MAX_MESSAGE + 3);
    }

    #[test]
    fn go_json_is_parsed() {
        let d: ModDownload = first_json(
            b"{\n\t\"Path\": \"example.com/a\",\n\t\"Version\": \"latest\",\n\t\"Error\": \"boom\"\n}\n",
        )
        .unwrap();
        assert_eq!(
            (d.path.as_str(), d.error.as_str()),
            ("example.com/a", "boom")
        );
        let m: ListModule =
            first_json(b"{\"Path\":\"a\",\"Version\":\"v1.0.0\",\"Versions\":[\"v1.0.0\"]}")
                .unwrap();
        assert_eq!(m.versions.as_deref(), Some(&["v1.0.0".to_string()][..]));
        let e: GoEnvJson = first_json(b"{\"GONOPROXY\": \"\", \"GOPROXY\": \"a,direct\"}").unwrap();
        assert_eq!(e.GOPROXY, "a,direct");
        assert!(first_json::<ListModule>(b"not json").is_none());
        assert_eq!(
            &info_json(ListModule {
                version: "v1.0.0".into(),
                versions: None,
                time: Some(String::new()),
            })
            .unwrap()[..],
            b"{\"Version\":\"v1.0.0\"}"
        );
    }
}
