//! `switchyard-admin`: the database's operator CLI — migrate, accounts, API keys.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchyard_store::billing::{self, Decimal};
use switchyard_store::keys;
use uuid::Uuid;

/// Switchyard's admin CLI: migrate the database, create accounts, issue and revoke API keys.
#[derive(Parser)]
#[command(name = "switchyard-admin", version, about)]
struct Cli {
    /// Postgres URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true,
          default_value = switchyard_store::DEFAULT_DATABASE_URL, global = true)]
    database_url: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database if it does not exist, then apply every pending migration
    /// (idempotent).
    Migrate,
    /// Accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// API keys.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account.
    Create {
        /// The account id (1-64 ASCII letters, digits, '-', '_'); it names the account
        /// in every request.
        id: String,
        /// A display name (default: the id).
        #[arg(long)]
        name: Option<String>,
    },
    /// Set the account's monthly open-model spend limit in USD (UTC calendar month).
    /// Once the month's spend reaches it, new open-model requests get 402; alerts go
    /// out at 80 % and 100 %. `none` removes the limit.
    SetLimit {
        /// The account id.
        id: String,
        /// USD per month, an exact decimal (`250`, `99.50`), or `none`.
        #[arg(value_parser = parse_limit, allow_negative_numbers = true)]
        usd: Limit,
    },
    /// Show the account's spend limit and this month's open-model spend.
    Show {
        /// The account id.
        id: String,
    },
}

/// A spend limit argument: an amount, or `none`.
#[derive(Clone, Debug)]
struct Limit(Option<Decimal>);

fn parse_limit(text: &str) -> Result<Limit, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(Limit(None));
    }
    let usd = Decimal::from_str_exact(text.trim().trim_start_matches('$')).map_err(|e| {
        format!("'{text}' is not an amount in USD ({e}); e.g. 250 or 99.50, or none")
    })?;
    if usd.is_sign_negative() && !usd.is_zero() {
        return Err(format!("'{text}' is negative"));
    }
    Ok(Limit(Some(usd.normalize())))
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create an API key; prints it once on stdout (it is stored only as a hash).
    Create {
        /// The account the key belongs to.
        #[arg(long)]
        account: String,
        /// A label for the key.
        #[arg(long)]
        name: Option<String>,
    },
    /// List an account's keys (id, prefix, name, created, revoked); never secrets.
    List {
        /// The account.
        #[arg(long)]
        account: String,
    },
    /// Revoke a key by its id (see `key list`).
    Revoke {
        /// The key's id.
        id: Uuid,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "switchyard-admin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let url = cli.database_url.as_str();
    let mut out = std::io::stdout().lock();
    if let Command::Migrate = cli.command {
        let created = switchyard_store::create_and_migrate(url)
            .await
            .with_context(|| format!("migrating {}", redact(url)))?;
        if created {
            writeln!(
                out,
                "created database {}",
                switchyard_store::database_name(url)?
            )?;
        }
        writeln!(out, "migrations applied")?;
        return Ok(());
    }
    let db = switchyard_store::connect(url, false)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    match cli.command {
        Command::Migrate => {}
        Command::Account(AccountCommand::Create { id, name }) => {
            let account = keys::create_account(&db, &id, name.as_deref()).await?;
            writeln!(out, "created account {} ({})", account.id, account.name)?;
        }
        Command::Account(AccountCommand::SetLimit { id, usd }) => {
            billing::set_spend_limit(&db, &id, usd.0).await?;
            match usd.0 {
                Some(limit) => writeln!(out, "account {id}: monthly spend limit {limit} USD")?,
                None => writeln!(out, "account {id}: no spend limit")?,
            }
        }
        Command::Account(AccountCommand::Show { id }) => {
            let account = keys::find_account(&db, &id)
                .await?
                .ok_or_else(|| switchyard_store::Error::UnknownAccount(id.clone()))?;
            let month = billing::current_month();
            let spent = billing::month_spend(&db, &id, month).await?;
            let limit = billing::spend_limit(&db, &id).await?;
            writeln!(out, "account:      {} ({})", account.id, account.name)?;
            writeln!(
                out,
                "spend limit:  {}",
                limit.map_or_else(|| "none".to_string(), |l| format!("{l} USD per month"))
            )?;
            writeln!(
                out,
                "spent in {}: {} USD (open models; exact)",
                month.format("%Y-%m"),
                spent.normalize()
            )?;
        }
        Command::Key(KeyCommand::Create { account, name }) => {
            let (key, id) = keys::create_key(&db, &account, name.as_deref()).await?;
            writeln!(
                std::io::stderr().lock(),
                "created key {id} for account {account}. Store it now: it is not shown again."
            )?;
            writeln!(out, "{}", key.expose())?;
        }
        Command::Key(KeyCommand::List { account }) => {
            let list = keys::list_keys(&db, &account).await?;
            writeln!(
                out,
                "{:<36}  {:<16}  {:<20}  {:<25}  revoked",
                "id", "prefix", "name", "created"
            )?;
            for k in list {
                writeln!(
                    out,
                    "{:<36}  {:<16}  {:<20}  {:<25}  {}",
                    k.id,
                    format!("{}{}_…", keys::KEY_PREFIX, k.prefix),
                    k.name,
                    k.created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    k.revoked_at.map_or_else(
                        || "-".to_string(),
                        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                )?;
            }
        }
        Command::Key(KeyCommand::Revoke { id }) => {
            if keys::revoke_key(&db, id).await? {
                writeln!(out, "revoked key {id}")?;
            } else {
                writeln!(out, "key {id} was already revoked")?;
            }
        }
    }
    db.close().await?;
    Ok(())
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
