//! The PostgreSQL index (`IndexType = "postgres"`, `[Index.Postgres]`):
//! Athens' table `indexes(id, module, version, timestamp)`.

use super::{db_error, params, Index, Line};
use async_trait::async_trait;
use modmesh_common::config::{err, ConfigError, Env, Section};
use modmesh_proto::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use time::{OffsetDateTime, PrimitiveDateTime};
use tokio::sync::Mutex;

/// `[Index.Postgres]`, Athens' keys and defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct PostgresConfig {
    /// `ATHENS_INDEX_POSTGRES_HOST`.
    pub Host: String,
    /// `ATHENS_INDEX_POSTGRES_PORT`.
    pub Port: u16,
    /// `ATHENS_INDEX_POSTGRES_USER`.
    pub User: String,
    /// `ATHENS_INDEX_POSTGRES_PASSWORD`.
    pub Password: String,
    /// `ATHENS_INDEX_POSTGRES_DATABASE` (must exist).
    pub Database: String,
    /// `ATHENS_INDEX_POSTGRES_PARAMS` (`k:v,k:v`): `connect_timeout`
    /// (seconds), `sslmode` (`disable` or `prefer`), `application_name`.
    #[serde(deserialize_with = "params")]
    pub Params: BTreeMap<String, String>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            Host: "localhost".into(),
            Port: 5432,
            User: "postgres".into(),
            Password: String::new(),
            Database: "athens".into(),
            Params: BTreeMap::from([
                ("connect_timeout".into(), "30".into()),
                ("sslmode".into(), "disable".into()),
            ]),
        }
    }
}

impl Section for PostgresConfig {
    const PATH: &'static str = "Index.Postgres";
    const ENV: &'static [Env] = &[
        Env::new("ATHENS_INDEX_POSTGRES_HOST", "Host"),
        Env::new("ATHENS_INDEX_POSTGRES_PORT", "Port"),
        Env::new("ATHENS_INDEX_POSTGRES_USER", "User"),
        Env::new("ATHENS_INDEX_POSTGRES_PASSWORD", "Password"),
        Env::new("ATHENS_INDEX_POSTGRES_DATABASE", "Database"),
        Env::new("ATHENS_INDEX_POSTGRES_PARAMS", "Params"),
    ];
    fn validate(&self) -> std::result::Result<(), ConfigError> {
        for (k, v) in [
            ("Host", &self.Host),
            ("User", &self.User),
            ("Database", &self.Database),
        ] {
            if v.trim().is_empty() {
                return Err(err(&Self::key(k), "must not be empty"));
            }
        }
        for (k, v) in &self.Params {
            match k.as_str() {
                "connect_timeout" if super::seconds(v).is_none() => {
                    return Err(err(
                        &Self::key("Params.connect_timeout"),
                        format!("{v:?} is not a number of seconds"),
                    ))
                }
                "sslmode" if !matches!(v.as_str(), "disable" | "prefer" | "allow") => {
                    return Err(err(
                        &Self::key("Params.sslmode"),
                        format!("{v:?}: this build connects without TLS (disable or prefer)"),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS indexes(id SERIAL PRIMARY KEY, module VARCHAR(255) NOT NULL, \
     version VARCHAR(255) NOT NULL, timestamp timestamp NOT NULL)",
    "CREATE INDEX IF NOT EXISTS idx_timestamp ON indexes (timestamp)",
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_module_version ON indexes (module, version)",
];

/// The PostgreSQL index: one connection, re-made when it breaks.
pub struct PostgresIndex {
    config: tokio_postgres::Config,
    client: Mutex<Option<std::sync::Arc<tokio_postgres::Client>>>,
}

impl PostgresIndex {
    /// Connects and creates the table if missing.
    pub async fn connect(c: &PostgresConfig) -> std::result::Result<Self, String> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&c.Host)
            .port(c.Port)
            .user(&c.User)
            .dbname(&c.Database)
            .ssl_mode(tokio_postgres::config::SslMode::Disable);
        if !c.Password.is_empty() {
            config.password(&c.Password);
        }
        config.connect_timeout(Duration::from_secs(30));
        for (k, v) in &c.Params {
            match k.as_str() {
                "connect_timeout" => {
                    config.connect_timeout(super::seconds(v).unwrap_or(Duration::from_secs(30)));
                }
                "application_name" => {
                    config.application_name(v);
                }
                "sslmode" => {}
                other => tracing::warn!(param = other, "Index.Postgres.Params: ignored"),
            }
        }
        let index = PostgresIndex {
            config,
            client: Mutex::new(None),
        };
        let mut g = index.client.lock().await;
        let client = index
            .open()
            .await
            .map_err(|e| format!("index postgres {}:{}: {e}", c.Host, c.Port))?;
        for s in SCHEMA {
            client
                .batch_execute(s)
                .await
                .map_err(|e| format!("index postgres schema: {e}"))?;
        }
        *g = Some(std::sync::Arc::new(client));
        drop(g);
        Ok(index)
    }

    async fn open(&self) -> std::result::Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = self.config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "index postgres connection ended");
            }
        });
        Ok(client)
    }

    async fn client(&self) -> Result<std::sync::Arc<tokio_postgres::Client>> {
        let mut g = self.client.lock().await;
        if let Some(c) = g.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = std::sync::Arc::new(self.open().await.map_err(|e| db_error("postgres", e))?);
        *g = Some(c.clone());
        Ok(c)
    }
}

fn primitive(t: OffsetDateTime) -> PrimitiveDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    PrimitiveDateTime::new(t.date(), t.time())
}

#[async_trait]
impl Index for PostgresIndex {
    async fn index(&self, module: &str, version: &str) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO indexes (module, version, timestamp) VALUES ($1, $2, $3) \
             ON CONFLICT (module, version) DO NOTHING",
            &[&module, &version, &primitive(super::now())],
        )
        .await
        .map_err(|e| db_error("postgres insert", e))?;
        Ok(())
    }

    async fn lines(&self, since: OffsetDateTime, limit: usize) -> Result<Vec<Line>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT module, version, timestamp FROM indexes WHERE timestamp >= $1 \
                 ORDER BY timestamp, id LIMIT $2",
                &[&primitive(since), &(limit as i64)],
            )
            .await
            .map_err(|e| db_error("postgres query", e))?;
        rows.iter()
            .map(|r| {
                let t: PrimitiveDateTime = r.try_get(2).map_err(|e| db_error("postgres row", e))?;
                Ok(Line {
                    Path: r.try_get(0).map_err(|e| db_error("postgres row", e))?,
                    Version: r.try_get(1).map_err(|e| db_error("postgres row", e))?,
                    Timestamp: t.assume_utc(),
                })
            })
            .collect()
    }
}
