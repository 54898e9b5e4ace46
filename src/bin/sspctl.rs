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
        // A reader that stopped early (`sspctl ... | head`) is not an error of ours; the
        // command itself has completed.
        if e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        }) {
            std::process::exit(0);
        }
        eprintln!("sspctl: error: {e:#}");
        std::process::exit(1);
    }
}
