//! The `switchyard-admin` binary against a database of its own.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::process::{Command, Output};

use switchyard_store::testing::TestDb;

fn admin(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard-admin"))
        .env("DATABASE_URL", url)
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn create_list_revoke() {
    let t = TestDb::new().await.unwrap();

    let out = admin(&t.url, &["migrate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = admin(&t.url, &["account", "create", "acme", "--name", "Acme"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("created account acme"));

    let out = admin(
        &t.url,
        &["key", "create", "--account", "acme", "--name", "ci"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key = text(&out.stdout).trim().to_string();
    assert!(key.starts_with("sy_") && key.len() == 52, "{key}");
    assert!(text(&out.stderr).contains("not shown again"));
    let verified = switchyard_store::keys::verify(&t.db, &key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(verified.account, "acme");

    let out = admin(&t.url, &["key", "list", "--account", "acme"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list = text(&out.stdout);
    let id = verified.key_id.to_string();
    assert!(list.contains(&id), "{list}");
    assert!(list.contains(&key[..11]), "{list}");
    assert!(
        !list.contains(&key[12..]),
        "the list shows a secret: {list}"
    );

    let out = admin(&t.url, &["key", "revoke", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("revoked key"));
    assert_eq!(
        switchyard_store::keys::verify(&t.db, &key).await.unwrap(),
        None
    );
    let list = text(&admin(&t.url, &["key", "list", "--account", "acme"]).stdout);
    let line = list.lines().find(|l| l.contains(&id)).unwrap();
    assert!(!line.trim_end().ends_with('-'), "{line}");
}

#[tokio::test]
async fn errors_exit_non_zero_with_a_message() {
    let t = TestDb::new().await.unwrap();

    let out = admin(&t.url, &["key", "create", "--account", "nobody"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("no account 'nobody'"),
        "{}",
        text(&out.stderr)
    );

    let out = admin(&t.url, &["key", "list", "--account", "nobody"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no account 'nobody'"));

    let out = admin(
        &t.url,
        &["key", "revoke", "0190b1c2-0000-7000-8000-000000000000"],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no API key"));

    let out = admin(&t.url, &["key", "revoke", "not-a-uuid"]);
    assert_eq!(out.status.code(), Some(2));

    admin(&t.url, &["account", "create", "acme"]);
    let out = admin(&t.url, &["account", "create", "acme"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("exists already"));

    let out = admin(
        "postgres://postgres@127.0.0.1:1/x",
        &["key", "list", "--account", "a"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("connecting to"),
        "{}",
        text(&out.stderr)
    );

    for args in [
        &["--help"][..],
        &["key", "create", "--help"],
        &["account", "--help"],
    ] {
        let out = admin(&t.url, args);
        assert!(out.status.success());
        assert!(text(&out.stdout).contains("Usage"));
    }
}

#[tokio::test]
async fn migrate_creates_a_missing_database() {
    let t = TestDb::new().await.unwrap();
    let name = format!("sy_test_{:016x}", rand::random::<u64>());
    let url = switchyard_store::with_database(&t.url, &name).unwrap();
    let out = admin(&url, &["migrate"]);
    let created = out.status.success();
    // Clean up before asserting, so a failure leaves nothing behind.
    let admin_db = switchyard_store::connect(
        &switchyard_store::with_database(&t.url, "postgres").unwrap(),
        false,
    )
    .await
    .unwrap();
    sea_orm::ConnectionTrait::execute_unprepared(
        &admin_db,
        &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
    )
    .await
    .unwrap();
    assert!(created, "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("created database {name}")));
}

#[tokio::test]
async fn spend_limits_are_set_shown_and_removed() {
    let t = TestDb::new().await.unwrap();
    let out = admin(&t.url, &["account", "create", "acme"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = admin(&t.url, &["account", "set-limit", "acme", "99.50"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("monthly spend limit 99.5 USD"));
    let limit = switchyard_store::billing::spend_limit(&t.db, "acme")
        .await
        .unwrap();
    assert_eq!(limit.map(|l| l.to_string()).as_deref(), Some("99.5"));

    let out = admin(&t.url, &["account", "show", "acme"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("99.5 USD per month"), "{shown}");
    assert!(shown.contains(": 0 USD"), "{shown}");

    // Over the limit at once: the ingress's query says so.
    let out = admin(&t.url, &["account", "set-limit", "acme", "0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let month = switchyard_store::billing::current_month();
    let over = switchyard_store::billing::over_limit(&t.db, month)
        .await
        .unwrap();
    assert_eq!(over.len(), 1);
    assert_eq!(over[0].account, "acme");

    let out = admin(&t.url, &["account", "set-limit", "acme", "none"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        switchyard_store::billing::spend_limit(&t.db, "acme")
            .await
            .unwrap()
            .is_none()
    );

    for (args, says) in [
        (&["account", "set-limit", "acme", "-5"][..], "negative"),
        (
            &["account", "set-limit", "acme", "lots"][..],
            "not an amount",
        ),
        (
            &["account", "set-limit", "nobody", "5"][..],
            "no account 'nobody'",
        ),
    ] {
        let out = admin(&t.url, args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}
