use std::process::ExitCode;

use clap::Parser;
use switchyard_inference::{Config, run};

fn main() -> ExitCode {
    switchyard_telemetry::init_tracing();
    let config = Config::parse();
    switchyard_telemetry::run_service("inference", |shutdown| run(config, shutdown))
}
