//! The SQL-dialect layer under the metadata store, the watch state and the reindex cursors: every
//! statement is written once, and only these few things differ between the databases.
//!
//! - the clock (`$now` in a statement, [`now`]): PostgreSQL's own `clock_timestamp()`; in SQLite
//!   this process's clock, bound as a parameter;
//! - timestamps ([`Arg::Time`], [`Row::time`]): `TIMESTAMPTZ`; in SQLite microseconds since the
//!   Unix epoch;
//! - the prefix predicate ([`Dialect::starts_with`]): `starts_with`; in SQLite `substr(…) = …`;
//! - list parameters ([`Arg::Texts`], [`Dialect::is_any`]): arrays; in SQLite JSON arrays;
//! - read-decide-write ([`Db::begin`], [`Dialect::for_update`]): `BEGIN` and
//!   `SELECT … FOR UPDATE`; in SQLite `BEGIN IMMEDIATE`.
//!
//! PostgreSQL keeps its own clock so that workers with skewed clocks still agree on when a lease
//! ends. SQLite stores integers so that `lease_until > now` is an integer comparison (text
//! timestamps with variable fractional digits would not sort). Upserts (`ON CONFLICT … DO UPDATE
//! SET … = excluded.…`) are spelled the same in both.
//!
//! The migrations stay one directory per database (`migrations/postgres`, `migrations/sqlite`):
//! their column types differ, and every database records the checksum of each file applied to it,
//! so an applied file can never be rewritten or generated anew.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgPool, PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{AssertSqlSafe, Database, Row as _};

/// The pool of a metadata database, whichever kind it is.
#[derive(Debug, Clone)]
pub(crate) enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Which SQL a statement must be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Postgres,
    Sqlite,
}

impl Dialect {
    /// `column` starts with the text of `param`, exactly and case-sensitively.
    pub fn starts_with(self, column: &str, param: &str) -> String {
        match self {
            // Byte order under the C collation the prefix-listed columns use, so the index on
            // them can answer it.
            Dialect::Postgres => format!("starts_with({column}, {param})"),
            // LIKE would be case-insensitive and treat % and _ as wildcards.
            Dialect::Sqlite => format!("substr({column}, 1, length({param})) = {param}"),
        }
    }

    /// `column` is one of the texts of the list `param` (bound as [`Arg::Texts`]).
    pub fn is_any(self, column: &str, param: &str) -> String {
        match self {
            Dialect::Postgres => format!("{column} = ANY({param})"),
            // SQLite has no array parameters: lists travel as JSON arrays.
            Dialect::Sqlite => format!("{column} IN (SELECT value FROM json_each({param}))"),
        }
    }

    /// Ends a `SELECT` that reads rows to decide a write in a [`Db::begin`] transaction: PostgreSQL
    /// locks the rows (waiting for other transactions on them); SQLite's transaction already holds
    /// the database's only write lock.
    pub fn for_update(self) -> &'static str {
        match self {
            Dialect::Postgres => " FOR UPDATE",
            Dialect::Sqlite => "",
        }
    }
}

impl Db {
    pub fn dialect(&self) -> Dialect {
        match self {
            Db::Postgres(_) => Dialect::Postgres,
            Db::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// A transaction for a read-decide-write sequence. SQLite takes its write lock up front
    /// (`BEGIN IMMEDIATE`), so two callers (tasks, or processes sharing the file) can never both
    /// read "no live lease" and both claim; PostgreSQL locks the rows it reads
    /// ([`Dialect::for_update`]).
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
            Db::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
        })
    }
}

/// A transaction from [`Db::begin`]; rolled back if dropped uncommitted.
pub(crate) enum Tx {
    Postgres(sqlx::Transaction<'static, Postgres>),
    Sqlite(sqlx::Transaction<'static, Sqlite>),
}

impl Tx {
    pub fn dialect(&self) -> Dialect {
        match self {
            Tx::Postgres(_) => Dialect::Postgres,
            Tx::Sqlite(_) => Dialect::Sqlite,
        }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(tx) => tx.commit().await,
            Tx::Sqlite(tx) => tx.commit().await,
        }
    }
}

/// Where a [`Query`] runs: a pool, or an open transaction.
pub(crate) enum On<'a> {
    PgPool(&'a PgPool),
    PgTx(&'a mut PgConnection),
    SqlitePool(&'a SqlitePool),
    SqliteTx(&'a mut SqliteConnection),
}

impl<'a> From<&'a Db> for On<'a> {
    fn from(db: &'a Db) -> Self {
        match db {
            Db::Postgres(pool) => On::PgPool(pool),
            Db::Sqlite(pool) => On::SqlitePool(pool),
        }
    }
}

impl<'a> From<&'a mut Tx> for On<'a> {
    fn from(tx: &'a mut Tx) -> Self {
        match tx {
            Tx::Postgres(tx) => On::PgTx(tx),
            Tx::Sqlite(tx) => On::SqliteTx(tx),
        }
    }
}

/// A statement parameter; each dialect encodes it its own way.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(bool),
    Time(Option<DateTime<Utc>>),
    /// Lists: PostgreSQL arrays, SQLite JSON arrays (see [`Dialect::is_any`]).
    Texts(Vec<Option<String>>),
    Ints(Vec<i64>),
    Times(Vec<DateTime<Utc>>),
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(Some(v.to_string()))
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Text(Some(v.clone()))
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(Some(v))
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::Text(v.map(str::to_string))
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::Text(v)
    }
}
impl From<&Option<String>> for Arg {
    fn from(v: &Option<String>) -> Self {
        Arg::Text(v.clone())
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}
impl From<DateTime<Utc>> for Arg {
    fn from(v: DateTime<Utc>) -> Self {
        Arg::Time(Some(v))
    }
}
impl From<Option<DateTime<Utc>>> for Arg {
    fn from(v: Option<DateTime<Utc>>) -> Self {
        Arg::Time(v)
    }
}
impl From<&[String]> for Arg {
    fn from(v: &[String]) -> Self {
        Arg::Texts(v.iter().cloned().map(Some).collect())
    }
}

/// A statement with `$1`, `$2`, … parameters, and `$now` for the store's clock wherever it
/// appears.
pub(crate) struct Query {
    sql: Cow<'static, str>,
    args: Vec<Arg>,
}

type DbQuery<DB> = sqlx::query::Query<'static, DB, <DB as Database>::Arguments>;

impl Query {
    pub fn new(sql: impl Into<Cow<'static, str>>) -> Self {
        Query {
            sql: sql.into(),
            args: Vec::new(),
        }
    }

    pub fn bind(mut self, arg: impl Into<Arg>) -> Self {
        self.args.push(arg.into());
        self
    }

    fn postgres(self) -> DbQuery<Postgres> {
        let sql = match self.sql {
            sql if sql.contains("$now") => Cow::Owned(sql.replace("$now", "clock_timestamp()")),
            sql => sql,
        };
        let query = sqlx::query(AssertSqlSafe(sql));
        self.args.into_iter().fold(query, |q, arg| match arg {
            Arg::Text(v) => q.bind(v),
            Arg::Int(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
            Arg::Time(v) => q.bind(v),
            Arg::Texts(v) => q.bind(v),
            Arg::Ints(v) => q.bind(v),
            Arg::Times(v) => q.bind(v),
        })
    }

    fn sqlite(mut self) -> DbQuery<Sqlite> {
        let sql = match self.sql {
            sql if sql.contains("$now") => {
                self.args.push(Arg::Time(Some(Utc::now())));
                Cow::Owned(sql.replace("$now", &format!("${}", self.args.len())))
            }
            sql => sql,
        };
        let query = sqlx::query(AssertSqlSafe(sql));
        self.args.into_iter().fold(query, |q, arg| match arg {
            Arg::Text(v) => q.bind(v),
            Arg::Int(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
            Arg::Time(v) => q.bind(v.map(|t| t.timestamp_micros())),
            Arg::Texts(v) => q.bind(serde_json::Value::from(v).to_string()),
            Arg::Ints(v) => q.bind(serde_json::Value::from(v).to_string()),
            Arg::Times(v) => {
                let micros: Vec<i64> = v.iter().map(DateTime::timestamp_micros).collect();
                q.bind(serde_json::Value::from(micros).to_string())
            }
        })
    }

    /// Runs the statement; the number of rows it changed.
    pub async fn execute<'a>(self, on: impl Into<On<'a>>) -> Result<u64, sqlx::Error> {
        Ok(match on.into() {
            On::PgPool(pool) => self.postgres().execute(pool).await?.rows_affected(),
            On::PgTx(conn) => self.postgres().execute(conn).await?.rows_affected(),
            On::SqlitePool(pool) => self.sqlite().execute(pool).await?.rows_affected(),
            On::SqliteTx(conn) => self.sqlite().execute(conn).await?.rows_affected(),
        })
    }

    pub async fn fetch_all<'a>(self, on: impl Into<On<'a>>) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match on.into() {
            On::PgPool(pool) => wrap(self.postgres().fetch_all(pool).await?, Row::Postgres),
            On::PgTx(conn) => wrap(self.postgres().fetch_all(conn).await?, Row::Postgres),
            On::SqlitePool(pool) => wrap(self.sqlite().fetch_all(pool).await?, Row::Sqlite),
            On::SqliteTx(conn) => wrap(self.sqlite().fetch_all(conn).await?, Row::Sqlite),
        })
    }

    /// The first row, if any (for statements that return at most one).
    pub async fn fetch_optional<'a>(
        self,
        on: impl Into<On<'a>>,
    ) -> Result<Option<Row>, sqlx::Error> {
        Ok(self.fetch_all(on).await?.into_iter().next())
    }

    pub async fn fetch_one<'a>(self, on: impl Into<On<'a>>) -> Result<Row, sqlx::Error> {
        self.fetch_optional(on)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }
}

fn wrap<R>(rows: Vec<R>, row: fn(R) -> Row) -> Vec<Row> {
    rows.into_iter().map(row).collect()
}

/// Now by the store's clock (see the module docs).
pub(crate) async fn now<'a>(on: impl Into<On<'a>>) -> Result<DateTime<Utc>, sqlx::Error> {
    Query::new("SELECT $now AS now")
        .fetch_one(on)
        .await?
        .time("now")
}

/// A result row, whichever database it came from.
pub(crate) enum Row {
    Postgres(PgRow),
    Sqlite(SqliteRow),
}

impl Row {
    /// A column both databases decode the same way (text, integers, booleans).
    pub fn get<T>(&self, column: &str) -> Result<T, sqlx::Error>
    where
        T: for<'r> sqlx::Decode<'r, Postgres>
            + sqlx::Type<Postgres>
            + for<'r> sqlx::Decode<'r, Sqlite>
            + sqlx::Type<Sqlite>,
    {
        match self {
            Row::Postgres(row) => row.try_get(column),
            Row::Sqlite(row) => row.try_get(column),
        }
    }

    pub fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        match self {
            Row::Postgres(row) => row.try_get(column),
            Row::Sqlite(row) => row
                .try_get::<Option<i64>, _>(column)?
                .map(|v| {
                    DateTime::from_timestamp_micros(v)
                        .ok_or_else(|| decode_error(column, format!("invalid timestamp {v}")))
                })
                .transpose(),
        }
    }

    pub fn time(&self, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        self.opt_time(column)?
            .ok_or_else(|| decode_error(column, "unexpected NULL".to_string()))
    }
}

/// A column that holds something the store never writes.
pub(crate) fn decode_error(column: &str, what: String) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source: what.into(),
    }
}
