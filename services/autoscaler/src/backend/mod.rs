//! Where instances run. The reconciler only says how many each pool should have.
//!
//! - [`process`]: local worker processes (the default; what `just up` and the tests use);
//! - [`kubernetes`]: the replica count of one Deployment per pool, through the
//!   Kubernetes API.

pub mod kubernetes;
pub mod process;

use std::fmt;

/// A set of interchangeable instances.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pool {
    /// One account's instances of one open model.
    Cluster { account: String, model: String },
    /// Closed-model translators (shared by every account, not billed).
    Translators,
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pool::Cluster { account, model } => write!(f, "{account}/{model}"),
            Pool::Translators => f.write_str("translators"),
        }
    }
}

/// An instance that exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    pub pool: Pool,
    pub instance_id: String,
    /// When the exit was noticed (Unix ms).
    pub at_ms: i64,
    /// It exited without being told to (crashed, was killed).
    pub unexpected: bool,
    pub status: String,
}

/// The backends, as one type (the reconciler holds exactly one).
#[derive(Debug)]
pub enum Backend {
    Process(process::ProcessBackend),
    Kubernetes(kubernetes::KubernetesBackend),
}

impl Backend {
    /// Instances of `pool` running or starting (not those told to stop).
    pub fn count(&self, pool: &Pool) -> u32 {
        match self {
            Backend::Process(b) => b.count(pool),
            Backend::Kubernetes(b) => b.count(pool),
        }
    }

    /// Starts or stops instances until `pool` has `want` (stopping drains).
    pub async fn scale(&mut self, pool: &Pool, want: u32) -> Result<(), String> {
        match self {
            Backend::Process(b) => b.scale(pool, want).await,
            Backend::Kubernetes(b) => b.scale(pool, want).await,
        }
    }

    /// Reads the instances back from where they run, once a tick (Kubernetes: one
    /// listing of the Deployments; processes: nothing to read).
    pub async fn refresh(&mut self) -> Result<(), String> {
        match self {
            Backend::Process(_) => Ok(()),
            Backend::Kubernetes(b) => b.refresh().await.map(|_| ()),
        }
    }

    /// Ready instances of `pool` as the backend sees them (Kubernetes:
    /// `readyReplicas`); `None` where only the instances' heartbeats tell.
    pub fn ready(&self, pool: &Pool) -> Option<u32> {
        match self {
            Backend::Process(_) => None,
            Backend::Kubernetes(b) => Some(b.ready(pool)),
        }
    }

    /// An instance stopped heartbeating: make sure it is gone (a hung process is
    /// killed; Kubernetes restarts or replaces a dead pod itself, and a hung one fails
    /// its liveness probe).
    pub fn lost(&mut self, pool: &Pool, instance_id: &str) {
        match self {
            Backend::Process(b) => b.kill(pool, instance_id),
            Backend::Kubernetes(_) => {}
        }
    }

    /// Instances that exited since the last call.
    pub fn reap(&mut self) -> Vec<Exited> {
        match self {
            Backend::Process(b) => b.reap(),
            Backend::Kubernetes(_) => Vec::new(),
        }
    }

    /// Pools with instances (or replicas) now.
    pub fn pools(&self) -> Vec<Pool> {
        match self {
            Backend::Process(b) => b.pools(),
            Backend::Kubernetes(b) => b.pools(),
        }
    }

    /// Stops everything this backend started that should not outlive it.
    pub async fn shutdown(&mut self) {
        match self {
            Backend::Process(b) => b.shutdown().await,
            // Deployments keep running without the autoscaler; it picks them up again.
            Backend::Kubernetes(_) => {}
        }
    }
}
