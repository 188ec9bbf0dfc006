use std::process::ExitCode;

use clap::Parser;
use switchyard_batch::{Config, run};

#[tokio::main]
async fn main() -> ExitCode {
    switchyard_telemetry::init_tracing();
    let config = Config::parse();
    let shutdown = switchyard_telemetry::shutdown_on_signal();
    switchyard_telemetry::service_exit("batch router", run(config, shutdown).await)
}
