//! `sspctl` verbs for failure groups, PVs, resync and scrub.

use super::{admin, admin_with_progress, Cli};
use crate::admin::{AdminReply, AdminRequest};
use crate::pool::dir::PvSpec;
use anyhow::{bail, Result};
use clap::Subcommand;
use std::io::Write;

#[derive(Subcommand, Debug)]
pub enum FailgrpCmd {
    /// List failure groups, their PVs, sizes and states, and the pool's mirror state
    List,
    /// Add the second failure group: mirroring of the whole pool starts in the background
    Create {
        name: String,
        /// PV as PATH (existing) or PATH:SIZE (new sparse file), repeatable
        #[arg(long = "pv", required = true)]
        pvs: Vec<PvSpec>,
        /// Overwrite PVs that hold a superblock of another pool (that pool is destroyed)
        #[arg(long)]
        force: bool,
    },
    /// Rename a failure group
    Modify {
        name: String,
        #[arg(long = "name")]
        new_name: String,
    },
    /// Drop a failure group: the pool keeps a single copy (asks for --yes)
    Remove {
        name: String,
        /// Confirm that every block is left with a single copy
        #[arg(long)]
        yes: bool,
    },
    /// Bring back failed PVs that answer again and copy what their group missed, until done
    Resync,
}

#[derive(Subcommand, Debug)]
pub enum PvCmd {
    /// PVs: pool, failure group, path, size, state (ONLINE, FAILED, MISSING), UDID
    List,
    /// Grow a failure group with new PVs, online
    Add {
        /// Failure group to grow
        #[arg(long = "fg")]
        fg: String,
        /// PATH (existing) or PATH:SIZE (new sparse file), repeatable
        #[arg(required = true)]
        pvs: Vec<PvSpec>,
        /// Overwrite PVs that hold a superblock of another pool (that pool is destroyed)
        #[arg(long)]
        force: bool,
    },
    /// Replace a PV with a new one at least as large, online
    Replace {
        old: String,
        new: PvSpec,
        /// Overwrite a new PV that holds a superblock of another pool (that pool is destroyed)
        #[arg(long)]
        force: bool,
    },
}

fn spec_string(s: &PvSpec) -> String {
    match s.size {
        Some(n) => format!("{}:{n}", s.path.display()),
        None => s.path.display().to_string(),
    }
}

pub fn failgrp(cli: &Cli, cmd: &FailgrpCmd, out: &mut dyn Write) -> Result<()> {
    let req = match cmd {
        FailgrpCmd::List => AdminRequest::FailgrpList,
        FailgrpCmd::Create { name, pvs, force } => AdminRequest::FailgrpCreate {
            name: name.clone(),
            pvs: pvs.iter().map(spec_string).collect(),
            force: *force,
        },
        FailgrpCmd::Modify { name, new_name } => AdminRequest::FailgrpModify {
            name: name.clone(),
            new_name: new_name.clone(),
        },
        FailgrpCmd::Resync => AdminRequest::Resync,
        FailgrpCmd::Remove { name, yes } => AdminRequest::FailgrpRemove {
            name: name.clone(),
            confirm: *yes,
        },
    };
    let json = cli.json;
    let mut report = |done: u64, total: u64| {
        if json {
            let _ = writeln!(
                out,
                "{}",
                serde_json::json!({ "progress": { "copied_bytes": done, "total_bytes": total } })
            );
        } else {
            eprint!("\rresync: {} of {} MiB copied", done >> 20, total >> 20);
        }
    };
    let reply = admin_with_progress(cli, req, &mut report)?;
    if !json && matches!(cmd, FailgrpCmd::Resync) {
        eprintln!();
    }
    match reply {
        AdminReply::FailGroups {
            groups,
            mirror_state,
            resync_bytes_left,
        } => {
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "mirror_state": mirror_state,
                        "resync_bytes_left": resync_bytes_left,
                        "failure_groups": groups,
                    }))?
                )?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<16} {:>10} {:<8}  PVS",
                "FAILGRP", "SIZE(MB)", "STATE"
            )?;
            for g in &groups {
                writeln!(
                    out,
                    "{:<16} {:>10} {:<8}  {}",
                    g.name,
                    g.size_bytes >> 20,
                    g.state,
                    g.pvs.join(",")
                )?;
            }
            writeln!(out, "Mirror State: {mirror_state}")?;
            if resync_bytes_left > 0 {
                writeln!(
                    out,
                    "Resync Left(MB): {}",
                    resync_bytes_left.div_ceil(1 << 20)
                )?;
            }
        }
        AdminReply::Resynced {
            bytes_copied,
            mirror_state,
        } => {
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "bytes_copied": bytes_copied, "mirror_state": mirror_state })
                )?;
            } else {
                writeln!(
                    out,
                    "resync copied {} MiB; mirror state {mirror_state}",
                    bytes_copied >> 20
                )?;
            }
        }
        other => bail!("unexpected reply {other:?}"),
    }
    Ok(())
}

pub fn pv(cli: &Cli, cmd: &PvCmd, out: &mut dyn Write) -> Result<()> {
    let req = match cmd {
        PvCmd::List => AdminRequest::PvList,
        PvCmd::Add { fg, pvs, force } => AdminRequest::PvAdd {
            fg: fg.clone(),
            pvs: pvs.iter().map(spec_string).collect(),
            force: *force,
        },
        PvCmd::Replace { old, new, force } => AdminRequest::PvReplace {
            old: old.clone(),
            new: spec_string(new),
            force: *force,
        },
    };
    let json = cli.json;
    let mut report = |done: u64, total: u64| {
        if !json && total > 1 {
            eprint!("\rcopying: {}%", done * 100 / total.max(1));
        }
    };
    let reply = admin_with_progress(cli, req, &mut report)?;
    if !json && matches!(cmd, PvCmd::Replace { .. }) {
        eprintln!();
    }
    match reply {
        AdminReply::Pvs { pvs } => {
            if cli.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&pvs)?)?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<12} {:<12} {:<40} {:>10} {:<8} UDID",
                "POOL", "FAILGRP", "PV_NAME", "SIZE(MB)", "STATE"
            )?;
            for p in &pvs {
                writeln!(
                    out,
                    "{:<12} {:<12} {:<40} {:>10} {:<8} {}",
                    p.pool, p.failure_group, p.name, p.size_mb, p.state, p.udid
                )?;
            }
        }
        other => bail!("unexpected reply {other:?}"),
    }
    Ok(())
}

pub fn scrub(cli: &Cli, out: &mut dyn Write) -> Result<()> {
    match admin(cli, AdminRequest::Scrub)? {
        AdminReply::Scrubbed(r) => {
            if cli.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                for e in &r.errors {
                    writeln!(out, "ERROR: {e}")?;
                }
                writeln!(
                    out,
                    "scrubbed {} block copies: {} errors found, {} repaired, {} unrepairable",
                    r.blocks_checked, r.errors_found, r.errors_repaired, r.unrepairable
                )?;
            }
            if r.unrepairable > 0 {
                bail!("{} blocks have no intact copy", r.unrepairable);
            }
        }
        other => bail!("unexpected reply {other:?}"),
    }
    Ok(())
}
