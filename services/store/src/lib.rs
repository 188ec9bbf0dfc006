//! Switchyard's Postgres store, through sea-orm: the one crate that owns the
//! database schema — accounts and API keys, and billing's tables (usage events, daily
//! aggregates, monthly spend, spend limits and alerts), so the billing service, the
//! report CLI and the ingress share one set of entities and one migrator.
//!
//! - [`entities`]: the sea-orm entities, one module per table.
//! - [`migration`]: the [`Migrator`]; `switchyard-admin migrate` applies it.
//! - [`keys`]: accounts and API keys — create, verify, revoke, list.
//! - [`billing`]: spend limits and the month's spend (the ingress's 402 check).
//! - `testing` (feature `testing`): a fresh, migrated database per test.
//!
//! Decisions:
//! - **sea-orm 1.1**, not 2.0: 2.0 needs Rust 1.94, the workspace promises 1.88.
//! - **Key format** `sy_<prefix>_<secret>`: an 8-character base62 prefix (public,
//!   unique, the lookup index, fine to show and log) and a 40-character base62 secret
//!   (≈238 random bits). Only the prefix and SHA-256 of the whole key are stored; the
//!   key is shown once when created. A fast hash is enough for a random secret of this
//!   size (nothing to brute-force, unlike passwords); the hash is compared in constant
//!   time.
//! - **Revocation** sets `revoked_at`; the row stays, so usage and audits can still
//!   name the key. A revoked key never verifies again (the ingress's positive cache
//!   may accept it for up to its TTL, 30 s by default).
//! - **Account ids** are chosen by the operator: 1–64 ASCII letters, digits, `-`, `_`.
//!   They travel in every request envelope.
//! - `switchyard-admin migrate` creates the database when it does not exist (through
//!   the server's `postgres` database), then applies the migrations.

pub mod billing;
pub mod entities;
pub mod keys;
pub mod migration;
pub mod spend;
#[cfg(feature = "testing")]
pub mod testing;

use std::time::Duration;

pub use migration::Migrator;
pub use sea_orm::{self, DatabaseConnection, DbErr};
pub use sea_orm_migration::MigratorTrait;

/// The database the design names when `DATABASE_URL` is unset.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/switchyard";

/// What went wrong in the store; each variant says what the caller can do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Postgres failed or is unreachable: retry later, or check `DATABASE_URL`.
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    #[error("no account '{0}': create it first (switchyard-admin account create {0})")]
    UnknownAccount(String),
    #[error("account '{0}' exists already")]
    AccountExists(String),
    #[error("no API key with id {0}")]
    UnknownKey(uuid::Uuid),
    #[error("invalid account id '{0}': use 1-64 ASCII letters, digits, '-' or '_'")]
    InvalidAccountId(String),
    #[error("invalid database URL: {0}")]
    BadUrl(String),
    #[error("invalid spend limit '{0}': give a non-negative amount of USD")]
    InvalidLimit(String),
}

/// Connects to `url`. With `lazy`, no connection is made until the first query (a
/// service can start while Postgres is down and answer 503 until it is back).
pub async fn connect(url: &str, lazy: bool) -> Result<DatabaseConnection, Error> {
    let mut options = sea_orm::ConnectOptions::new(url.to_string());
    options
        .max_connections(16)
        .min_connections(0)
        .connect_timeout(Duration::from_secs(3))
        .acquire_timeout(Duration::from_secs(3))
        // Statements would be logged at info with their parameters.
        .sqlx_logging(false)
        .connect_lazy(lazy);
    Ok(sea_orm::Database::connect(options).await?)
}

/// Applies every pending migration (a no-op when the schema is current).
pub async fn migrate(db: &DatabaseConnection) -> Result<(), Error> {
    Migrator::up(db, None).await?;
    Ok(())
}

/// The database name in a `postgres://…/<name>?…` URL.
pub fn database_name(url: &str) -> Result<String, Error> {
    let (_, path, _) = split_url(url)?;
    if path.is_empty() {
        return Err(Error::BadUrl("no database name in the URL".into()));
    }
    Ok(path.to_string())
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> Result<String, Error> {
    let (head, _, tail) = split_url(url)?;
    Ok(format!("{head}/{name}{tail}"))
}

/// (`scheme://authority`, database, `?query` or "").
fn split_url(url: &str) -> Result<(&str, &str, &str), Error> {
    let Some(scheme_end) = url.find("://") else {
        return Err(Error::BadUrl("expected postgres://…".into()));
    };
    let after = scheme_end + 3;
    let query_at = url[after..].find('?').map_or(url.len(), |i| after + i);
    let path_at = url[after..query_at]
        .find('/')
        .map_or(query_at, |i| after + i);
    let path = url.get(path_at + 1..query_at).unwrap_or_default();
    Ok((&url[..path_at], path, &url[query_at..]))
}

/// Is this the "database does not exist" error (SQLSTATE 3D000)?
pub fn is_missing_database(e: &Error) -> bool {
    match e {
        Error::Db(DbErr::Conn(sea_orm::RuntimeErr::SqlxError(sea_orm::sqlx::Error::Database(
            d,
        )))) => d.code().as_deref() == Some("3D000"),
        _ => false,
    }
}

/// Creates database `name` through the server's `postgres` database. `name` must be
/// a plain identifier (letters, digits, `_`, `-`).
pub async fn create_database(url: &str, name: &str) -> Result<(), Error> {
    check_db_name(name)?;
    let admin = connect(&with_database(url, "postgres")?, false).await?;
    sea_orm::ConnectionTrait::execute_unprepared(&admin, &format!("CREATE DATABASE \"{name}\""))
        .await?;
    admin.close().await?;
    Ok(())
}

fn check_db_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Error::BadUrl(format!(
            "unsupported database name '{name}' (letters, digits, '_', '-')"
        )));
    }
    Ok(())
}

/// Connects to `url`, creating its database first when it does not exist, and applies
/// the migrations. What `switchyard-admin migrate` does.
pub async fn create_and_migrate(url: &str) -> Result<bool, Error> {
    let (db, created) = match connect(url, false).await {
        Ok(db) => (db, false),
        Err(e) if is_missing_database(&e) => {
            create_database(url, &database_name(url)?).await?;
            (connect(url, false).await?, true)
        }
        Err(e) => return Err(e),
    };
    migrate(&db).await?;
    db.close().await?;
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = "postgres://postgres@127.0.0.1:5432/switchyard?sslmode=disable";
        assert_eq!(database_name(u).unwrap(), "switchyard");
        assert_eq!(
            with_database(u, "postgres").unwrap(),
            "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h", "x").unwrap(),
            "postgres://h/x"
        );
        assert!(database_name("postgres://h:5432").is_err());
        assert!(database_name("nonsense").is_err());
        assert!(check_db_name("a\"b").is_err());
    }
}
