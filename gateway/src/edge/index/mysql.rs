//! The MySQL / MariaDB index (`IndexType = "mysql"`, `[Index.MySQL]`):
//! Athens' table `indexes(id, path, version, timestamp)`.

use super::{db_error, params, Index, Line};
use async_trait::async_trait;
use modmesh_common::config::{err, ConfigError, Env, Section};
use modmesh_proto::Result;
use mysql_async::prelude::Queryable;
use mysql_async::Value;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use time::OffsetDateTime;

/// `[Index.MySQL]`, Athens' keys and defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct MySqlConfig {
    /// `ATHENS_INDEX_MYSQL_PROTOCOL`: `tcp`, or `unix` (then `Host` is the
    /// socket's path).
    pub Protocol: String,
    /// `ATHENS_INDEX_MYSQL_HOST`.
    pub Host: String,
    /// `ATHENS_INDEX_MYSQL_PORT`.
    pub Port: u16,
    /// `ATHENS_INDEX_MYSQL_USER`.
    pub User: String,
    /// `ATHENS_INDEX_MYSQL_PASSWORD`.
    pub Password: String,
    /// `ATHENS_INDEX_MYSQL_DATABASE` (must exist).
    pub Database: String,
    /// `ATHENS_INDEX_MYSQL_PARAMS` (`k:v,k:v`): `timeout` (connect timeout);
    /// `parseTime` is accepted (times are always parsed).
    #[serde(deserialize_with = "params")]
    pub Params: BTreeMap<String, String>,
}

impl Default for MySqlConfig {
    fn default() -> Self {
        MySqlConfig {
            Protocol: "tcp".into(),
            Host: "localhost".into(),
            Port: 3306,
            User: "root".into(),
            Password: String::new(),
            Database: "athens".into(),
            Params: BTreeMap::from([
                ("parseTime".into(), "true".into()),
                ("timeout".into(), "30s".into()),
            ]),
        }
    }
}

impl Section for MySqlConfig {
    const PATH: &'static str = "Index.MySQL";
    const ENV: &'static [Env] = &[
        Env::new("ATHENS_INDEX_MYSQL_PROTOCOL", "Protocol"),
        Env::new("ATHENS_INDEX_MYSQL_HOST", "Host"),
        Env::new("ATHENS_INDEX_MYSQL_PORT", "Port"),
        Env::new("ATHENS_INDEX_MYSQL_USER", "User"),
        Env::new("ATHENS_INDEX_MYSQL_PASSWORD", "Password"),
        Env::new("ATHENS_INDEX_MYSQL_DATABASE", "Database"),
        Env::new("ATHENS_INDEX_MYSQL_PARAMS", "Params"),
    ];
    fn validate(&self) -> std::result::Result<(), ConfigError> {
        if !matches!(self.Protocol.as_str(), "tcp" | "unix") {
            return Err(err(
                &Self::key("Protocol"),
                format!("{:?} is not tcp or unix", self.Protocol),
            ));
        }
        for (k, v) in [
            ("Host", &self.Host),
            ("User", &self.User),
            ("Database", &self.Database),
        ] {
            if v.trim().is_empty() {
                return Err(err(&Self::key(k), "must not be empty"));
            }
        }
        if let Some(v) = self.Params.get("timeout") {
            if super::seconds(v).is_none() {
                return Err(err(
                    &Self::key("Params.timeout"),
                    format!("{v:?} is not a duration"),
                ));
            }
        }
        Ok(())
    }
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS indexes(\
    id INT AUTO_INCREMENT PRIMARY KEY, \
    path VARCHAR(255) NOT NULL, \
    version VARCHAR(255) NOT NULL, \
    timestamp TIMESTAMP(6), \
    INDEX (timestamp), \
    UNIQUE INDEX idx_module_version (path, version)) CHARACTER SET utf8";

/// The MySQL index over a connection pool (sessions in UTC).
pub struct MySqlIndex {
    pool: mysql_async::Pool,
    timeout: Duration,
}

impl MySqlIndex {
    /// Connects and creates the table if missing.
    pub async fn connect(c: &MySqlConfig) -> std::result::Result<Self, String> {
        let timeout = c
            .Params
            .get("timeout")
            .and_then(|v| super::seconds(v))
            .unwrap_or(Duration::from_secs(30));
        for k in c.Params.keys() {
            if !matches!(k.as_str(), "timeout" | "parseTime") {
                tracing::warn!(param = %k, "Index.MySQL.Params: ignored");
            }
        }
        let mut opts = mysql_async::OptsBuilder::default()
            .user(Some(c.User.clone()))
            .db_name(Some(c.Database.clone()))
            .init(vec!["SET time_zone = '+00:00'"]);
        if !c.Password.is_empty() {
            opts = opts.pass(Some(c.Password.clone()));
        }
        opts = if c.Protocol == "unix" {
            opts.socket(Some(c.Host.clone()))
        } else {
            opts.ip_or_hostname(c.Host.clone()).tcp_port(c.Port)
        };
        let index = MySqlIndex {
            pool: mysql_async::Pool::new(opts),
            timeout,
        };
        let where_ = format!("index mysql {}:{}", c.Host, c.Port);
        let mut conn = index.conn().await.map_err(|e| format!("{where_}: {e}"))?;
        conn.query_drop(SCHEMA)
            .await
            .map_err(|e| format!("{where_}: schema: {e}"))?;
        Ok(index)
    }

    async fn conn(&self) -> Result<mysql_async::Conn> {
        tokio::time::timeout(self.timeout, self.pool.get_conn())
            .await
            .map_err(|_| db_error("mysql", format!("no connection within {:?}", self.timeout)))?
            .map_err(|e| db_error("mysql", e))
    }
}

fn to_value(t: OffsetDateTime) -> Value {
    let t = t.to_offset(time::UtcOffset::UTC);
    Value::Date(
        t.year() as u16,
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond(),
    )
}

fn from_value(v: &Value) -> Result<OffsetDateTime> {
    let bad = || db_error("mysql row", format!("timestamp {v:?}"));
    let Value::Date(y, mo, d, h, mi, s, us) = *v else {
        return Err(bad());
    };
    let date =
        time::Date::from_calendar_date(y as i32, time::Month::try_from(mo).map_err(|_| bad())?, d)
            .map_err(|_| bad())?;
    let t = time::Time::from_hms_micro(h, mi, s, us).map_err(|_| bad())?;
    Ok(time::PrimitiveDateTime::new(date, t).assume_utc())
}

#[async_trait]
impl Index for MySqlIndex {
    async fn index(&self, module: &str, version: &str) -> Result<()> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "INSERT IGNORE INTO indexes (path, version, timestamp) VALUES (?, ?, ?)",
            (module, version, to_value(super::now())),
        )
        .await
        .map_err(|e| db_error("mysql insert", e))
    }

    async fn lines(&self, since: OffsetDateTime, limit: usize) -> Result<Vec<Line>> {
        let mut conn = self.conn().await?;
        let rows: Vec<(String, String, Value)> = conn
            .exec(
                "SELECT path, version, timestamp FROM indexes WHERE timestamp >= ? \
                 ORDER BY timestamp, id LIMIT ?",
                (
                    to_value(since.max(OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1))),
                    limit as u64,
                ),
            )
            .await
            .map_err(|e| db_error("mysql query", e))?;
        rows.iter()
            .map(|(p, v, t)| {
                Ok(Line {
                    Path: p.clone(),
                    Version: v.clone(),
                    Timestamp: from_value(t)?,
                })
            })
            .collect()
    }
}
