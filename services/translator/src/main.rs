use std::process::ExitCode;

use clap::Parser;
use switchyard_translator::{Config, run};

fn main() -> ExitCode {
    switchyard_telemetry::init_tracing();
    let config = Config::parse();
    switchyard_telemetry::run_service("translator", |shutdown| run(config, shutdown))
}
