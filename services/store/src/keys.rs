//! Accounts and API keys: `sy_<prefix>_<secret>`, stored as the prefix plus SHA-256
//! of the whole key. See the crate docs for the decisions.

use chrono::{DateTime, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, SqlErr,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::Error;
use crate::entities::{accounts, api_keys};

/// An account id, as it appears in request envelopes.
pub type AccountId = String;

/// Every Switchyard key starts with this.
pub const KEY_PREFIX: &str = "sy_";
/// Length of the public prefix (base62).
pub const PREFIX_LEN: usize = 8;
/// Length of the secret part (base62, ≈238 bits).
pub const SECRET_LEN: usize = 40;

/// A freshly generated key: shown to its owner once, never stored. `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainKey(String);

impl PlainKey {
    /// The whole key, to hand to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its public prefix (the 8 characters after `sy_`).
    pub fn prefix(&self) -> &str {
        &self.0[KEY_PREFIX.len()..KEY_PREFIX.len() + PREFIX_LEN]
    }
}

impl std::fmt::Debug for PlainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PlainKey({KEY_PREFIX}{}_…)", self.prefix())
    }
}

/// Generates a random key `sy_<8 base62>_<40 base62>`.
pub fn generate() -> PlainKey {
    let mut rng = rand::rng();
    let mut part = |n: usize| -> String {
        (&mut rng)
            .sample_iter(&Alphanumeric)
            .take(n)
            .map(char::from)
            .collect()
    };
    let prefix = part(PREFIX_LEN);
    let secret = part(SECRET_LEN);
    PlainKey(format!("{KEY_PREFIX}{prefix}_{secret}"))
}

/// The prefix of a presented key when it has the shape of one of ours.
pub fn parse_prefix(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(KEY_PREFIX)?;
    let (prefix, secret) = rest.split_once('_')?;
    let ok = prefix.len() == PREFIX_LEN
        && secret.len() >= 32
        && prefix.bytes().all(|b| b.is_ascii_alphanumeric())
        && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then_some(prefix)
}

/// SHA-256 of the whole key: what is stored.
pub fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// An API key as listed: never the secret, nor its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: Uuid,
    pub account_id: AccountId,
    /// The public prefix, `sy_<prefix>_…`.
    pub prefix: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<api_keys::Model> for KeyInfo {
    fn from(m: api_keys::Model) -> Self {
        Self {
            id: m.id,
            account_id: m.account_id,
            prefix: m.prefix,
            name: m.name,
            created_at: m.created_at,
            revoked_at: m.revoked_at,
        }
    }
}

/// Who a valid key belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedKey {
    pub account: AccountId,
    pub key_id: Uuid,
}

fn check_account_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidAccountId(id.to_string()))
    }
}

/// Creates account `id` (its name defaults to the id).
pub async fn create_account(
    db: &impl ConnectionTrait,
    id: &str,
    name: Option<&str>,
) -> Result<accounts::Model, Error> {
    check_account_id(id)?;
    let model = accounts::ActiveModel {
        id: Set(id.to_string()),
        name: Set(name.unwrap_or(id).to_string()),
        created_at: Set(Utc::now()),
    };
    match model.insert(db).await {
        Ok(m) => Ok(m),
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            Err(Error::AccountExists(id.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// The account, if it exists.
pub async fn find_account(
    db: &impl ConnectionTrait,
    id: &str,
) -> Result<Option<accounts::Model>, Error> {
    Ok(accounts::Entity::find_by_id(id.to_string()).one(db).await?)
}

/// Creates a key for `account`: returns the key (show it once; it is not stored) and
/// its id.
pub async fn create_key(
    db: &impl ConnectionTrait,
    account: &str,
    name: Option<&str>,
) -> Result<(PlainKey, Uuid), Error> {
    if find_account(db, account).await?.is_none() {
        return Err(Error::UnknownAccount(account.to_string()));
    }
    // 62^8 prefixes: a collision is rare, but the unique index would reject it.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let key = generate();
        let id = Uuid::now_v7();
        let model = api_keys::ActiveModel {
            id: Set(id),
            account_id: Set(account.to_string()),
            prefix: Set(key.prefix().to_string()),
            hash: Set(hash(key.expose())),
            name: Set(name.unwrap_or_default().to_string()),
            created_at: Set(Utc::now()),
            revoked_at: Set(None),
        };
        match api_keys::Entity::insert(model).exec(db).await {
            Ok(_) => return Ok((key, id)),
            Err(e)
                if attempts < 5
                    && matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) =>
            {
                continue;
            }
            Err(e) if matches!(e.sql_err(), Some(SqlErr::ForeignKeyConstraintViolation(_))) => {
                return Err(Error::UnknownAccount(account.to_string()));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Checks a presented key: `Ok(None)` when it is malformed, unknown, wrong or revoked;
/// `Err` only when the database could not answer.
pub async fn verify(
    db: &impl ConnectionTrait,
    presented: &str,
) -> Result<Option<VerifiedKey>, Error> {
    let Some(prefix) = parse_prefix(presented) else {
        return Ok(None);
    };
    let Some(row) = api_keys::Entity::find()
        .filter(api_keys::Column::Prefix.eq(prefix))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let matches: bool = hash(presented).ct_eq(&row.hash).into();
    if !matches || row.revoked_at.is_some() {
        return Ok(None);
    }
    Ok(Some(VerifiedKey {
        account: row.account_id,
        key_id: row.id,
    }))
}

/// Revokes key `id`. Revoking a revoked key is a no-op (returns `false`).
pub async fn revoke_key(db: &impl ConnectionTrait, id: Uuid) -> Result<bool, Error> {
    let done = api_keys::Entity::update_many()
        .col_expr(api_keys::Column::RevokedAt, Expr::value(Utc::now()))
        .filter(api_keys::Column::Id.eq(id))
        .filter(api_keys::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    if done.rows_affected == 1 {
        announce_revocation(db, id).await?;
        return Ok(true);
    }
    match api_keys::Entity::find_by_id(id).one(db).await? {
        Some(_) => Ok(false),
        None => Err(Error::UnknownKey(id)),
    }
}

/// The Postgres channel on which a key's revocation is announced (payload: the key's
/// id), so that every ingress drops the key from its cache at once instead of trusting
/// it until the cache entry expires ([`watch_revocations`]).
pub const REVOKED_CHANNEL: &str = "switchyard_key_revoked";

/// `NOTIFY` [`REVOKED_CHANNEL`] with the key's id (inside a transaction it is sent on
/// commit).
async fn announce_revocation(db: &impl ConnectionTrait, id: Uuid) -> Result<(), Error> {
    db.execute(sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [REVOKED_CHANNEL.into(), id.to_string().into()],
    ))
    .await?;
    Ok(())
}

/// What [`watch_revocations`] tells its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// This key was revoked.
    Key(Uuid),
    /// Announcements may have been missed (the connection was lost and is back, or
    /// this is the first connection): forget every cached key.
    Unknown,
}

/// Listens on [`REVOKED_CHANNEL`] of the database at `url` until `shutdown`, calling
/// `on_revoked` for each announcement. A lost connection is retried every 2 s; after
/// each (re)connection `on_revoked(Revoked::Unknown)` is called, since announcements
/// made meanwhile were missed.
pub async fn watch_revocations(
    url: &str,
    shutdown: tokio_util::sync::CancellationToken,
    on_revoked: impl Fn(Revoked),
) {
    use sea_orm::sqlx::postgres::PgListener;
    const RETRY: std::time::Duration = std::time::Duration::from_secs(2);
    'connect: loop {
        let listener = async {
            let mut l = PgListener::connect(url).await?;
            l.listen(REVOKED_CHANNEL).await?;
            Ok::<_, sea_orm::sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            l = listener => l,
            () = shutdown.cancelled() => return,
        };
        let Ok(l) = listener.as_mut() else {
            if let Err(e) = &listener {
                tracing::warn!(error = %e, "cannot listen for key revocations; retrying");
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => continue 'connect,
                () = shutdown.cancelled() => return,
            }
        };
        on_revoked(Revoked::Unknown);
        loop {
            let next = tokio::select! {
                n = l.try_recv() => n,
                () = shutdown.cancelled() => return,
            };
            match next {
                Ok(Some(n)) => match Uuid::try_parse(n.payload()) {
                    Ok(id) => on_revoked(Revoked::Key(id)),
                    Err(_) => on_revoked(Revoked::Unknown),
                },
                // The connection was lost; the next call reconnects.
                Ok(None) => on_revoked(Revoked::Unknown),
                Err(e) => {
                    tracing::warn!(error = %e, "lost the key-revocation listener; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => continue 'connect,
                        () = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// The account's keys, oldest first, revoked ones included; never secrets.
pub async fn list_keys(db: &impl ConnectionTrait, account: &str) -> Result<Vec<KeyInfo>, Error> {
    if find_account(db, account).await?.is_none() {
        return Err(Error::UnknownAccount(account.to_string()));
    }
    let rows = api_keys::Entity::find()
        .filter(api_keys::Column::AccountId.eq(account))
        .order_by_asc(api_keys::Column::CreatedAt)
        .order_by_asc(api_keys::Column::Id)
        .all(db)
        .await?;
    Ok(rows.into_iter().map(KeyInfo::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse() {
        let k = generate();
        assert_eq!(k.expose().len(), 3 + PREFIX_LEN + 1 + SECRET_LEN);
        assert_eq!(parse_prefix(k.expose()), Some(k.prefix()));
        assert_ne!(generate(), k);
        assert!(!format!("{k:?}").contains(&k.expose()[12..]));
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        assert_eq!(parse_prefix("sy-dev-0123"), None);
        assert_eq!(
            parse_prefix("sy_abc_0123456789012345678901234567890123"),
            None
        );
        assert_eq!(parse_prefix("sy_abcdefgh_short"), None);
        assert_eq!(
            parse_prefix("sy_abcdefgh_01234567890123456789012345678901-"),
            None
        );
        assert_eq!(
            parse_prefix("sy_abcdefgh_01234567890123456789012345678901"),
            Some("abcdefgh")
        );
    }

    #[test]
    fn hash_is_sha256() {
        assert_eq!(hash("abc").len(), 32);
        assert_eq!(hash("abc")[..4], [0xba, 0x78, 0x16, 0xbf]);
    }
}
