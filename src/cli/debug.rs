//! Hidden test helpers for `sspctl debug ...`: a write loop that a kill -9 test can shoot.

use crate::pool::dir::PoolDir;
use crate::pool::Options;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// A 4 KiB block that encodes (lba, version); every write of the loop is distinguishable.
pub fn pattern_block(lba: u64, version: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    let mut x =
        lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ 1;
    for chunk in b.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    b
}

/// The LU block written by write number `i` (1-based) of a loop with this seed.
pub fn loop_lba(seed: u64, i: u64, blocks: u64) -> u64 {
    let mut x = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) % blocks
}

/// Write `pattern_block(loop_lba(i), i)` for i = 1.., flushing every `flush_every` writes and
/// recording the last acknowledged `i` in `ack_file` (fsynced) after each flush.
pub fn write_loop(
    dir: &Path,
    lu: &str,
    blocks: u64,
    seed: u64,
    flush_every: u64,
    ack_file: &Path,
    max_writes: u64,
) -> Result<()> {
    let pd = PoolDir::open(
        dir,
        Options {
            checkpoint_writes: 2000,
            ..Options::default()
        },
    )?;
    let pool = &pd.pool;
    let id = match pool.lu_id(lu) {
        Ok(id) => id,
        Err(_) => pool.lu_create(lu, blocks * 4096)?.id,
    };
    for i in 1..=max_writes {
        let lba = loop_lba(seed, i, blocks);
        pool.write(id, lba * 4096, &pattern_block(lba, i), false)?;
        if i % flush_every == 0 {
            pool.flush()?;
            let tmp = ack_file.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp).context("ack file")?;
            writeln!(f, "{i}")?;
            f.sync_all()?;
            std::fs::rename(&tmp, ack_file)?;
        }
    }
    Ok(())
}

/// What `sspctl debug resync-bench` measures with.
#[derive(Debug)]
pub struct ResyncBench {
    /// Directory for the two PV files (`pv0.img`, `pv1.img`; overwritten).
    pub dir: std::path::PathBuf,
    /// Size of each PV file (sparse).
    pub pv_size: u64,
    /// LU size, written in full before the mirror is made.
    pub fill: u64,
    /// Data changed while the second group is away, in percent of `pv_size`.
    pub change_pct: f64,
    /// Drop the PV files' pages from the page cache before each timed resync.
    pub cold: bool,
    /// Scrub both copies at the end (reads everything twice).
    pub verify: bool,
}

const MIB: u64 = 1 << 20;

/// Non-zero pseudo-random bytes, different for every `seed`.
fn fill_buf(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for c in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
}

/// Write `path`'s dirty pages back and drop its pages from the page cache (only this file's:
/// the machine's other work keeps its cache).
fn drop_file_cache(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    f.sync_data()?;
    // SAFETY: a valid descriptor; fadvise only drops clean cached pages of this file.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        anyhow::bail!("posix_fadvise {}: error {r}", path.display());
    }
    Ok(())
}

fn file_dev(path: &Path) -> Result<std::sync::Arc<dyn crate::dev::BlockDev>> {
    Ok(std::sync::Arc::new(
        crate::dev::FileDev::open(path).with_context(|| format!("open {}", path.display()))?,
    ))
}

/// Resync until done; (bytes copied, seconds).
fn timed_resync(pool: &crate::pool::Pool, what: &str) -> Result<(u64, f64)> {
    let t = std::time::Instant::now();
    let mut last = 0;
    let copied = pool.resync_wait(&mut |done, left| {
        if done >> 28 != last >> 28 || left == 0 {
            eprint!(
                "\r{what}: {} MiB copied, {} MiB left   ",
                done >> 20,
                left >> 20
            );
            last = done;
        }
    })?;
    let secs = t.elapsed().as_secs_f64();
    eprintln!();
    let st = pool.status();
    if st.mirror_state != "SYNCED" {
        anyhow::bail!("{what}: mirror state {} after resync", st.mirror_state);
    }
    Ok((copied, secs))
}

/// One row of the result table.
struct Row {
    what: String,
    changed: u64,
    pending: u64,
    copied: u64,
    secs: f64,
}

/// Time a full resync (the second failure group added to a pool whose LU is full of data) and
/// the resync after `change_pct` % of the pool changed while the second group's PV file was
/// away (renamed while the pool was closed, so the pool opens degraded; renamed back, so it
/// opens, rejoins and resyncs only the stale segments), once with random 4 KiB writes and once
/// with 1 MiB writes at random 1 MiB offsets. Prints a Markdown table.
pub fn resync_bench(a: &ResyncBench, out: &mut dyn Write) -> Result<()> {
    use crate::pool::{CreateOptions, Pool};
    std::fs::create_dir_all(&a.dir).with_context(|| format!("create {}", a.dir.display()))?;
    let (pv0, pv1, away) = (
        a.dir.join("pv0.img"),
        a.dir.join("pv1.img"),
        a.dir.join("pv1.away"),
    );
    let _ = std::fs::remove_file(&away);
    let fill = a.fill / MIB * MIB;
    let cold = |what: &str| -> Result<()> {
        if a.cold {
            for p in [&pv0, &pv1] {
                drop_file_cache(p).with_context(|| format!("{what}: drop page cache"))?;
            }
        }
        Ok(())
    };

    // The single-copy pool, its LU written in full.
    let dev0: std::sync::Arc<dyn crate::dev::BlockDev> = std::sync::Arc::new(
        crate::dev::FileDev::create(&pv0, a.pv_size)
            .with_context(|| format!("create {}", pv0.display()))?,
    );
    let copts = CreateOptions {
        name: "resync-bench".into(),
        journal_blocks: 4096,
    };
    let pool = Pool::create(vec![dev0], &copts, Options::default())?;
    let lu = pool.lu_create("data", fill)?.id;
    let t = std::time::Instant::now();
    let mut buf = vec![0u8; MIB as usize];
    for i in 0..fill / MIB {
        fill_buf(&mut buf, i + 1);
        pool.write(lu, i * MIB, &buf, false)?;
    }
    pool.flush()?;
    pool.checkpoint()?;
    let fill_secs = t.elapsed().as_secs_f64();
    let used = pool.status().used_bytes;
    eprintln!(
        "filled {} MiB in {fill_secs:.1} s; pool uses {} MiB",
        fill >> 20,
        used >> 20
    );

    // Full copy: the second failure group is added and resynced from scratch.
    let dev1: std::sync::Arc<dyn crate::dev::BlockDev> = std::sync::Arc::new(
        crate::dev::FileDev::create(&pv1, a.pv_size)
            .with_context(|| format!("create {}", pv1.display()))?,
    );
    cold("full resync")?;
    let t = std::time::Instant::now();
    pool.failgrp_create("fg2", vec![dev1])?;
    let pending = pool.resync_left();
    let (copied, _) = timed_resync(&pool, "full resync")?;
    let secs = t.elapsed().as_secs_f64();
    let mut rows = vec![Row {
        what: format!(
            "full copy (failgrp create on a pool with a {} MiB LU written in full)",
            fill >> 20
        ),
        changed: 0,
        pending,
        copied,
        secs,
    }];
    pool.close()?;

    let change = (a.pv_size as f64 * a.change_pct / 100.0) as u64;
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for (round, (what, io)) in [("random 4 KiB writes", 4096u64), ("1 MiB writes", MIB)]
        .into_iter()
        .enumerate()
    {
        // The second group's PV goes away while the pool is closed: it opens degraded.
        std::fs::rename(&pv1, &away)?;
        let pool = Pool::open(vec![file_dev(&pv0)?], Options::default())?;
        let st = pool.status();
        if st.mirror_state != "DEGRADED" {
            anyhow::bail!(
                "without {}: mirror state {}",
                pv1.display(),
                st.mirror_state
            );
        }
        let mut block = vec![0u8; io as usize];
        let writes = change / io;
        for i in 0..writes {
            fill_buf(&mut block, ((round as u64 + 2) << 40) | i);
            pool.write(lu, next(fill / io) * io, &block, false)?;
            if (i + 1) % (4 * MIB / io) == 0 {
                pool.flush()?;
            }
        }
        pool.close()?;
        // Back: the pool opens with both, the PV rejoins and only stale segments are copied.
        std::fs::rename(&away, &pv1)?;
        let pool = Pool::open(vec![file_dev(&pv0)?, file_dev(&pv1)?], Options::default())?;
        let pending = pool.resync_left();
        cold(what)?;
        let (copied, secs) = timed_resync(&pool, what)?;
        rows.push(Row {
            what: format!("after {}% of the pool changed ({what})", a.change_pct),
            changed: writes * io,
            pending,
            copied,
            secs,
        });
        if a.verify && round == 1 {
            let t = std::time::Instant::now();
            let rep = pool.scrub()?;
            eprintln!(
                "scrub: {} blocks checked, {} errors in {:.1} s",
                rep.blocks_checked,
                rep.errors_found,
                t.elapsed().as_secs_f64()
            );
            if rep.errors_found != 0 {
                anyhow::bail!("scrub found {} bad copies after resync", rep.errors_found);
            }
        }
        pool.close()?;
    }

    writeln!(
        out,
        "Pool: two {} MiB sparse PV files (one per failure group); LU of {} MiB written in full \
         in {fill_secs:.1} s ({:.0} MiB/s, single copy); pool data in use {} MiB; page cache of \
         the PV files {} before each timed resync.",
        a.pv_size >> 20,
        fill >> 20,
        (fill >> 20) as f64 / fill_secs,
        used >> 20,
        if a.cold { "dropped" } else { "kept" }
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| resync | data changed (MiB) | stale before resync (MiB) | copied (MiB) | seconds | MiB/s | copied vs full | time vs full |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    let (full_b, full_s) = (rows[0].copied as f64, rows[0].secs);
    for r in &rows {
        writeln!(
            out,
            "| {} | {} | {} | {} | {:.2} | {:.0} | {:.2} % | {:.2} % |",
            r.what,
            if r.changed == 0 {
                "-".to_string()
            } else {
                format!("{:.1}", r.changed as f64 / MIB as f64)
            },
            r.pending >> 20,
            r.copied >> 20,
            r.secs,
            r.copied as f64 / MIB as f64 / r.secs,
            r.copied as f64 / full_b * 100.0,
            r.secs / full_s * 100.0
        )?;
    }
    Ok(())
}

/// `sspctl debug seal [--to SEAL]`: where the last writer's journal ends (read-only open), or
/// open for writing with the journal replayed only up to `to` and print the seal recorded.
pub fn seal(
    dir: &Path,
    to: Option<crate::format::Seal>,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let pd = PoolDir::open(
        dir,
        Options {
            read_only: to.is_none(),
            replay_to: to,
            ..Options::default()
        },
    )?;
    let st = pd.pool.status();
    pd.pool.close()?;
    let s = if to.is_some() { st.seal } else { st.log_end }.context("the pool recorded no seal")?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
    } else {
        writeln!(out, "{}", s.seal)?;
    }
    Ok(())
}
