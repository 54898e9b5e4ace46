//! `sspctl` verbs for failure groups, PVs, resync and scrub.

use super::output::{self, OutputOpts};
use super::progress::Progress;
use super::{admin, admin_with_progress, output_opts, Cli};
use crate::admin::{AdminReply, AdminRequest};
use crate::format::{BLOCK_U64, SEG_BLOCKS};
use crate::pool::dir::PvSpec;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum FailgrpCmd {
    /// List failure groups, their PVs, sizes and states, and the pool's mirror state
    #[command(visible_alias = "ls")]
    List,
    /// Add the second failure group: mirroring of the whole pool starts in the background
    #[command(after_help = FAILGRP_EXAMPLES)]
    Create {
        /// Name of the new failure group
        name: String,
        /// PV as PATH (existing) or PATH:SIZE (new sparse file), repeatable
        #[arg(long = "pv", required = true, value_parser = super::size::pv_spec_arg)]
        pvs: Vec<PvSpec>,
        /// Overwrite PVs that hold a superblock of another pool (that pool is destroyed)
        #[arg(long)]
        force: bool,
    },
    /// Rename a failure group
    Modify {
        /// The failure group's current name
        name: String,
        /// Its new name
        #[arg(long = "name")]
        new_name: String,
    },
    /// Drop a failure group: the pool keeps a single copy (asks for --yes)
    #[command(visible_alias = "rm")]
    Remove {
        /// The failure group to drop
        name: String,
        /// Confirm that every block is left with a single copy
        #[arg(long)]
        yes: bool,
    },
    /// Bring back failed PVs that answer again and copy what their group missed, until done
    #[command(after_help = FAILGRP_EXAMPLES)]
    Resync,
}

#[derive(Subcommand, Debug)]
pub enum PvCmd {
    /// PVs: pool, failure group, path, size, state (ONLINE, FAILED, MISSING), UDID
    #[command(visible_alias = "ls")]
    List,
    /// Grow a failure group with new PVs, online
    #[command(after_help = PV_EXAMPLES)]
    Add {
        /// Failure group to grow
        #[arg(long = "fg")]
        fg: String,
        /// PATH (existing) or PATH:SIZE (new sparse file), repeatable
        #[arg(required = true, value_parser = super::size::pv_spec_arg)]
        pvs: Vec<PvSpec>,
        /// Overwrite PVs that hold a superblock of another pool (that pool is destroyed)
        #[arg(long)]
        force: bool,
    },
    /// Replace a PV with a new one at least as large, online
    #[command(after_help = PV_EXAMPLES)]
    Replace {
        /// The PV to replace, by its path as `pv list` shows it
        old: String,
        /// The new PV: PATH (existing file or block device) or PATH:SIZE (new sparse file)
        #[arg(value_parser = super::size::pv_spec_arg)]
        new: PvSpec,
        /// Overwrite a new PV that holds a superblock of another pool (that pool is destroyed)
        #[arg(long)]
        force: bool,
    },
    /// Stop a running single-copy `pv replace` (and any capture) at a slice boundary; the
    /// pool stays on the old PV
    ReplaceCancel,
}

pub(super) const FAILGRP_EXAMPLES: &str = "Examples:
  sspctl failgrp create fg2 --pv /dev/sdd --pv /dev/sde
  sspctl failgrp ls
  sspctl failgrp resync
  sspctl failgrp modify fg2 --name rack2";

pub(super) const PV_EXAMPLES: &str = "Examples:
  sspctl pv ls
  sspctl pv add --fg Default /dev/sdf
  sspctl pv replace /dev/sdb /dev/sdg";

pub(super) const SCRUB_EXAMPLES: &str = "Examples:
  sspctl scrub --rate 100M
  sspctl scrub --wait
  sspctl scrub status
  sspctl scrub cancel";

/// A path sspd is to open, as sspd must see it: a relative path means the directory the user
/// typed it in, not sspd's working directory (under systemd, `/`). An existing file is
/// canonicalized; a new one is joined to the canonical path of its directory (or to the working
/// directory when that does not exist either). Absolute paths are left as given.
pub(crate) fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_owned());
    }
    if let Ok(c) = std::fs::canonicalize(p) {
        return Ok(c);
    }
    let abs = std::path::absolute(p)
        .with_context(|| format!("cannot resolve {} in the current directory", p.display()))?;
    Ok(match (abs.parent(), abs.file_name()) {
        (Some(d), Some(n)) => std::fs::canonicalize(d).map_or(abs.clone(), |d| d.join(n)),
        _ => abs,
    })
}

/// A PV spec for the admin request, its path made absolute here.
fn spec_string(s: &PvSpec) -> Result<String> {
    let path = absolute(&s.path)?;
    Ok(match s.size {
        Some(n) => format!("{}:{n}", path.display()),
        None => path.display().to_string(),
    })
}

fn spec_strings(specs: &[PvSpec]) -> Result<Vec<String>> {
    specs.iter().map(spec_string).collect()
}

pub fn failgrp(cli: &Cli, cmd: &FailgrpCmd, out: &mut dyn Write) -> Result<()> {
    let req = match cmd {
        FailgrpCmd::List => AdminRequest::FailgrpList,
        FailgrpCmd::Create { name, pvs, force } => AdminRequest::FailgrpCreate {
            name: name.clone(),
            pvs: spec_strings(pvs)?,
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
    let mut bar = Progress::new("resync", json, 1);
    let reply = admin_with_progress(cli, req, &mut |done, total| bar.tick(out, done, total))?;
    drop(bar);
    match reply {
        AdminReply::FailGroups {
            groups,
            mirror_state,
            resync_bytes_left,
        } => {
            let opts = output_opts(cli);
            let l = output::listing_of("failgrp list", output::FAILGRP_FIELDS, &groups);
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "mirror_state": mirror_state,
                        "resync_bytes_left": resync_bytes_left,
                        "failure_groups": l.json_rows(&opts)?,
                    }))?
                )?;
                return Ok(());
            }
            l.print_table(&opts, out)?;
            if opts.scripted() {
                return Ok(());
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
            pvs: spec_strings(pvs)?,
            force: *force,
        },
        // OLD names a PV of the pool by its path: a relative one means the user's directory.
        PvCmd::Replace { old, new, force } => AdminRequest::PvReplace {
            old: absolute(Path::new(old))?.display().to_string(),
            new: spec_string(new)?,
            force: *force,
        },
        PvCmd::ReplaceCancel => return copy_cancel(cli, out),
    };
    // A single-copy replace counts the segments it copies; a mirrored one copies nothing now
    // (resync fills the new PV) and reports (0, 1) once.
    let mut bar = Progress::new("pv replace", cli.json, SEG_BLOCKS * BLOCK_U64);
    let reply = admin_with_progress(cli, req, &mut |done, total| {
        if (done, total) != (0, 1) {
            bar.tick(out, done, total)
        }
    })?;
    drop(bar);
    match reply {
        AdminReply::Pvs { pvs } => print_pvs(cli, &pvs, out)?,
        other => bail!("unexpected reply {other:?}"),
    }
    Ok(())
}

/// `pv list` (and what `pv add`/`pv replace` leave): sizes in bytes, exact from the pool's
/// status where it knows the PV.
fn print_pvs(cli: &Cli, pvs: &[crate::pool::PvListEntry], out: &mut dyn Write) -> Result<()> {
    let exact: Vec<crate::pool::PvInfo> = match admin(cli, AdminRequest::PoolStatus) {
        Ok(AdminReply::Status(st)) => st.pvs,
        _ => Vec::new(),
    };
    let mut l = output::Listing::new("pv list", output::PV_FIELDS);
    for p in pvs {
        let size = exact
            .iter()
            .find(|e| e.name == p.name)
            .map_or(p.size_mb << 20, |e| e.size);
        let mut row = output::row_of(p);
        row.remove("size_mb");
        row.insert("size".into(), size.into());
        l.push(row);
    }
    l.print(&output_opts(cli), out)?;
    Ok(())
}

/// `sspctl scrub`: start, wait, status, cancel.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ScrubArgs {
    #[command(subcommand)]
    pub cmd: Option<ScrubCmd>,
    /// Wait for the scrub to finish and print its report (offline it always runs to the end)
    #[arg(long)]
    pub wait: bool,
    /// Rate limit in bytes per second, e.g. 200M (0: unlimited); default sspd's --scrub-rate
    /// (64M unless set)
    #[arg(long, value_parser = super::size::bytes_arg)]
    pub rate: Option<u64>,
}

#[derive(clap::Subcommand, Debug)]
pub enum ScrubCmd {
    /// State, bytes done/total, rate, errors found/repaired and start time of the running or
    /// last scrub
    Status,
    /// Stop the running scrub at its next slice boundary (the pool stays consistent)
    Cancel,
}

pub fn scrub(cli: &Cli, a: &ScrubArgs, out: &mut dyn Write) -> Result<()> {
    let req = match a.cmd {
        Some(ScrubCmd::Status) => AdminRequest::ScrubStatus,
        Some(ScrubCmd::Cancel) => AdminRequest::ScrubCancel,
        None => AdminRequest::Scrub {
            wait: a.wait,
            rate: a.rate,
        },
    };
    let mut bar = Progress::new("scrub", cli.json, 1);
    let reply = admin_with_progress(cli, req, &mut |done, total| bar.tick(out, done, total))?;
    drop(bar);
    match reply {
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
        AdminReply::ScrubState(st) => {
            let opts: OutputOpts = output_opts(cli);
            if a.cmd.is_some() && output::report("scrub status", &st, &opts, out)?.is_some() {
                return Ok(());
            }
            if cli.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&st)?)?;
            } else if a.cmd.is_none() {
                writeln!(
                    out,
                    "scrub started in the background: {} MiB to verify at {}; see `sspctl scrub status`",
                    st.bytes_total.div_ceil(1 << 20),
                    rate_text(st.rate)
                )?;
            } else {
                print_scrub_status(&st, out)?;
            }
        }
        other => bail!("unexpected reply {other:?}"),
    }
    Ok(())
}

fn rate_text(rate: u64) -> String {
    if rate == 0 {
        "no rate limit".into()
    } else {
        format!("{} MiB/s", rate as f64 / f64::from(1u32 << 20))
    }
}

fn print_scrub_status(st: &crate::pool::scrub::ScrubStatus, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "State:        {}", st.state)?;
    if st.state == "none" {
        return Ok(());
    }
    writeln!(out, "Pass:         {} (position {})", st.phase, st.position)?;
    let pct = if st.bytes_total == 0 {
        100.0
    } else {
        (st.bytes_done as f64 * 100.0 / st.bytes_total as f64).min(100.0)
    };
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    writeln!(
        out,
        "Progress:     {:.1} of {:.1} MiB ({pct:.1}%)",
        mib(st.bytes_done),
        mib(st.bytes_total)
    )?;
    writeln!(out, "Rate limit:   {}", rate_text(st.rate))?;
    let r = &st.report;
    writeln!(
        out,
        "Errors:       {} found, {} repaired, {} unrepairable",
        r.errors_found, r.errors_repaired, r.unrepairable
    )?;
    writeln!(
        out,
        "Started:      {}",
        crate::pool::scrub::fmt_time(st.started)
    )?;
    if st.finished > 0 {
        writeln!(
            out,
            "Stopped:      {}",
            crate::pool::scrub::fmt_time(st.finished)
        )?;
    }
    if st.resumed > 0 {
        writeln!(
            out,
            "Resumed:      {} time(s) after sspd restarted",
            st.resumed
        )?;
    }
    if !st.error.is_empty() {
        writeln!(out, "Error:        {}", st.error)?;
    }
    Ok(())
}

/// `pv replace-cancel`, `image capture-cancel`: cancel the running long copies.
pub fn copy_cancel(cli: &Cli, out: &mut dyn Write) -> Result<()> {
    match admin(cli, AdminRequest::CopyCancel)? {
        AdminReply::CopiesCancelled { running } => {
            if cli.json {
                writeln!(out, "{}", serde_json::json!({ "cancelled": running }))?;
            } else {
                writeln!(out, "cancelled {running} running copy(ies)")?;
            }
            Ok(())
        }
        other => bail!("unexpected reply {other:?}"),
    }
}
