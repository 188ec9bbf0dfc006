//! Setup shared by the binaries (logging and signals come from `switchyard-telemetry`).

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
