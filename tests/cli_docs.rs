//! Man pages, shell completions, help texts, aliases and usage errors of sspctl and sspd,
//! through the real binaries (issue 15, item 1).

mod common;

use clap::CommandFactory;
use common::server::{make_pool, sspctl};
use std::process::{Command, Output};

fn bin(name: &str) -> &'static str {
    match name {
        "sspctl" => env!("CARGO_BIN_EXE_sspctl"),
        _ => env!("CARGO_BIN_EXE_sspd"),
    }
}

fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name)).args(args).output().unwrap()
}

/// Every visible command path of sspctl: ["sspctl"], ["sspctl", "lu"], ["sspctl", "lu", "create"], ...
fn command_paths(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut me = prefix.to_vec();
    me.push(cmd.get_name().to_owned());
    for sc in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sc.get_name() != "help" {
            command_paths(sc, &me, out);
        }
    }
    out.push(me);
}

fn find<'a>(cmd: &'a clap::Command, path: &[String]) -> &'a clap::Command {
    path[1..].iter().fold(cmd, |c, name| {
        c.find_subcommand(name)
            .unwrap_or_else(|| panic!("no subcommand {name}"))
    })
}

#[test]
fn every_visible_verb_and_argument_has_help() {
    let cmd = ssp::cli::Cli::command();
    let missing = ssp::cli::docs::undocumented(&cmd);
    assert!(missing.is_empty(), "without a description: {missing:?}");
    // The walk does look: a tree with a bare argument is caught.
    let bare = cmd.subcommand(
        clap::Command::new("bare")
            .about("x")
            .arg(clap::Arg::new("thing")),
    );
    assert_eq!(ssp::cli::docs::undocumented(&bare), ["sspctl bare THING"]);
}

#[test]
fn generator_writes_a_page_per_verb_and_completions_for_three_shells() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    for (name, args) in [
        ("sspctl", vec!["generate-docs", dir.to_str().unwrap()]),
        ("sspd", vec!["--generate-docs", dir.to_str().unwrap()]),
    ] {
        let o = run(name, &args);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let man = dir.join("man8");

    let mut cmd = ssp::cli::Cli::command();
    cmd.build();
    let mut paths = Vec::new();
    command_paths(&cmd, &[], &mut paths);
    assert!(paths.len() > 40, "{paths:?}");
    for path in &paths {
        let page = man.join(format!("{}.8", path.join("-")));
        let roff =
            std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        assert!(
            roff.contains(".TH ") && roff.contains(" 8 "),
            "not section 8: {roff}"
        );
        let c = find(&cmd, path);
        let about = c.get_about().expect("about").to_string();
        // roff escapes '-' as '\-'; compare the first words, free of dashes.
        let words: String = about
            .split_whitespace()
            .take_while(|w| !w.contains(['-', '\\', '\'', '`']))
            .take(4)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            !words.is_empty() && roff.contains(&words),
            "{} lacks its description {words:?}",
            page.display()
        );
        for a in c.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(l) = a.get_long() {
                assert!(
                    roff.contains(&format!("\\-\\-{}", l.replace('-', "\\-"))),
                    "{} lacks --{l}",
                    page.display()
                );
            }
        }
    }
    // No page for hidden verbs.
    assert!(!man.join("sspctl-debug.8").exists());
    assert!(!man.join("sspctl-generate-docs.8").exists());
    let sspd = std::fs::read_to_string(man.join("sspd.8")).unwrap();
    for opt in ["pool", "listen", "unix", "tls\\-cert", "scrub\\-rate"] {
        assert!(
            sspd.contains(&format!("\\-\\-{opt}")),
            "sspd.8 lacks --{opt}"
        );
    }
    assert!(!sspd.contains("generate\\-docs"));

    // The main verbs' examples, in an EXAMPLES section, one example per line.
    for (page, example) in [
        ("sspctl-lu-create", "sspctl lu create vm1 \\-\\-size 20G"),
        (
            "sspctl-lu-map",
            "sspctl lu map vm1 \\-\\-client 192.168.10.0/24",
        ),
        (
            "sspctl-snapshot-create",
            "sspctl snapshot create vm1@before\\-upgrade",
        ),
        (
            "sspctl-image-capture",
            "sspctl image capture golden@v1 golden\\-v1",
        ),
        ("sspctl-clone", "sspctl clone golden@v1 web1"),
        ("sspctl-pool-create", "sspctl \\-\\-pool /tmp/p pool create"),
        (
            "sspctl-failgrp-create",
            "sspctl failgrp create fg2 \\-\\-pv /dev/sdd",
        ),
        ("sspctl-pv-replace", "sspctl pv replace /dev/sdb /dev/sdg"),
        ("sspctl-scrub", "sspctl scrub \\-\\-wait"),
    ] {
        let roff = std::fs::read_to_string(man.join(format!("{page}.8"))).unwrap();
        let ex = roff
            .split(".SH EXAMPLES")
            .nth(1)
            .unwrap_or_else(|| panic!("{page}: no EXAMPLES section"));
        assert!(ex.starts_with("\n.nf\n"), "{page}: examples not verbatim");
        assert!(
            ex.lines().any(|l| l.trim_start().starts_with(example)),
            "{page}: no example {example:?} in {ex}"
        );
    }

    // Completions: one file per shell and binary, each naming the verbs.
    for (shell, file) in [
        ("bash", "sspctl"),
        ("zsh", "_sspctl"),
        ("fish", "sspctl.fish"),
    ] {
        let text = std::fs::read_to_string(dir.join("completions").join(shell).join(file))
            .unwrap_or_else(|e| panic!("{shell}: {e}"));
        for verb in ["snapshot", "failgrp", "capture", "rollback"] {
            assert!(text.contains(verb), "{shell} completion lacks {verb}");
        }
        // Hidden verbs and options are not offered.
        for hidden in ["generate-docs", "write-loop", "resync-bench"] {
            assert!(!text.contains(hidden), "{shell} completion offers {hidden}");
        }
        let sspd = dir
            .join("completions")
            .join(shell)
            .join(file.replace("sspctl", "sspd"));
        let sspd = std::fs::read_to_string(sspd).unwrap();
        assert!(sspd.contains("max-connections") && !sspd.contains("generate-docs"));
    }
    // The bash completion is valid bash.
    let o = Command::new("bash")
        .arg("-n")
        .arg(dir.join("completions/bash/sspctl"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn help_shows_examples_and_aliases() {
    for (args, needle) in [
        (
            &["lu", "create", "--help"][..],
            "sspctl lu create vm1 --size 20G",
        ),
        (
            &["snapshot", "create", "--help"][..],
            "sspctl snapshot create db@nightly logs@nightly",
        ),
        (&["scrub", "--help"][..], "sspctl scrub --wait"),
        (&["lu", "--help"][..], "[alias: ls]"),
        (&["lu", "--help"][..], "[alias: rm]"),
        (&["snapshot", "--help"][..], "[alias: rm]"),
        (&["image", "--help"][..], "[alias: ls]"),
        (&["pv", "--help"][..], "[alias: ls]"),
        (&["failgrp", "--help"][..], "[alias: rm]"),
        (&["lu", "map", "--help"][..], "uid:N"),
    ] {
        let o = run("sspctl", args);
        assert!(o.status.success());
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains(needle), "{args:?} lacks {needle:?}:\n{text}");
    }
}

#[test]
fn ls_and_rm_aliases_work_like_list_and_remove() {
    let t = tempfile::tempdir().unwrap();
    let pool = make_pool(t.path(), &[("vm1", "64M"), ("vm2", "64M")]);
    let list = sspctl(&pool, &["lu", "list", "--json"]);
    assert_eq!(sspctl(&pool, &["lu", "ls", "--json"]), list);
    assert!(list.contains("vm2"));
    sspctl(&pool, &["lu", "rm", "vm2"]);
    let after = sspctl(&pool, &["lu", "ls"]);
    assert!(after.contains("vm1") && !after.contains("vm2"), "{after}");
    sspctl(&pool, &["snapshot", "create", "vm1@s1"]);
    assert!(sspctl(&pool, &["snapshot", "ls"]).contains("vm1@s1"));
    sspctl(&pool, &["snapshot", "rm", "vm1@s1"]);
    assert!(!sspctl(&pool, &["snapshot", "ls"]).contains("vm1@s1"));
    assert!(sspctl(&pool, &["pv", "ls"]).contains("pv0.img"));
}

fn usage_error(args: &[&str], needles: &[&str]) {
    let o = run("sspctl", args);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    for n in needles {
        assert!(err.contains(n), "{args:?}: stderr lacks {n:?}:\n{err}");
    }
    assert!(o.stdout.is_empty());
}

#[test]
fn usage_errors_keep_clap_tips_and_exit_2() {
    usage_error(
        &["lu", "craete", "x"],
        &[
            "unrecognized subcommand 'craete'",
            "tip: a similar subcommand exists: 'create'",
            "Usage: sspctl lu",
        ],
    );
    usage_error(
        &["lu", "create", "x", "--sise", "1G"],
        &[
            "tip: a similar argument exists: '--size'",
            "Usage: sspctl lu create",
        ],
    );
    usage_error(&["lu", "create", "x"], &["--size <SIZE>", "required"]);
    // --help and --version still succeed.
    assert!(run("sspctl", &["--version"]).status.success());
    assert!(run("sspd", &["--help"]).status.success());
    // sspd --generate-docs stands alone.
    let o = run("sspd", &["--generate-docs", "/nonexistent", "--pool", "/x"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}
