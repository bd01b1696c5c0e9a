//! The module index (`IndexType`): one line per module version this proxy
//! has made visible, served at `/index?limit=&since=` as Athens' NDJSON.
//! Backends: `none`, `memory`, `postgres` (`[Index.Postgres]`) and `mysql`
//! (`[Index.MySQL]`, MariaDB too). Unlike Athens, lines come in time order.

pub mod mysql;
pub mod postgres;

use async_trait::async_trait;
use modmesh_proto::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;

/// One index line (Athens' field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[allow(non_snake_case)]
pub struct Line {
    /// The module path.
    pub Path: String,
    /// The version.
    pub Version: String,
    /// When it was indexed (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub Timestamp: OffsetDateTime,
}

/// A module index.
#[async_trait]
pub trait Index: Send + Sync + 'static {
    /// Records `module@version` now; recording it again changes nothing.
    async fn index(&self, module: &str, version: &str) -> Result<()>;
    /// Up to `limit` lines indexed at or after `since`, oldest first.
    async fn lines(&self, since: OffsetDateTime, limit: usize) -> Result<Vec<Line>>;
}

/// Builds the index `IndexType` names (`None` for `none`).
pub async fn from_config(
    cfg: &modmesh_common::Config,
    index_type: &str,
) -> std::result::Result<Option<Arc<dyn Index>>, String> {
    Ok(match index_type.trim() {
        "" | "none" => None,
        "memory" => Some(Arc::new(MemoryIndex::default())),
        "postgres" => {
            let c: postgres::PostgresConfig = cfg.section().map_err(|e| e.to_string())?;
            Some(Arc::new(postgres::PostgresIndex::connect(&c).await?))
        }
        "mysql" => {
            let c: mysql::MySqlConfig = cfg.section().map_err(|e| e.to_string())?;
            Some(Arc::new(mysql::MySqlIndex::connect(&c).await?))
        }
        other => return Err(format!("config: IndexType: {other:?} is not known")),
    })
}

/// Lines in time order, and the (module, version) pairs among them.
type Lines = (Vec<Line>, HashSet<(String, String)>);

/// An index in memory (lost on restart).
#[derive(Debug, Default)]
pub struct MemoryIndex {
    inner: Mutex<Lines>,
}

#[async_trait]
impl Index for MemoryIndex {
    async fn index(&self, module: &str, version: &str) -> Result<()> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.1.insert((module.to_string(), version.to_string())) {
            g.0.push(Line {
                Path: module.to_string(),
                Version: version.to_string(),
                Timestamp: now(),
            });
        }
        Ok(())
    }

    async fn lines(&self, since: OffsetDateTime, limit: usize) -> Result<Vec<Line>> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let start = g.0.partition_point(|l| l.Timestamp < since);
        Ok(g.0[start..].iter().take(limit).cloned().collect())
    }
}

/// Now, in UTC, to the microsecond (what the SQL columns keep).
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .unwrap_or(t)
}

/// Athens' `Params` map: a TOML table, or in the environment `k:v,k:v`.
pub fn params<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Map(BTreeMap<String, toml::Value>),
        Text(String),
    }
    match Form::deserialize(d)? {
        Form::Map(m) => Ok(m
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    toml::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect()),
        Form::Text(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.split_once(':')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| serde::de::Error::custom(format!("{p:?} is not key:value")))
            })
            .collect(),
    }
}

/// Seconds from a connect timeout value (`30`, `30s`, `1m`).
pub fn seconds(v: &str) -> Option<std::time::Duration> {
    let v = v.trim();
    if let Ok(n) = v.parse::<u64>() {
        return Some(std::time::Duration::from_secs(n));
    }
    humantime::parse_duration(v).ok()
}

/// An index backend's error, as an unavailable service.
pub fn db_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("index {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_keeps_order_and_ignores_repeats() {
        let i = MemoryIndex::default();
        i.index("a.io/x", "v1.0.0").await.unwrap();
        i.index("a.io/x", "v1.0.0").await.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mid = now();
        i.index("a.io/y", "v2.0.0").await.unwrap();
        let all = i.lines(OffsetDateTime::UNIX_EPOCH, 10).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].Path, "a.io/x");
        let later = i.lines(mid, 10).await.unwrap();
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].Version, "v2.0.0");
        assert_eq!(
            i.lines(OffsetDateTime::UNIX_EPOCH, 1).await.unwrap().len(),
            1
        );
        let json = serde_json::to_string(&all[0]).unwrap();
        assert!(
            json.starts_with("{\"Path\":\"a.io/x\",\"Version\":\"v1.0.0\",\"Timestamp\":\""),
            "{json}"
        );
    }
}
