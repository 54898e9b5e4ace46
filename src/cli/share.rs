//! `sspctl` verbs for sharing: snapshots, client images, linked clones, `file stat`,
//! `file layout` and `diff`.

use super::output::{self, Field, OutputOpts};
use super::progress::Progress;
use super::{admin, admin_with_progress, output_opts, print_lus, Cli};
use crate::admin::{AdminReply, AdminRequest};
use crate::pool::activation::Activation;
use crate::pool::{FileStat, LayoutExtent, LuInfo};
use anyhow::{bail, Result};
use clap::Subcommand;
use std::io::Write;

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Snapshot one or more LUs or images in one consistent step: LU@SNAP [LU2@SNAP ...]
    #[command(after_help = SNAPSHOT_EXAMPLES)]
    Create {
        /// Snapshots to take, each LU@SNAP or IMAGE@SNAP; all are taken at the same instant
        #[arg(required = true, value_name = "LU@SNAP")]
        names: Vec<String>,
    },
    /// List snapshots (of one LU or image, or all)
    #[command(visible_alias = "ls")]
    List {
        /// Only the snapshots of this LU or image
        base: Option<String>,
    },
    /// Roll an LU back to any of its snapshots (an undo snapshot is taken first); refused
    /// while clients are attached to the LU, unless --force
    Rollback {
        /// The snapshot to go back to, LU@SNAP
        #[arg(value_name = "LU@SNAP")]
        name: String,
        /// Disconnect the LU's clients first (their requests in flight finish)
        #[arg(long)]
        force: bool,
        /// Keep no undo snapshot: the LU's state before the rollback is gone
        #[arg(long)]
        no_undo: bool,
        /// Keep only this many LU@undo-* snapshots of the LU, the newest (default: the pool's
        /// `snapshot keep-undo` setting, 3 unless set)
        #[arg(long, value_name = "K")]
        keep_undo: Option<u32>,
    },
    /// Remove the oldest snapshots of an LU beyond the N newest; snapshots clones were made
    /// from, held ones and ones clients have open are kept, with the reason
    #[command(after_help = PRUNE_EXAMPLES)]
    Prune {
        /// The LU (or client image) whose snapshots to prune
        lu: String,
        /// How many of the newest snapshots to keep whatever their age
        #[arg(long, value_name = "N")]
        keep: u32,
        /// Remove only snapshots at least this old, e.g. 7d, 12h, 30m
        #[arg(long, value_name = "DURATION", value_parser = duration_secs)]
        older_than: Option<u64>,
        /// Show what would be removed; remove nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Place a hold TAG on a snapshot: it cannot be removed (remove, prune, undo limit) until
    /// every hold is released
    #[command(after_help = HOLD_EXAMPLES)]
    Hold {
        /// The snapshot, LU@SNAP or IMAGE@SNAP
        #[arg(value_name = "LU@SNAP")]
        name: String,
        /// The hold's name (letters, digits, '.', '_', '-', ':'; at most 64)
        tag: String,
    },
    /// Release hold TAG of a snapshot
    Release {
        /// The snapshot, LU@SNAP or IMAGE@SNAP
        #[arg(value_name = "LU@SNAP")]
        name: String,
        /// The hold to release
        tag: String,
    },
    /// List a snapshot's holds
    Holds {
        /// The snapshot, LU@SNAP or IMAGE@SNAP
        #[arg(value_name = "LU@SNAP")]
        name: String,
    },
    /// Show, or set, how many automatic LU@undo-* snapshots each LU keeps after a rollback
    KeepUndo {
        /// The new limit (0: none kept); without it, print the current one
        #[arg(value_name = "K")]
        keep: Option<u32>,
    },
    /// Remove a snapshot; clones made from it keep working
    #[command(visible_alias = "rm")]
    Remove {
        /// The snapshot, LU@SNAP or IMAGE@SNAP
        #[arg(value_name = "LU@SNAP")]
        name: String,
        /// Remove it even while clients have it open: they are disconnected first
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Copy an LU (or LU@SNAP) into a new client image
    #[command(after_help = IMAGE_EXAMPLES)]
    Capture {
        /// The LU or snapshot (LU@SNAP) to copy; a snapshot gives a consistent image
        src: String,
        /// Name of the new client image
        image: String,
        /// Rate limit in bytes copied per second, e.g. 200M (default: unlimited)
        #[arg(long, value_parser = super::size::bytes_arg)]
        rate: Option<u64>,
    },
    /// Stop running captures (and any single-copy `pv replace`) at a slice boundary; a
    /// cancelled capture leaves nothing behind
    CaptureCancel,
    /// List client images
    #[command(visible_alias = "ls")]
    List,
    /// Remove a client image (its snapshots first)
    #[command(visible_alias = "rm")]
    Remove {
        /// The client image to remove
        name: String,
        /// Remove it even while clients have it open: they are disconnected first
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum FileCmd {
    /// Size, blocks, owned and shared blocks and block debt of an LU, clone, snapshot or image
    Stat {
        /// LU, clone, LU@SNAP or image
        name: String,
    },
    /// Per 1 MiB extent: owned or shared, and where its blocks live
    Layout {
        /// LU, clone, LU@SNAP or image
        name: String,
    },
}

pub(super) const SNAPSHOT_EXAMPLES: &str = "Examples:
  sspctl snapshot create vm1@before-upgrade
  sspctl snapshot create db@nightly logs@nightly
  sspctl snapshot ls vm1
  sspctl snapshot rollback vm1@before-upgrade
  sspctl snapshot rm vm1@before-upgrade";

pub(super) const PRUNE_EXAMPLES: &str = "Examples:
  sspctl snapshot prune vm1 --keep 7 --dry-run
  sspctl snapshot prune vm1 --keep 3 --older-than 14d
  sspctl snapshot prune db --keep 24 --older-than 2d --json";

pub(super) const HOLD_EXAMPLES: &str = "Examples:
  sspctl snapshot hold vm1@monday backup
  sspctl snapshot holds vm1@monday
  sspctl snapshot release vm1@monday backup";

/// A duration such as `7d`, `12h` or `1h 30m` (humantime), in whole seconds.
fn duration_secs(s: &str) -> Result<u64, String> {
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|e| format!("bad duration {s:?} ({e}): expected e.g. 7d, 12h, 30m"))
}

pub(super) const IMAGE_EXAMPLES: &str = "Examples:
  sspctl snapshot create golden@v1
  sspctl image capture golden@v1 golden-v1 --rate 200M
  sspctl image ls
  sspctl clone golden-v1 web1";

fn json_line(out: &mut dyn Write, v: &impl serde::Serialize) -> Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}

pub fn snapshot(cli: &Cli, cmd: &SnapshotCmd, out: &mut dyn Write) -> Result<()> {
    let req = match cmd {
        SnapshotCmd::Create { names } => AdminRequest::SnapshotCreate {
            names: names.clone(),
        },
        SnapshotCmd::List { base } => AdminRequest::SnapshotList { base: base.clone() },
        SnapshotCmd::Rollback {
            name,
            force,
            no_undo,
            keep_undo,
        } => AdminRequest::SnapshotRollback {
            name: name.clone(),
            force: *force,
            no_undo: *no_undo,
            keep_undo: *keep_undo,
        },
        SnapshotCmd::Prune {
            lu,
            keep,
            older_than,
            dry_run,
        } => AdminRequest::SnapshotPrune {
            lu: lu.clone(),
            keep: *keep,
            older_than: *older_than,
            dry_run: *dry_run,
        },
        SnapshotCmd::Hold { name, tag } => AdminRequest::SnapshotHold {
            name: name.clone(),
            tag: tag.clone(),
        },
        SnapshotCmd::Release { name, tag } => AdminRequest::SnapshotRelease {
            name: name.clone(),
            tag: tag.clone(),
        },
        SnapshotCmd::Holds { name } => AdminRequest::SnapshotHolds { name: name.clone() },
        SnapshotCmd::KeepUndo { keep } => AdminRequest::SnapshotKeepUndo { keep: *keep },
        SnapshotCmd::Remove { name, force } => AdminRequest::SnapshotRemove {
            name: name.clone(),
            force: *force,
        },
    };
    match admin(cli, req)? {
        AdminReply::Snapshots { pool, snapshots } => {
            if matches!(cmd, SnapshotCmd::List { .. }) {
                let images = match admin(cli, AdminRequest::ImageList)? {
                    AdminReply::Lus { lus, .. } => lus,
                    other => bail!("unexpected reply {other:?}"),
                };
                print_snapshots(&output_opts(cli), &pool, &snapshots, &images, out)?;
            } else if cli.json {
                json_line(out, &output::volumes_json(&snapshots))?;
            } else {
                for s in &snapshots {
                    writeln!(out, "created snapshot {}", s.name)?;
                }
            }
        }
        AdminReply::RolledBack { lu, undo, pruned } => {
            if cli.json {
                json_line(
                    out,
                    &serde_json::json!({ "lu": lu, "undo_snapshot": undo, "pruned": pruned }),
                )?;
            } else {
                if undo.is_empty() {
                    writeln!(out, "rolled {} back; no undo snapshot kept", lu.name)?;
                } else {
                    writeln!(
                        out,
                        "rolled {} back; its previous state is kept as snapshot {undo}",
                        lu.name
                    )?;
                }
                if !pruned.is_empty() {
                    writeln!(out, "removed older undo snapshots: {}", pruned.join(", "))?;
                }
            }
        }
        AdminReply::Pruned {
            lu,
            dry_run,
            snapshots,
        } => {
            let opts = output_opts(cli);
            let l = output::listing_of("snapshot prune", PRUNE_FIELDS, &snapshots);
            if opts.json {
                return json_line(
                    out,
                    &serde_json::json!({ "lu": lu, "dry_run": dry_run, "snapshots": l.json_rows(&opts)? }),
                );
            }
            l.print_table(&opts, out)?;
            if !opts.scripted() {
                let gone = snapshots.iter().filter(|e| e.action != "keep").count();
                let kept = snapshots.len() - gone;
                if dry_run {
                    writeln!(
                        out,
                        "{gone} snapshot(s) of {lu} would be removed, {kept} kept (dry run)"
                    )?;
                } else {
                    writeln!(out, "{gone} snapshot(s) of {lu} removed, {kept} kept")?;
                }
            }
        }
        AdminReply::Holds { name, holds } => {
            let opts = output_opts(cli);
            let l = output::listing_of("snapshot holds", HOLD_FIELDS, &holds);
            if opts.json {
                return json_line(
                    out,
                    &serde_json::json!({ "name": name, "holds": l.json_rows(&opts)? }),
                );
            }
            if holds.is_empty() && !opts.scripted() {
                writeln!(out, "{name} has no holds")?;
            } else {
                l.print_table(&opts, out)?;
            }
        }
        AdminReply::KeepUndo { keep_undo } => {
            if cli.json {
                json_line(out, &serde_json::json!({ "keep_undo": keep_undo }))?;
            } else {
                writeln!(
                    out,
                    "rollback keeps the {keep_undo} newest undo snapshot(s) of each LU"
                )?;
            }
        }
        AdminReply::Freed {
            name,
            freed_blocks,
            clones,
        } => freed(cli.json, &name, freed_blocks, &clones, out)?,
        other => bail!("unexpected reply {other:?}"),
    }
    Ok(())
}

/// `snapshot prune` rows.
const PRUNE_FIELDS: &[Field] = &[
    Field::new("name", "NAME", true),
    Field::new("created", "CREATED", true),
    Field::new("action", "ACTION", true),
    Field::new("reason", "REASON", true),
    Field::new("freed_blocks", "FREED_BLOCKS", false),
];

/// `snapshot holds` rows.
const HOLD_FIELDS: &[Field] = &[
    Field::new("name", "NAME", true),
    Field::new("tag", "TAG", true),
    Field::new("since", "SINCE", true),
];

fn freed(
    json: bool,
    name: &str,
    blocks: u64,
    clones: &[String],
    out: &mut dyn Write,
) -> Result<()> {
    if json {
        let mut v = serde_json::json!({ "removed": name, "freed_blocks": blocks, "freed_bytes": blocks * 4096 });
        if !clones.is_empty() {
            v["clones"] = serde_json::json!(clones);
        }
        json_line(out, &v)
    } else {
        if !clones.is_empty() {
            writeln!(
                out,
                "{name} was the origin of clone(s) {}: they keep their blocks and keep working",
                clones.join(", ")
            )?;
        }
        writeln!(
            out,
            "removed {name}: {blocks} blocks ({} KiB) returned to the pool",
            blocks * 4
        )?;
        Ok(())
    }
}

/// The SSP `snapshot -list` layout: the snapshots, then the client-image section. With `-o`
/// or `-H`, the snapshots alone; JSON has both (`snapshots`, `images`).
fn print_snapshots(
    opts: &OutputOpts,
    pool: &str,
    snaps: &[LuInfo],
    images: &[LuInfo],
    out: &mut dyn Write,
) -> Result<()> {
    let titled = |title: &'static str| -> Vec<Field> {
        output::SNAPSHOT_FIELDS
            .iter()
            .map(|f| {
                if f.name == "name" {
                    Field::new("name", title, true)
                } else {
                    f.clone()
                }
            })
            .collect()
    };
    let snaps = output::volumes("snapshot list", &titled("Lu(Snapshot)Name"), snaps);
    let images = output::volumes("snapshot list", &titled("Lu(Client Image)Name"), images);
    if opts.json {
        return json_line(
            out,
            &serde_json::json!({
                "pool": pool,
                "snapshots": snaps.json_rows(opts)?,
                "images": images.json_rows(opts)?,
            }),
        );
    }
    if opts.scripted() {
        snaps.print_table(opts, out)?;
        return Ok(());
    }
    writeln!(out, "POOL_NAME: {pool}")?;
    snaps.print_table(opts, out)?;
    writeln!(out)?;
    images.print_table(opts, out)?;
    Ok(())
}

pub fn image(cli: &Cli, cmd: &ImageCmd, out: &mut dyn Write) -> Result<()> {
    match cmd {
        ImageCmd::Capture { src, image, rate } => {
            let req = AdminRequest::ImageCapture {
                src: src.clone(),
                name: image.clone(),
                rate: *rate,
            };
            // The pool counts the capture in data blocks.
            let mut bar = Progress::new("capture", cli.json, crate::format::BLOCK_U64);
            let reply =
                admin_with_progress(cli, req, &mut |done, total| bar.tick(out, done, total))?;
            drop(bar);
            match reply {
                AdminReply::Lus { lus, .. } => {
                    if cli.json {
                        writeln!(
                            out,
                            "{}",
                            serde_json::json!({ "captured": output::volumes_json(&lus) })
                        )?;
                    } else {
                        for l in &lus {
                            writeln!(
                                out,
                                "captured {src} into client image {} ({}, {} blocks of data)",
                                l.name,
                                super::size::human_bytes(l.size),
                                l.mapped_blocks
                            )?;
                        }
                    }
                }
                other => bail!("unexpected reply {other:?}"),
            }
        }
        ImageCmd::CaptureCancel => super::mirror::copy_cancel(cli, out)?,
        ImageCmd::List => match admin(cli, AdminRequest::ImageList)? {
            AdminReply::Lus { pool, lus } => {
                print_lus(&output_opts(cli), "image list", &pool, &lus, out)?
            }
            other => bail!("unexpected reply {other:?}"),
        },
        ImageCmd::Remove { name, force } => match admin(
            cli,
            AdminRequest::ImageRemove {
                name: name.clone(),
                force: *force,
            },
        )? {
            AdminReply::Freed {
                name,
                freed_blocks,
                clones,
            } => freed(cli.json, &name, freed_blocks, &clones, out)?,
            other => bail!("unexpected reply {other:?}"),
        },
    }
    Ok(())
}

pub fn clone(
    cli: &Cli,
    src: &str,
    name: &str,
    activation: Option<&Activation>,
    out: &mut dyn Write,
) -> Result<()> {
    let req = AdminRequest::Clone {
        src: src.into(),
        name: name.into(),
        activation: activation.cloned(),
    };
    match admin(cli, req)? {
        AdminReply::Lus { lus, .. } => {
            if activation.is_some() && !lus.iter().any(|l| l.kind == "image") {
                // An sspd from before --activation ignores the field.
                bail!(
                    "sspd made the clone {name} but no config disk: it predates --activation; \
                     restart it with this version, then `lu remove {name}` and clone again"
                );
            }
            if cli.json {
                json_line(out, &output::volumes_json(&lus))?;
            } else {
                for l in &lus {
                    if l.kind == "image" {
                        writeln!(
                            out,
                            "created activation config disk {} for {name}: a read-only client image \
                             (ISO 9660 \"{}\": meta-data, user-data, {}ovf-env.xml; {})",
                            l.name,
                            crate::pool::activation::VOLUME_LABEL,
                            if activation.is_some_and(|a| a.ip.is_some()) {
                                "network-config, "
                            } else {
                                ""
                            },
                            activation.map(|a| a.to_string()).unwrap_or_default()
                        )?;
                    } else {
                        writeln!(
                            out,
                            "created linked clone {} of {src} ({}, sharing all {} blocks of data)",
                            l.name,
                            super::size::human_bytes(l.size),
                            l.mapped_blocks
                        )?;
                    }
                }
            }
        }
        other => bail!("unexpected reply {other:?}"),
    }
    Ok(())
}

pub fn file(cli: &Cli, cmd: &FileCmd, out: &mut dyn Write) -> Result<()> {
    match cmd {
        FileCmd::Stat { name } => {
            match admin(cli, AdminRequest::FileStat { name: name.clone() })? {
                AdminReply::Stat(st) => print_stat(&output_opts(cli), &st, out),
                other => bail!("unexpected reply {other:?}"),
            }
        }
        FileCmd::Layout { name } => {
            match admin(cli, AdminRequest::FileLayout { name: name.clone() })? {
                AdminReply::Layout { name, extents } => {
                    print_layout(&output_opts(cli), &name, &extents, out)
                }
                other => bail!("unexpected reply {other:?}"),
            }
        }
    }
}

fn print_stat(opts: &OutputOpts, st: &FileStat, out: &mut dyn Write) -> Result<()> {
    if output::report("file stat", st, opts, out)?.is_some() {
        return Ok(());
    }
    writeln!(out, "Name:           {} ({})", st.name, st.kind)?;
    if !st.parent.is_empty() {
        writeln!(out, "Parent:         {}", st.parent)?;
    }
    writeln!(out, "Udid:           {}", st.udid)?;
    writeln!(out, "Size            {}", st.size)?;
    writeln!(out, "Number Blocks   {}", st.number_blocks)?;
    writeln!(out, "Data Blocks     {}", st.data_blocks)?;
    writeln!(out, "Pool Block Size {}", st.pool_block_size)?;
    writeln!(out, "Tier: {}", st.tier)?;
    writeln!(out, "Owned Blocks    {}", st.owned_blocks)?;
    writeln!(out, "Shared Blocks   {}", st.shared_blocks)?;
    writeln!(out, "Max Blocks      {}", st.max_blocks)?;
    writeln!(out, "Block Debt      {}", st.block_debt)?;
    Ok(())
}

fn print_layout(
    opts: &OutputOpts,
    name: &str,
    ext: &[LayoutExtent],
    out: &mut dyn Write,
) -> Result<()> {
    let l = output::listing_of("file layout", output::LAYOUT_FIELDS, ext);
    if opts.json {
        return json_line(
            out,
            &serde_json::json!({ "name": name, "extents": l.json_rows(opts)? }),
        );
    }
    if opts.scripted() {
        l.print_table(opts, out)?;
        return Ok(());
    }
    for e in ext {
        writeln!(
            out,
            "{:#x}-{:#x} {} ({} owned, {} shared blocks)",
            e.start, e.end, e.state, e.owned_blocks, e.shared_blocks
        )?;
        for p in &e.placement {
            writeln!(
                out,
                "    PP {} {:#x} {} blocks (failure group {})",
                p.pv, p.offset, p.blocks, p.failure_group
            )?;
        }
    }
    Ok(())
}

pub fn diff(cli: &Cli, from: &str, to: &str, out: &mut dyn Write) -> Result<()> {
    let req = AdminRequest::Diff {
        from: from.into(),
        to: to.into(),
    };
    match admin(cli, req)? {
        AdminReply::Diff { from, to, extents } => {
            let opts = output_opts(cli);
            let l = output::listing_of("diff", output::DIFF_FIELDS, &extents);
            if opts.json {
                return json_line(
                    out,
                    &serde_json::json!({ "from": from, "to": to, "extents": l.json_rows(&opts)? }),
                );
            }
            if opts.scripted() {
                l.print_table(&opts, out)?;
                return Ok(());
            }
            let total: u64 = extents.iter().map(|e| e.length).sum();
            for e in &extents {
                writeln!(
                    out,
                    "{:#x}-{:#x} changed ({} bytes)",
                    e.offset,
                    e.offset + e.length,
                    e.length
                )?;
            }
            writeln!(
                out,
                "{} changed extents, {total} bytes, from {from} to {to}",
                extents.len()
            )?;
        }
        other => bail!("unexpected reply {other:?}"),
    }
    Ok(())
}
