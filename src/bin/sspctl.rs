//! sspctl: thin main; the commands live in `ssp::cli`.
use clap::error::ErrorKind;
use clap::Parser;

fn main() {
    let cli = match ssp::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            // Usage errors: one clear line (clap's first), exit code 2.
            let msg = e.to_string();
            eprintln!(
                "sspctl: {}",
                msg.lines()
                    .next()
                    .unwrap_or("invalid arguments")
                    .trim_start_matches("error: ")
            );
            std::process::exit(2);
        }
    };
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
