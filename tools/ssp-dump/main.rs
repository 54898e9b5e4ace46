//! ssp-dump: print a pool's on-disk state from its PVs alone (no pool directory, no sspd),
//! like thin_dump and zdb. Opens every PV read-only and never writes.

mod pvs;
mod report;
mod trees;

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "ssp-dump",
    version,
    about = "Print an ssp pool's superblocks, checkpoints, journal, segment table, volumes and \
             a volume's block map, read from its PVs (read-only)",
    after_help = "Examples:\n  ssp-dump /srv/pool/pv0.img\n  ssp-dump --volume vm1 --json \
                  /dev/sdb /dev/sdc\n\nThe trees are the newest checkpoint's; journal blocks \
                  still to be replayed (a pool that was not closed cleanly) are marked 'replay'."
)]
pub struct Args {
    /// The pool's PVs (files or block devices); give all of them for a pool with several
    #[arg(required = true, value_name = "PV")]
    pub pvs: Vec<PathBuf>,
    /// Also print the block map of this volume (LU, snapshot, image or clone), by name or id
    #[arg(long, value_name = "NAME|ID")]
    pub volume: Option<String>,
    /// One JSON document instead of text
    #[arg(long)]
    pub json: bool,
}

fn main() {
    let args = Args::parse();
    let out = std::io::stdout();
    if let Err(e) = report::run(&args, &mut out.lock()) {
        eprintln!("ssp-dump: error: {e:#}");
        std::process::exit(1);
    }
}
