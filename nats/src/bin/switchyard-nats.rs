//! `switchyard-nats apply`: creates or updates every stream, consumer and KV bucket.
//! `switchyard-nats batch-user …`: manages the batch users in nats-server's users file
//! (the permission model is in `nats/README.md`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Args, Parser, Subcommand};
use rand::RngCore;
use switchyard_nats::{Definitions, apply_recreating};

/// Applies Switchyard's NATS definitions (streams, consumers, KV buckets), idempotently,
/// and manages the nats-server users of batch accounts.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// NATS server URL. Credentials in it (`nats://user:password@host:port`) are used
    /// to log in; they are never printed.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true,
        hide_env_values = true
    )]
    nats_url: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create or update everything; safe to run again.
    Apply {
        /// Read definitions from this directory (the repo's `nats/`) instead of the
        /// copies compiled into this binary.
        #[arg(long, env = "SWITCHYARD_NATS_DIR")]
        dir: Option<PathBuf>,
        /// Replicas for every stream and bucket (3 on a production cluster).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
        replicas: u8,
        /// Delete and recreate these streams first (their messages are lost), for
        /// settings NATS cannot change in place, e.g. a stream's persist mode.
        #[arg(long, value_delimiter = ',')]
        recreate: Vec<String>,
    },
    /// The nats-server users of batch accounts (each may publish its own batch requests
    /// and read its own results, nothing else). Edits the users file only: reload
    /// nats-server afterwards (`nats-server --signal reload=<pid>`, or SIGHUP).
    #[command(name = "batch-user", subcommand)]
    BatchUser(BatchUserCmd),
}

#[derive(Debug, Subcommand)]
enum BatchUserCmd {
    /// Create the users file with only the internal `switchyard` user; on an existing
    /// file, rewrite every batch user's permissions to the current set (passwords kept).
    Init {
        #[command(flatten)]
        file: UsersFileArg,
    },
    /// Add the user of a batch account and print its new password once, on stdout.
    Add {
        /// The account id (as in `batch.<account-token>.<job>`; escaped into a subject
        /// token like every account id). The NATS user name is that token.
        #[arg(long)]
        account: String,
        /// The user exists already: give it a new password (the old one stops working
        /// when nats-server reloads).
        #[arg(long)]
        rotate: bool,
        #[command(flatten)]
        file: UsersFileArg,
    },
    /// Remove the user of a batch account (its connections are closed on reload).
    Remove {
        /// The account id.
        #[arg(long)]
        account: String,
        #[command(flatten)]
        file: UsersFileArg,
    },
    /// List the batch users (their user names, one a line).
    List {
        #[command(flatten)]
        file: UsersFileArg,
    },
}

#[derive(Debug, Args)]
struct UsersFileArg {
    /// The users file nats-server includes (infra/nats/single-auth.conf includes
    /// nats/auth/batch-users.conf).
    #[arg(
        long,
        env = "SWITCHYARD_NATS_USERS_FILE",
        default_value = "nats/auth/batch-users.conf"
    )]
    users_file: PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    switchyard_telemetry::init_tracing();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            switchyard_telemetry::report_error(&e);
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Apply {
            dir,
            replicas,
            recreate,
        } => {
            let defs = match &dir {
                Some(dir) => Definitions::load(dir)?,
                None => Definitions::embedded()?,
            }
            .with_replicas(usize::from(replicas));
            let client = connect(&cli.nats_url).await?;
            let js = async_nats::jetstream::new(client);
            let applied = apply_recreating(&js, &defs, &recreate).await?;
            tracing::info!(
                streams = applied.streams.len(),
                consumers = applied.consumers.len(),
                kv = applied.kv.len(),
                "NATS definitions applied"
            );
        }
        Cmd::BatchUser(cmd) => batch_user(cmd)?,
    }
    Ok(())
}

/// Connects with the URL's user and password (see [`switchyard_nats::connect`]).
async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    Ok(switchyard_nats::connect(url, "switchyard-nats").await?)
}

// --------------------------------------------------------------------------- batch users

/// The first line of every users file this tool writes; it refuses to touch others.
const MARKER: &str = "# switchyard-nats batch-user users file v1";
/// The internal user of every Switchyard service (full access).
use switchyard_nats::INTERNAL_USER;
/// nats-server's recommended minimum; each login costs one hash (~50 ms at 11).
const BCRYPT_COST: u32 = 11;

/// What a batch user may do, for its account token `t` (why each: nats/README.md).
fn permissions(t: &str) -> (Vec<String>, Vec<String>) {
    let publish = vec![
        // Its batch requests (JetStream publish: the PubAck comes to its inbox).
        format!("batch.{t}.>"),
        // Consumers on its own results only: the server checks that the filter in the
        // body is the one in the subject.
        format!("$JS.API.CONSUMER.CREATE.RESULTS.*.res.{t}.>"),
        // One result by subject (the subject form only takes an empty body).
        format!("$JS.API.DIRECT.GET.RESULTS.res.{t}.>"),
        // Flow-control replies of its push (ordered) consumers.
        "$JS.FC.RESULTS.>".to_string(),
    ];
    // PubAcks, API replies and its push consumers' deliveries.
    let subscribe = vec![format!("{}.>", inbox_prefix(t))];
    (publish, subscribe)
}

/// The inbox prefix a batch user must connect with (`_INBOX_<token>`).
fn inbox_prefix(token: &str) -> String {
    format!("_INBOX_{token}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct BatchUser {
    token: String,
    hash: String,
}

fn batch_user(cmd: BatchUserCmd) -> anyhow::Result<()> {
    match cmd {
        BatchUserCmd::Init { file } => {
            let path = &file.users_file;
            let users = read_users(path)?.unwrap_or_default();
            write_users(path, &users)?;
            note(&format!(
                "{}: {} batch user(s); reload nats-server to apply",
                path.display(),
                users.len()
            ))?;
        }
        BatchUserCmd::Add {
            account,
            rotate,
            file,
        } => {
            let path = &file.users_file;
            let token = account_token(&account)?;
            let mut users = read_users(path)?.unwrap_or_default();
            let exists = users.iter().any(|u| u.token == token);
            match (exists, rotate) {
                (true, false) => bail!(
                    "batch user {token} exists in {}; nothing changed (--rotate gives it a new password)",
                    path.display()
                ),
                (false, true) => bail!(
                    "no batch user {token} in {} to rotate (add it without --rotate)",
                    path.display()
                ),
                _ => {}
            }
            let password = new_password();
            let hash = bcrypt::hash_with_result(&password, BCRYPT_COST)
                .context("cannot hash the password")?
                .format_for_version(bcrypt::Version::TwoA);
            users.retain(|u| u.token != token);
            users.push(BatchUser {
                token: token.clone(),
                hash,
            });
            write_users(path, &users)?;
            // The password once, alone on stdout; everything else on stderr.
            writeln!(std::io::stdout().lock(), "{password}")?;
            note(&format!(
                "{} batch user {token} in {}: it connects as user {token} with the password \
                 above (shown once) and inbox prefix {}. Reload nats-server to apply.",
                if rotate { "new password for" } else { "added" },
                path.display(),
                inbox_prefix(&token)
            ))?;
        }
        BatchUserCmd::Remove { account, file } => {
            let path = &file.users_file;
            let token = account_token(&account)?;
            let mut users = read_users(path)?.unwrap_or_default();
            let before = users.len();
            users.retain(|u| u.token != token);
            if users.len() == before {
                bail!("no batch user {token} in {}", path.display());
            }
            write_users(path, &users)?;
            note(&format!(
                "removed batch user {token} from {}; reload nats-server to apply",
                path.display()
            ))?;
        }
        BatchUserCmd::List { file } => {
            let users = read_users(&file.users_file)?.unwrap_or_default();
            let mut out = std::io::stdout().lock();
            for u in users {
                writeln!(out, "{}", u.token)?;
            }
        }
    }
    Ok(())
}

fn note(text: &str) -> anyhow::Result<()> {
    writeln!(std::io::stderr().lock(), "{text}")?;
    Ok(())
}

/// The account's subject token, which is also its NATS user name.
fn account_token(account: &str) -> anyhow::Result<String> {
    let token = schemas::subjects::model_token(account)
        .map_err(|e| anyhow::anyhow!("account id {account:?}: {e}"))?;
    if token == INTERNAL_USER {
        bail!("{INTERNAL_USER:?} is the internal user's name, not a batch account");
    }
    Ok(token)
}

/// 32 random bytes, URL-safe base64 (43 characters).
fn new_password() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn render(users: &[BatchUser]) -> String {
    let mut out = format!(
        "{MARKER}\n\
         # Written by `switchyard-nats batch-user`; change it with that tool, not by hand.\n\
         # nats-server includes it (infra/nats/single-auth.conf); after a change, reload it:\n\
         #   nats-server --signal reload=<pid>   (or: kill -HUP <pid>)\n\
         # Permissions and why: nats/README.md.\n\
         authorization {{\n  users = [\n\
         \x20   # Every Switchyard service: full access. The password comes from the server's\n\
         \x20   # environment (nats-server fails to start when it is unset).\n\
         \x20   {{ user: \"{INTERNAL_USER}\", password: $SWITCHYARD_NATS_PASSWORD }}\n"
    );
    let sorted: BTreeMap<&str, &str> = users
        .iter()
        .map(|u| (u.token.as_str(), u.hash.as_str()))
        .collect();
    for (token, hash) in sorted {
        let (publish, subscribe) = permissions(token);
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "    # batch account {token}\n    {{ user: \"{token}\", password: \"{hash}\", \
             permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }} }} }}\n",
            list(&publish),
            list(&subscribe)
        ));
    }
    out.push_str("  ]\n}\n");
    out
}

/// The batch users of a file this tool wrote (`None` when there is no file).
fn parse(text: &str) -> anyhow::Result<Vec<BatchUser>> {
    if text.lines().next() != Some(MARKER) {
        bail!(
            "not a users file written by `switchyard-nats batch-user` (first line is not {MARKER:?}); refusing to change it"
        );
    }
    let mut users = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("{ user: \"") else {
            continue;
        };
        let bad = || anyhow::anyhow!("users file line {}: not an entry this tool wrote", n + 1);
        let (user, rest) = rest.split_once('"').ok_or_else(bad)?;
        if user == INTERNAL_USER {
            continue;
        }
        let rest = rest.strip_prefix(", password: \"").ok_or_else(bad)?;
        let (hash, _) = rest.split_once('"').ok_or_else(bad)?;
        if schemas::subjects::model_id_from_token(user).is_none() {
            bail!(
                "users file line {}: {user:?} is not an account token",
                n + 1
            );
        }
        if !hash.starts_with("$2") || hash.contains(char::is_whitespace) {
            bail!(
                "users file line {}: the password of {user} is not a bcrypt hash",
                n + 1
            );
        }
        users.push(BatchUser {
            token: user.to_string(),
            hash: hash.to_string(),
        });
    }
    Ok(users)
}

fn read_users(path: &Path) -> anyhow::Result<Option<Vec<BatchUser>>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text)
            .with_context(|| format!("{}", path.display()))
            .map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Replaces the file at once (write a sibling, then rename): nats-server never reads
/// half a file. A new file is 0600; an existing file keeps its mode.
fn write_users(path: &Path, users: &[BatchUser]) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o600);
    let name = path
        .file_name()
        .context("the users file path has no file name")?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(render(users).as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_then_parse_gives_the_same_users() {
        let users = vec![
            BatchUser {
                token: "globex".into(),
                hash: "$2a$11$abcdefghijklmnopqrstuu0123456789ABCDEFGHIJKLMNOPQRSTU".into(),
            },
            BatchUser {
                token: "a_2Eb-c".into(),
                hash: "$2a$11$zyxwvutsrqponmlkjihgfe0123456789ABCDEFGHIJKLMNOPQRSTU".into(),
            },
        ];
        let text = render(&users);
        let mut back = parse(&text).unwrap();
        back.sort_by(|a, b| a.token.cmp(&b.token));
        let mut want = users.clone();
        want.sort_by(|a, b| a.token.cmp(&b.token));
        assert_eq!(back, want);
        assert!(text.contains("{ user: \"switchyard\", password: $SWITCHYARD_NATS_PASSWORD }"));
        assert!(text.contains("\"batch.globex.>\""));
        assert!(text.contains("\"$JS.API.CONSUMER.CREATE.RESULTS.*.res.a_2Eb-c.>\""));
        assert!(text.contains("\"_INBOX_a_2Eb-c.>\""));
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let err = parse("authorization { users = [] }\n").unwrap_err();
        assert!(err.to_string().contains("refusing"), "{err}");
    }

    #[test]
    fn a_user_that_is_not_a_token_is_refused() {
        let text = format!("{MARKER}\n    {{ user: \"a.b\", password: \"$2a$11$x\" }}\n");
        assert!(parse(&text).is_err());
    }

    #[test]
    fn account_ids_become_tokens_and_the_internal_name_is_reserved() {
        assert_eq!(account_token("acme").unwrap(), "acme");
        assert_eq!(account_token("a.b").unwrap(), "a_2Eb");
        assert!(account_token("switchyard").is_err());
        assert!(account_token("a b").is_err());
        assert!(account_token("a*").is_err());
        assert!(account_token("").is_err());
    }

    #[test]
    fn passwords_are_long_and_differ() {
        let (a, b) = (new_password(), new_password());
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
    }
}
