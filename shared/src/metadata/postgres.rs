//! Record stage, fleet flavour: the metadata store in PostgreSQL, shared by the scheduler and every
//! worker. The statements are [`SqlStore`]'s; this is how the fleet connects.

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use super::MetadataError;
use super::sql::Db;
use super::store::SqlStore;
use crate::secret::redact_url;

/// The schema, compiled into the binary. The migrator takes an advisory lock, so processes that
/// start together migrate one at a time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per process. Each document holds one only for a few short statements (begin, commit),
/// so a handful serves a worker's whole concurrency; the fleet total must stay under the server's
/// `max_connections` (100 by default).
const MAX_CONNECTIONS: u32 = 8;

/// How long to wait for a connection before reporting the store unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The metadata store backed by PostgreSQL.
pub type PostgresStore = SqlStore<PgPool>;

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/db`), verifies a connection can be
    /// made and applies migrations. Errors name the URL with its password masked.
    pub async fn connect(url: &str) -> Result<Self, MetadataError> {
        let shown = redact_url(url);
        // The driver's messages could quote the URL; never let the password through.
        let scrub = |msg: String| scrub_password(url, msg);
        let options: PgConnectOptions = url
            .parse::<PgConnectOptions>()
            .map_err(|e: sqlx::Error| MetadataError::Config(scrub(format!("{shown}: {e}"))))?
            // Plan every statement for its parameters and the table's current statistics: the
            // driver prepares each statement once per connection, and PostgreSQL soon fixes a
            // prepared statement to one generic plan for the connection's life, made from
            // whatever statistics the table had then (listings with optional filters suffer
            // most). Planning these short statements costs microseconds.
            .options([("plan_cache_mode", "force_custom_plan")]);
        // One plain connection first: the pool would retry a refused connection until its acquire
        // timeout and then report only "pool timed out", hiding the cause (refused, bad password,
        // no such database). The same connection applies the migrations.
        let mut conn = PgConnection::connect_with(&options).await.map_err(|e| {
            MetadataError::Unavailable(scrub(format!("connecting to {shown}: {e}")))
        })?;
        // `run_direct` is what `run` calls after acquiring; `run(&mut conn)` would make every
        // future awaiting `connect` fail rustc's higher-ranked `Send` check (no `tokio::spawn`).
        MIGRATOR
            .run_direct(None, &mut conn, false)
            .await
            .map_err(|e| MetadataError::Migration(scrub(format!("{shown}: {e}"))))?;
        // Closing politely is a courtesy to the server; the store does not depend on it.
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| {
                MetadataError::Unavailable(scrub(format!("connecting to {shown}: {e}")))
            })?;
        Ok(SqlStore {
            db: Db::Postgres(pool.clone()),
            pool,
        })
    }

    /// The connection pool, for callers that need to close it deliberately.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Replaces the URL's password (raw and percent-decoded) wherever it appears in `msg`.
fn scrub_password(url: &str, msg: String) -> String {
    let Some(password) = url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
    else {
        return msg;
    };
    let mut msg = msg;
    let decoded = url::form_urlencoded::parse(format!("p={password}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned());
    for secret in std::iter::once(password).chain(decoded) {
        if !secret.is_empty() {
            msg = msg.replace(&secret, "***");
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_password_removes_raw_and_decoded_forms() {
        let url = "postgres://bob:p%40ss@db/x";
        let msg = "failed for postgres://bob:p%40ss@db/x (password p@ss)".to_string();
        let out = scrub_password(url, msg);
        assert!(!out.contains("p%40ss") && !out.contains("p@ss"), "{out}");
        assert_eq!(scrub_password("postgres://db/x", "plain".into()), "plain");
    }
}
