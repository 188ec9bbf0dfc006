use std::process::ExitCode;

use clap::Parser;
use switchyard_batch::{Config, run};

fn main() -> ExitCode {
    switchyard_telemetry::init_tracing();
    let config = Config::parse();
    switchyard_telemetry::run_service("batch router", |shutdown| run(config, shutdown))
}
