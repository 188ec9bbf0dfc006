//! Instances as local processes: `switchyard-inference` per cluster instance,
//! `switchyard-translator` for the translator pool.
//!
//! Stopping sends SIGTERM, so an instance drains (finishes and acks what it holds)
//! before it exits; it no longer counts as running from that moment. An instance that
//! exits without being told to is reported by [`ProcessBackend::reap`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::{Exited, Pool};

#[derive(Debug)]
struct Running {
    id: String,
    child: Child,
    stopping: bool,
}

/// Spawns and stops worker processes.
#[derive(Debug)]
pub struct ProcessBackend {
    inference_bin: PathBuf,
    translator_bin: PathBuf,
    /// Where each instance's log goes (`<instance>.log`); inherited stderr when absent.
    log_dir: Option<PathBuf>,
    /// Extra environment for every instance (the rest is inherited).
    env: Vec<(String, String)>,
    pools: BTreeMap<Pool, Vec<Running>>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl ProcessBackend {
    pub fn new(
        inference_bin: PathBuf,
        translator_bin: PathBuf,
        log_dir: Option<PathBuf>,
        env: Vec<(String, String)>,
    ) -> Self {
        Self {
            inference_bin,
            translator_bin,
            log_dir,
            env,
            pools: BTreeMap::new(),
        }
    }

    pub fn count(&self, pool: &Pool) -> u32 {
        self.pools
            .get(pool)
            .map_or(0, |v| v.iter().filter(|r| !r.stopping).count() as u32)
    }

    pub fn pools(&self) -> Vec<Pool> {
        self.pools
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Process ids of a pool's running instances (tests kill them).
    pub fn pids(&self, pool: &Pool) -> Vec<(String, u32)> {
        self.pools.get(pool).map_or_else(Vec::new, |v| {
            v.iter()
                .filter(|r| !r.stopping)
                .filter_map(|r| r.child.id().map(|pid| (r.id.clone(), pid)))
                .collect()
        })
    }

    pub async fn scale(&mut self, pool: &Pool, want: u32) -> Result<(), String> {
        let have = self.count(pool);
        if want > have {
            for _ in have..want {
                let running = self.spawn(pool)?;
                tracing::info!(pool = %pool, instance = %running.id, "instance started");
                self.pools.entry(pool.clone()).or_default().push(running);
            }
        } else if want < have {
            let list = self.pools.entry(pool.clone()).or_default();
            // Newest first: the oldest instances are the warmest.
            let mut to_stop = (have - want) as usize;
            for r in list.iter_mut().rev().filter(|r| !r.stopping) {
                if to_stop == 0 {
                    break;
                }
                r.stopping = true;
                to_stop -= 1;
                if let Some(pid) = r.child.id() {
                    terminate(pid).await;
                }
                tracing::info!(pool = %pool, instance = %r.id, "instance told to drain and stop");
            }
        }
        Ok(())
    }

    /// Kills one instance outright (it stopped heartbeating: hung or cut off) and no
    /// longer counts it; its exit is then an expected one.
    pub fn kill(&mut self, pool: &Pool, instance_id: &str) {
        let Some(r) = self
            .pools
            .get_mut(pool)
            .and_then(|list| list.iter_mut().find(|r| r.id == instance_id))
        else {
            return;
        };
        r.stopping = true;
        if let Err(e) = r.child.start_kill() {
            tracing::warn!(error = %e, instance = instance_id, "cannot kill a lost instance");
        }
    }

    fn spawn(&self, pool: &Pool) -> Result<Running, String> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let mut cmd = match pool {
            Pool::Cluster { account, model } => {
                let mut c = Command::new(&self.inference_bin);
                c.env("INFERENCE_MODEL", model)
                    .env("INFERENCE_ACCOUNT", account)
                    .env("INFERENCE_INSTANCE_ID", &id)
                    .env("INFERENCE_BIND", "127.0.0.1:0");
                c
            }
            Pool::Translators => {
                let mut c = Command::new(&self.translator_bin);
                c.env("TRANSLATOR_BIND", "127.0.0.1:0");
                c
            }
        };
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        match &self.log_dir {
            Some(dir) => {
                let path = dir.join(format!("instance-{id}.log"));
                let file = std::fs::File::create(&path)
                    .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
                let err = file
                    .try_clone()
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                cmd.stdout(file).stderr(err);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
            }
        }
        let child = cmd.spawn().map_err(|e| {
            let bin = match pool {
                Pool::Cluster { .. } => &self.inference_bin,
                Pool::Translators => &self.translator_bin,
            };
            format!("cannot start {}: {e}", bin.display())
        })?;
        Ok(Running {
            id,
            child,
            stopping: false,
        })
    }

    pub fn reap(&mut self) -> Vec<Exited> {
        let mut exited = Vec::new();
        for (pool, list) in &mut self.pools {
            list.retain_mut(|r| match r.child.try_wait() {
                Ok(Some(status)) => {
                    exited.push(Exited {
                        pool: pool.clone(),
                        instance_id: r.id.clone(),
                        at_ms: now_ms(),
                        unexpected: !r.stopping,
                        status: status.to_string(),
                    });
                    false
                }
                Ok(None) => true,
                Err(e) => {
                    tracing::warn!(error = %e, instance = %r.id, "cannot poll an instance");
                    true
                }
            });
        }
        self.pools.retain(|_, v| !v.is_empty());
        exited
    }

    pub async fn shutdown(&mut self) {
        for list in self.pools.values_mut() {
            for r in list.iter_mut() {
                if let Some(pid) = r.child.id() {
                    terminate(pid).await;
                }
                r.stopping = true;
            }
        }
        for list in self.pools.values_mut() {
            for r in list.iter_mut() {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(35), r.child.wait()).await;
            }
        }
        self.pools.clear();
    }
}

/// SIGTERM, without unsafe code: through `kill(1)`.
async fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}
