//! Man pages (section 8) and shell completions generated from the clap definitions of `sspd`
//! and `sspctl` (`scripts/gen-docs.sh` runs `sspd --generate-docs DIR` and
//! `sspctl generate-docs DIR`; `scripts/install.sh` installs the result).
//!
//! Layout of the output directory:
//! ```text
//!   man8/NAME.8, man8/NAME-VERB.8, man8/NAME-VERB-SUBVERB.8   one page per visible command
//!   completions/bash/NAME                                      bash-completion
//!   completions/zsh/_NAME                                      zsh site-functions
//!   completions/fish/NAME.fish                                 fish vendor completions
//! ```
//! Examples given in a command's `after_help` (a first line `Examples:`, then one indented
//! command per line) become the page's EXAMPLES section.

use clap::Command;
use clap_complete::Shell;
use roff::{roman, Roff};
use std::path::{Path, PathBuf};

/// The heading that starts a command's examples in its `after_help`.
pub const EXAMPLES_HEADING: &str = "Examples:";

/// The shells completions are written for.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Errors of [`generate`].
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("these commands or arguments have no description: {}", .0.join(", "))]
    Undocumented(Vec<String>),
}

/// What [`generate`] wrote.
#[derive(Debug, Default)]
pub struct Generated {
    pub man_pages: Vec<PathBuf>,
    pub completions: Vec<PathBuf>,
}

/// Every visible subcommand and argument of `cmd` (recursively) that has no help text, as
/// `sspctl lu create NAME`-style paths. Hidden ones are skipped: they are not documented.
pub fn undocumented(cmd: &Command) -> Vec<String> {
    // clap's own `help` verb mirrors the tree; its copies carry no text of their own.
    let mut cmd = cmd.clone().disable_help_subcommand(true);
    cmd.build();
    let mut missing = Vec::new();
    walk(&cmd, cmd.get_name(), &mut missing);
    missing
}

fn walk(cmd: &Command, path: &str, missing: &mut Vec<String>) {
    for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        if a.get_help().is_none() && a.get_long_help().is_none() {
            let name = match a.get_long() {
                Some(l) => format!("--{l}"),
                None => a.get_id().as_str().to_uppercase(),
            };
            missing.push(format!("{path} {name}"));
        }
    }
    for sc in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub = format!("{path} {}", sc.get_name());
        if sc.get_about().is_none() && sc.get_long_about().is_none() {
            missing.push(sub.clone());
        }
        walk(sc, &sub, missing);
    }
}

/// The example command lines in `cmd`'s `after_help` (empty when it has none).
pub fn examples(cmd: &Command) -> Vec<String> {
    let Some(text) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) else {
        return Vec::new();
    };
    let text = text.to_string();
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(EXAMPLES_HEADING) {
        return Vec::new();
    }
    lines.map(|l| l.trim_end().to_owned()).collect()
}

/// Write man pages and completions for `cmd` into `dir` (see the module docs for the layout).
/// Refuses, writing nothing, when a visible command or argument has no description.
pub fn generate(cmd: Command, dir: &Path) -> Result<Generated, DocsError> {
    let missing = undocumented(&cmd);
    if !missing.is_empty() {
        return Err(DocsError::Undocumented(missing));
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut out = Generated::default();
    let man_dir = dir.join("man8");
    mkdir(&man_dir)?;
    man_pages(&cmd, &man_dir, &mut out.man_pages)?;
    let name = cmd.get_name().to_owned();
    for shell in SHELLS {
        let sub = dir.join("completions").join(shell.to_string());
        mkdir(&sub)?;
        let file = sub.join(completion_file(shell, &name));
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut visible(&cmd), &name, &mut buf);
        write(&file, &buf)?;
        out.completions.push(file);
    }
    Ok(out)
}

/// A copy of the built `cmd` without its hidden subcommands and arguments: the completion
/// generators would offer them.
fn visible(cmd: &Command) -> Command {
    let mut c = Command::new(cmd.get_name().to_owned())
        .disable_help_flag(true)
        .disable_version_flag(true)
        .disable_help_subcommand(true)
        .visible_aliases(
            cmd.get_visible_aliases()
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        )
        .args(cmd.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .subcommands(
            cmd.get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(visible),
        );
    if let Some(about) = cmd.get_about() {
        c = c.about(about.clone());
    }
    if let Some(v) = cmd.get_version() {
        c = c.version(v.to_owned());
    }
    c
}

/// The file name each shell looks up completions for `name` by.
pub fn completion_file(shell: Shell, name: &str) -> String {
    match shell {
        Shell::Zsh => format!("_{name}"),
        Shell::Fish => format!("{name}.fish"),
        _ => name.to_owned(),
    }
}

fn man_pages(cmd: &Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<(), DocsError> {
    for sc in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sc, dir, written)?;
    }
    let page = man_page(cmd).map_err(|source| DocsError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    let path = dir.join(format!("{name}.8"));
    write(&path, &page)?;
    written.push(path);
    Ok(())
}

/// One page: clap_mangen's sections, with the examples as an EXAMPLES section set verbatim
/// (clap_mangen would fill them into one paragraph).
fn man_page(cmd: &Command) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("ssp")
        .source(format!("ssp {}", env!("CARGO_PKG_VERSION")));
    let mut w = Vec::new();
    man.render_title(&mut w)?;
    man.render_name_section(&mut w)?;
    man.render_synopsis_section(&mut w)?;
    man.render_description_section(&mut w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut w)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut w)?;
    }
    let ex = examples(cmd);
    if !ex.is_empty() {
        let mut r = Roff::default();
        r.control("SH", ["EXAMPLES"]);
        r.control("nf", [] as [&str; 0]);
        for line in &ex {
            r.text([roman(line.as_str())]);
        }
        r.control("fi", [] as [&str; 0]);
        r.to_writer(&mut w)?;
    }
    if cmd.get_version().is_some() {
        man.render_version_section(&mut w)?;
    }
    Ok(w)
}

fn mkdir(p: &Path) -> Result<(), DocsError> {
    std::fs::create_dir_all(p).map_err(|source| DocsError::Io {
        path: p.to_owned(),
        source,
    })
}

fn write(p: &Path, bytes: &[u8]) -> Result<(), DocsError> {
    std::fs::write(p, bytes).map_err(|source| DocsError::Io {
        path: p.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Arg;

    #[test]
    fn finds_an_argument_and_a_verb_without_help() {
        let cmd = Command::new("t")
            .about("top")
            .arg(Arg::new("quiet").long("quiet").help("say less"))
            .arg(Arg::new("name"))
            .subcommand(Command::new("go").arg(Arg::new("fast").long("fast")))
            .subcommand(Command::new("secret").hide(true).arg(Arg::new("x")));
        assert_eq!(undocumented(&cmd), ["t NAME", "t go", "t go --fast"]);
    }

    #[test]
    fn examples_need_their_heading() {
        let c = Command::new("t").after_help("Examples:\n  t go\n  t stop");
        assert_eq!(examples(&c), ["  t go", "  t stop"]);
        assert!(examples(&Command::new("t").after_help("Notes: none")).is_empty());
    }
}
