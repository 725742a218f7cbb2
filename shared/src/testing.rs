//! Test support shared by every crate's integration tests: per-test PostgreSQL databases on the
//! real server, so tests never share state. Hidden from the docs; it needs no dependency the
//! library does not already have.

use sqlx::Connection;

/// Where tests find PostgreSQL: `SLUICE_TEST_DATABASE_URL`, else the local trust-auth server.
pub fn admin_url() -> String {
    std::env::var("SLUICE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A freshly created, uniquely named database, dropped (best effort, even with connections still
/// open) when this value is dropped.
pub struct TestDatabase {
    /// Connection URL of the new database.
    pub url: String,
    pub name: String,
    admin: String,
}

impl TestDatabase {
    /// Creates the database. Panics with the URL (password masked) and how to start PostgreSQL when
    /// the server is unreachable: a test that needs the database must fail, never pass silently.
    pub async fn create() -> Self {
        let admin = admin_url();
        let shown = crate::secret::redact_url(&admin);
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is not reachable at {shown}: {e}. Start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, run \
                 scripts/test.sh (which installs and starts it), or point SLUICE_TEST_DATABASE_URL \
                 at a server where the user may create databases"
                )
            });
        // Only hex digits and a fixed prefix, so the identifier needs no quoting.
        let name = format!("sluice_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("creating test database {name} on {shown}: {e}"));
        let _ = conn.close().await;
        let mut url = url::Url::parse(&admin).expect("SLUICE_TEST_DATABASE_URL is not a URL");
        url.set_path(&name);
        TestDatabase {
            url: url.to_string(),
            name,
            admin,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop may run inside a runtime, which must not block on itself: use a thread with its own.
        // FORCE ends connections that pools still hold.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// Deletes every queue and exchange of a test's topology (best effort), from a thread of its own
/// so it can run from `Drop` inside a runtime.
pub fn delete_topology(settings: &crate::queue::QueueSettings) {
    let mut queues = vec![
        settings.work_queue.clone(),
        settings.dead_letter_queue.clone(),
    ];
    queues.extend(settings.retry_queue_names());
    let exchanges = vec![
        settings.exchange.clone(),
        settings.dead_letter_exchange.clone(),
    ];
    delete_queues_and_exchanges(settings, queues, exchanges);
}

/// Deletes `queues` (best effort) on the broker of `settings`, like [`delete_topology`]; for
/// queues outside the fleet's topology, such as an S3 events queue and its retry queues.
pub fn delete_queues(settings: &crate::queue::QueueSettings, queues: Vec<String>) {
    delete_queues_and_exchanges(settings, queues, Vec::new());
}

fn delete_queues_and_exchanges(
    settings: &crate::queue::QueueSettings,
    queues: Vec<String>,
    exchanges: Vec<String>,
) {
    let s = settings.clone();
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async move {
            let conn = crate::queue::connect(&s).await.ok()?;
            let ch = conn.create_channel().await.ok()?;
            for q in queues {
                let _ = ch.queue_delete(q.into(), Default::default()).await;
            }
            for x in exchanges {
                let _ = ch.exchange_delete(x.into(), Default::default()).await;
            }
            conn.close(200, "done".into()).await.ok()
        })
    })
    .join();
}
