//! Setup shared by the binaries.

use std::io::Write;

/// Writes `error: <message: causes>` to stderr (no backtrace: these are usage errors).
pub fn report_error(err: &anyhow::Error) {
    tracing::debug!(error = ?err, "exiting with an error");
    let _ = writeln!(std::io::stderr().lock(), "error: {err:#}");
}

/// A tokio runtime with `threads` workers: 1 is a current-thread runtime (pin it with
/// `taskset`), 0 is tokio's default (one worker per core).
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}
