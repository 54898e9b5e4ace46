//! Log output of both binaries: one filter variable, colour only on a terminal, text or JSON.
//!
//! The filter comes from `SSP_LOG` (tracing's `EnvFilter` syntax, e.g. `info` or
//! `ssp::audit=info,warn`); `RUST_LOG` is read when `SSP_LOG` is not set. ANSI colour codes are
//! written only when stderr is a terminal, so a log redirected to a file or the journal holds
//! plain text. `--log-format json` writes one JSON object per line (timestamp, level, target,
//! fields).

use std::io::IsTerminal;

/// The environment variable both binaries take their log filter from.
pub const LOG_ENV: &str = "SSP_LOG";
/// Read when [`LOG_ENV`] is not set.
pub const LOG_ENV_FALLBACK: &str = "RUST_LOG";

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured only when stderr is a terminal)
    #[default]
    Text,
    /// One JSON object per line
    Json,
}

/// The filter directives in effect: `SSP_LOG`, else `RUST_LOG`, else `default`.
pub fn filter_directives(default: &str) -> String {
    [LOG_ENV, LOG_ENV_FALLBACK]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| default.to_owned())
}

/// Install the global subscriber writing to stderr. A filter that does not parse is reported
/// and `default` used instead.
pub fn init(format: LogFormat, default: &str) {
    let directives = filter_directives(default);
    let (filter, bad) = match tracing_subscriber::EnvFilter::try_new(&directives) {
        Ok(f) => (f, None),
        Err(e) => (tracing_subscriber::EnvFilter::new(default), Some(e)),
    };
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    if let Some(e) = bad {
        tracing::warn!(
            "{LOG_ENV}={directives:?} is not a valid log filter ({e}); using {default:?}"
        );
    }
}
