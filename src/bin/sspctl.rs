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

/// `--json` among the arguments (before a `--`), for errors found before they are parsed.
fn json_requested() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

fn main() {
    let cli = match ssp::cli::Cli::try_parse() {
        Ok(c) => c,
        // Under --json a usage error is one JSON document on stdout (exit code 2);
        // otherwise clap's own report (the error, a "tip" for a near miss, the usage line)
        // with its exit code 2, and --help / --version exit 0.
        Err(e) if json_requested() && e.exit_code() == 2 => {
            let msg = e.to_string();
            let line = msg
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            println!("{}", ssp::cli::output::json_error(line));
            std::process::exit(2);
        }
        Err(e) => e.exit(),
    };
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
        if cli.json {
            // Scripts read one JSON document from stdout, success or not.
            let _ = writeln!(out, "{}", ssp::cli::output::json_error(&format!("{e:#}")));
        } else {
            eprintln!("sspctl: error: {e:#}");
        }
        std::process::exit(1);
    }
}
