use std::process::ExitCode;

use clap::Parser;
use switchyard_translator::{Config, run};

// mimalloc, not glibc's malloc: 3–4 % less CPU per request in this process on the
// request path (loadtest/RESULTS.md, notes of 2026-12-07 19:05).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    switchyard_telemetry::init_tracing();
    let config = Config::parse();
    switchyard_telemetry::run_service("translator", |shutdown| run(config, shutdown))
}
