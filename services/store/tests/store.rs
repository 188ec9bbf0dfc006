//! The store against the real Postgres server, one fresh database per test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use sea_orm::{ConnectionTrait, EntityTrait, Statement};
use switchyard_store::entities::api_keys;
use switchyard_store::testing::TestDb;
use switchyard_store::{Error, keys};

#[tokio::test]
async fn migrate_is_idempotent() {
    let t = TestDb::new().await.unwrap();
    switchyard_store::migrate(&t.db).await.unwrap();
    switchyard_store::create_and_migrate(&t.url).await.unwrap();
    keys::create_account(&t.db, "acme", None).await.unwrap();
    // The index that makes the prefix lookup cheap (and unique) exists.
    let row =
        t.db.query_one(Statement::from_string(
            t.db.get_database_backend(),
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'idx_api_keys_prefix'",
        ))
        .await
        .unwrap()
        .unwrap();
    let def: String = row.try_get("", "indexdef").unwrap();
    assert!(def.contains("UNIQUE"), "{def}");
}

#[tokio::test]
async fn create_verify_revoke() {
    let t = TestDb::new().await.unwrap();
    keys::create_account(&t.db, "acme", Some("Acme Inc."))
        .await
        .unwrap();
    assert!(matches!(
        keys::create_account(&t.db, "acme", None).await,
        Err(Error::AccountExists(_))
    ));
    assert!(matches!(
        keys::create_account(&t.db, "bad id", None).await,
        Err(Error::InvalidAccountId(_))
    ));
    let (key, id) = keys::create_key(&t.db, "acme", Some("ci")).await.unwrap();
    assert!(key.expose().starts_with("sy_"));

    let verified = keys::verify(&t.db, key.expose()).await.unwrap().unwrap();
    assert_eq!(verified.account, "acme");
    assert_eq!(verified.key_id, id);

    let (other, _) = keys::create_key(&t.db, "acme", None).await.unwrap();
    let list = keys::list_keys(&t.db, "acme").await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].id, id);
    assert_eq!(list[0].name, "ci");
    assert_eq!(list[0].prefix, key.prefix());
    assert!(list.iter().all(|k| k.revoked_at.is_none()));

    assert!(keys::revoke_key(&t.db, id).await.unwrap());
    assert!(!keys::revoke_key(&t.db, id).await.unwrap());
    assert_eq!(keys::verify(&t.db, key.expose()).await.unwrap(), None);
    // The other key is untouched.
    assert!(keys::verify(&t.db, other.expose()).await.unwrap().is_some());
    let list = keys::list_keys(&t.db, "acme").await.unwrap();
    assert!(list[0].revoked_at.is_some());
    assert!(list[1].revoked_at.is_none());

    let unknown = uuid::Uuid::now_v7();
    assert!(matches!(
        keys::revoke_key(&t.db, unknown).await,
        Err(Error::UnknownKey(u)) if u == unknown
    ));
    assert!(matches!(
        keys::create_key(&t.db, "nobody", None).await,
        Err(Error::UnknownAccount(_))
    ));
    assert!(matches!(
        keys::list_keys(&t.db, "nobody").await,
        Err(Error::UnknownAccount(_))
    ));
}

#[tokio::test]
async fn only_the_hash_is_stored() {
    let t = TestDb::new().await.unwrap();
    keys::create_account(&t.db, "acme", None).await.unwrap();
    let (key, id) = keys::create_key(&t.db, "acme", None).await.unwrap();
    let row = api_keys::Entity::find_by_id(id)
        .one(&t.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.hash, keys::hash(key.expose()));
    assert_eq!(row.prefix, key.prefix());
    // No column of the row holds the key or its secret part, in any form.
    let secret = &key.expose()[12..];
    let dump =
        t.db.query_one(Statement::from_string(
            t.db.get_database_backend(),
            "SELECT row_to_json(k)::text AS j FROM api_keys k",
        ))
        .await
        .unwrap()
        .unwrap();
    let json: String = dump.try_get("", "j").unwrap();
    assert!(!json.contains(secret), "{json}");
    assert!(json.contains(key.prefix()));
}

#[tokio::test]
async fn right_prefix_wrong_secret_is_rejected() {
    let t = TestDb::new().await.unwrap();
    keys::create_account(&t.db, "acme", None).await.unwrap();
    let (key, _) = keys::create_key(&t.db, "acme", None).await.unwrap();
    let mut forged = key.expose().to_string();
    let last = forged.pop().unwrap();
    forged.push(if last == 'a' { 'b' } else { 'a' });
    assert_eq!(keys::verify(&t.db, &forged).await.unwrap(), None);
    assert_eq!(keys::verify(&t.db, "sy_nope").await.unwrap(), None);
    let unknown_prefix = format!("sy_zzzzzzzz_{}", &key.expose()[12..]);
    assert_eq!(keys::verify(&t.db, &unknown_prefix).await.unwrap(), None);
    assert!(keys::verify(&t.db, key.expose()).await.unwrap().is_some());
}

#[tokio::test]
async fn test_database_is_dropped() {
    let t = TestDb::new().await.unwrap();
    let name = t.name().to_string();
    let admin = switchyard_store::connect(
        &switchyard_store::with_database(&t.url, "postgres").unwrap(),
        false,
    )
    .await
    .unwrap();
    drop(t);
    let row = admin
        .query_one(Statement::from_string(
            admin.get_database_backend(),
            format!("SELECT count(*) AS n FROM pg_database WHERE datname = '{name}'"),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<i64>("", "n").unwrap(), 0);
}
