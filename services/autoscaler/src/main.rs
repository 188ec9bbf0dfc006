use std::process::ExitCode;

use clap::Parser;
use switchyard_autoscaler::{Config, run};

#[tokio::main]
async fn main() -> ExitCode {
    switchyard_telemetry::init_tracing();
    let config = Config::parse();
    let shutdown = switchyard_telemetry::shutdown_on_signal();
    switchyard_telemetry::service_exit("autoscaler", run(config, shutdown).await)
}
