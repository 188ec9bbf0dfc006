//! A real nats-server for integration tests: a free port, its own store directory,
//! killed when dropped (the way async-nats' own tests do it).
//!
//! The binary is `$SWITCHYARD_NATS_SERVER`, else `<workspace>/.tools/bin/nats-server`
//! (installed by `infra/install-tools.sh`). A missing or too-old binary is an error
//! that says how to install one, never a silent skip.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The oldest nats-server the project supports (KV and the JetStream API we use).
pub const MIN_VERSION: (u32, u32) = (2, 12);

/// A running nats-server with JetStream.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    url: String,
    store: tempfile::TempDir,
    log: PathBuf,
    port: u16,
    config: Option<PathBuf>,
    envs: Vec<(String, String)>,
}

/// Where the test nats-server binary is.
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHYARD_NATS_SERVER") {
        return PathBuf::from(path);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(".tools/bin/nats-server")
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn check_version(binary: &Path) -> Result<(), String> {
    let out = Command::new(binary).arg("--version").output().map_err(|e| {
        format!(
            "cannot run nats-server at {} ({e}); run `bash infra/install-tools.sh` or set SWITCHYARD_NATS_SERVER",
            binary.display()
        )
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "nats-server: v2.15.1"
    let version = text.trim().rsplit('v').next().unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if found < MIN_VERSION {
        return Err(format!(
            "{} is {}, need >= {}.{}",
            binary.display(),
            text.trim(),
            MIN_VERSION.0,
            MIN_VERSION.1
        ));
    }
    Ok(())
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> Result<Self, String> {
        Self::launch(None, &[])
    }

    /// Starts a server from a config file (e.g. one that includes the shipped
    /// `infra/nats/single.conf`) with these environment variables, and waits until it
    /// accepts connections. The port, monitoring port, store dir and log are still the
    /// harness's (command-line flags win over the file). `SWITCHYARD_NATS_PASSWORD`
    /// and `SWITCHYARD_NATS_STORE_KEY` reach the server only through `envs`, never from
    /// the test's own environment. A config the server rejects is an error with its
    /// message.
    pub fn start_with_config(config: &Path, envs: &[(&str, &str)]) -> Result<Self, String> {
        Self::launch(Some(config), envs)
    }

    fn launch(config: Option<&Path>, envs: &[(&str, &str)]) -> Result<Self, String> {
        let binary = server_binary();
        check_version(&binary)?;
        let store = tempfile::Builder::new()
            .prefix("switchyard-nats-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let log = store.path().join("server.log");
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // The OS may hand the port to someone else between probe and bind: retry a few.
        for _ in 0..5 {
            let port = free_port().map_err(|e| e.to_string())?;
            match spawn_listening(&binary, config, &envs, port, store.path(), &log)? {
                Some(child) => {
                    return Ok(Self {
                        child,
                        url: format!("nats://127.0.0.1:{port}"),
                        store,
                        log,
                        port,
                        config: config.map(Path::to_path_buf),
                        envs,
                    });
                }
                None => continue, // port taken, try another
            }
        }
        Err("nats-server could not get a free port".into())
    }

    /// Kills the server outright (SIGKILL: no lame-duck mode, nothing flushed) and
    /// starts it again on the same port with the same store, config and environment;
    /// returns once it accepts connections. Clients reconnect by themselves.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.start_again()
    }

    /// Kills the server outright (SIGKILL) and waits for it to exit; its port and
    /// store stay this harness's, for [`Self::start_again`]. Killing a server that is
    /// not running does nothing.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered, and
    /// what clients write waits in the socket. [`Self::thaw`] resumes it; a frozen
    /// server can be [`Self::kill`]ed, and what it had not read is lost with it.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a server [`Self::freeze`] stopped.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "kill {signal} {} failed",
            self.child.id()
        );
    }

    /// Starts the server [`Self::kill`] stopped, on the same port with the same store,
    /// config and environment; returns once it accepts connections.
    pub fn start_again(&mut self) -> Result<(), String> {
        let binary = server_binary();
        // The port can take a moment to be free again.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let started = spawn_listening(
                &binary,
                self.config.as_deref(),
                &self.envs,
                self.port,
                self.store.path(),
                &self.log,
            )?;
            if let Some(child) = started {
                self.child = child;
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "port {} did not come free for a restart",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The JetStream store directory (to search what was written to disk).
    pub fn store_dir(&self) -> PathBuf {
        self.store.path().join("jetstream")
    }

    /// The server's process id (for `nats-server --signal reload=<pid>`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log file.
    pub fn log_file(&self) -> &Path {
        &self.log
    }

    /// Connects a client.
    pub async fn connect(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        async_nats::connect(&self.url).await
    }

    /// Connects as `user` with `password`, using `inbox_prefix` for replies when given
    /// (a batch user may only subscribe to `_INBOX_<account-token>.>`).
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        inbox_prefix: Option<&str>,
    ) -> Result<async_nats::Client, async_nats::ConnectError> {
        let mut options =
            async_nats::ConnectOptions::with_user_and_password(user.into(), password.into());
        if let Some(prefix) = inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        options.connect(&self.url).await
    }

    /// Connects and applies every definition under `nats/`.
    pub async fn connect_and_apply(&self) -> Result<async_nats::Client, String> {
        let client = self.connect().await.map_err(|e| e.to_string())?;
        let js = async_nats::jetstream::new(client.clone());
        let defs = crate::Definitions::embedded().map_err(|e| e.to_string())?;
        crate::apply(&js, &defs).await.map_err(|e| e.to_string())?;
        Ok(client)
    }
}

/// Starts nats-server on `port` with its store and log under `dir`, and waits until it
/// accepts connections: Some(child) then, None when it exited because the port was
/// taken (the caller tries again), an error for anything else.
fn spawn_listening(
    binary: &Path,
    config: Option<&Path>,
    envs: &[(String, String)],
    port: u16,
    dir: &Path,
    log: &Path,
) -> Result<Option<Child>, String> {
    // Config errors go to stderr, before the log file is opened.
    let stderr_path = dir.join("server.stderr");
    let mut cmd = Command::new(binary);
    if let Some(config) = config {
        let monitor = free_port().map_err(|e| e.to_string())?;
        cmd.arg("-c")
            .arg(config)
            .args(["-m", &monitor.to_string()])
            .env_remove("SWITCHYARD_NATS_PASSWORD")
            .env_remove("SWITCHYARD_NATS_STORE_KEY")
            .envs(envs.iter().map(|(k, v)| (k, v)));
    }
    let stderr = std::fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
    let mut child = cmd
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.join("jetstream"))
        .arg("-l")
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let said = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            let logged = std::fs::read_to_string(log).unwrap_or_default();
            if config.is_none()
                || said.contains("address already in use")
                || logged.contains("address already in use")
            {
                return Ok(None);
            }
            return Err(format!(
                "nats-server exited ({status}): {}{}",
                said.trim(),
                logged.lines().last().unwrap_or_default()
            ));
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(Some(child));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!(
                "nats-server did not listen within 10 s; see {}",
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain file-backed stream `name` over `subjects` (a scratch stream for a test).
pub async fn scratch_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
    subjects: &str,
) -> Result<async_nats::jetstream::stream::Stream, String> {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())
}

/// Publishes to JetStream until the stream stores the message (a client may still be
/// reconnecting to a server that was just started again), for up to `within`.
pub async fn publish_until_stored(
    js: &async_nats::jetstream::Context,
    subject: &str,
    payload: bytes::Bytes,
    within: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let stored = async {
            js.publish(subject.to_string(), payload.clone())
                .await?
                .await
                .map_err(async_nats::Error::from)
        };
        match stored.await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(format!("not stored within {within:?}: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Every message now in `stream`, oldest first (subject and payload), read one
/// sequence at a time from the stream itself: what a test asserts on after the fact.
/// "Now" is the stream's last sequence when called: messages published while it reads
/// (an instance reporting every 300 ms, say) are left out, so the read always ends.
/// Not through a consumer: a fetch batch that ends early (a status, a missed
/// heartbeat on a loaded machine) loses what the server had already pushed to it, and
/// a test would then blame the publisher for a message that is stored.
pub async fn stream_contents(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Result<Vec<(String, bytes::Bytes)>, String> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let mut stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let state = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .clone();
    let mut out = Vec::with_capacity(usize::try_from(state.messages).unwrap_or(0));
    if state.messages == 0 {
        return Ok(out);
    }
    for seq in state.first_sequence..=state.last_sequence {
        match stream.get_raw_message(seq).await {
            Ok(m) => out.push((m.subject.to_string(), m.payload)),
            // Removed (acked off a work queue, aged out, deleted): not "now in" it.
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(format!("sequence {seq}: {e}")),
        }
    }
    Ok(out)
}
