//! sspctl: thin main; the commands live in `ssp::cli`.
use clap::Parser;

fn main() {
    let cli = ssp::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("SSP_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let mut out = std::io::stdout().lock();
    if let Err(e) = ssp::cli::run(&cli, &mut out) {
        eprintln!("sspctl: error: {e:#}");
        std::process::exit(1);
    }
}
