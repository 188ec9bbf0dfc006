use clap::Parser;
use switchyard_ingress::{Config, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing();
    let config = Config::parse();
    let shutdown = switchyard_telemetry::shutdown_on_signal();
    if let Err(e) = run(config, shutdown).await {
        tracing::error!(error = %e, "ingress failed");
        return Err(e.into());
    }
    Ok(())
}
