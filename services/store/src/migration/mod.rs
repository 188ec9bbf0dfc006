//! The sea-orm [`Migrator`]: every schema change, in order. Applied by
//! `switchyard-admin migrate` (which `just up` runs) and by the test databases.
//! Migrations are only ever appended; an applied one is never edited.

use sea_orm_migration::prelude::*;

mod m20261122_000001_accounts_and_api_keys;
mod m20261201_000002_billing;

/// All migrations of the Switchyard database.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_accounts_and_api_keys::Migration),
            Box::new(m20261201_000002_billing::Migration),
        ]
    }
}
