use std::process::ExitCode;

use clap::Parser;
use switchyard_billing::{Config, run};

fn main() -> ExitCode {
    switchyard_telemetry::init_tracing();
    let config = Config::parse();
    switchyard_telemetry::run_service("billing", |shutdown| run(config, shutdown))
}
