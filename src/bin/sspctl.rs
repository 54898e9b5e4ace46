//! sspctl: thin main; the commands live in `ssp::cli`.
use clap::Parser;
use std::io::Write;

/// Marks an error of writing to stdout, so that a reader that went away (`sspctl ... | head`)
/// is told apart from a broken pipe elsewhere (the admin socket).
#[derive(Debug)]
struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Stdout, with broken-pipe errors marked [`StdoutClosed`].
struct Stdout<W>(W);

impl<W: Write> Write for Stdout<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

fn mark(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

fn main() {
    // Usage errors keep clap's own report (the error, a "tip" for a near miss, the usage line)
    // and its exit code 2; --help and --version exit 0.
    let cli = ssp::cli::Cli::try_parse().unwrap_or_else(|e| e.exit());
    ssp::logging::init(cli.log_format, "error");
    let mut out = Stdout(std::io::stdout().lock());
    if let Err(e) = ssp::cli::run(&cli, &mut out) {
        // A reader that stopped early (`sspctl ... | head`) is not an error of ours; the
        // command itself has completed.
        if e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.get_ref().is_some_and(|inner| inner.is::<StdoutClosed>()))
        }) {
            std::process::exit(0);
        }
        eprintln!("sspctl: error: {e:#}");
        std::process::exit(1);
    }
}
