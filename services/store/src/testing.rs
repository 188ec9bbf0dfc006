//! A fresh database per test on the real Postgres server: `CREATE DATABASE
//! sy_test_<random>` through the server's `postgres` database, migrated by the
//! [`Migrator`](crate::Migrator), dropped (`WITH (FORCE)`) when the [`TestDb`] is
//! dropped. The server is `DATABASE_URL`'s (default: the local one); the database it
//! names is never touched.

use sea_orm::{ConnectionTrait, DatabaseConnection};

use crate::Error;

/// A migrated database of one test's own.
#[derive(Debug)]
pub struct TestDb {
    /// Its URL, for code under test that connects by itself.
    pub url: String,
    /// A connection to it.
    pub db: DatabaseConnection,
    name: String,
    admin_url: String,
}

impl TestDb {
    /// Creates and migrates a database; fails (never skips) when Postgres is down.
    pub async fn new() -> Result<Self, Error> {
        let base =
            std::env::var("DATABASE_URL").unwrap_or_else(|_| crate::DEFAULT_DATABASE_URL.into());
        let name = format!("sy_test_{:016x}", rand::random::<u64>());
        let admin_url = crate::with_database(&base, "postgres")?;
        crate::create_database(&base, &name).await?;
        let url = crate::with_database(&base, &name)?;
        let db = crate::connect(&url, false).await?;
        crate::migrate(&db).await?;
        Ok(Self {
            url,
            db,
            name,
            admin_url,
        })
    }

    /// Its name (`sy_test_…`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let admin = crate::connect(&admin_url, false)
                    .await
                    .map_err(|e| e.to_string())?;
                admin
                    .execute_unprepared(&sql)
                    .await
                    .map_err(|e| e.to_string())?;
                admin.close().await.map_err(|e| e.to_string())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            tracing::warn!(database = %self.name, "could not drop the test database");
        }
    }
}
