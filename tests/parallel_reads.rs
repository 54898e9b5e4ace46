//! Reads in parallel with each other and with writers (issue 11, "reads take no pool-wide
//! lock"): reader threads read LUs, snapshots and clones while writer threads write, trim, zero,
//! snapshot and clone them and a maintenance thread checkpoints and cleans (so segments are
//! reused under the readers). Every block carries a version stamp; each read must return, for
//! every block, a version written between the last one completed before the read began and the
//! last one started before it ended (old-or-new), whole (never a torn mix), with no checksum
//! error; snapshots and clones read exactly what their LU held when they were taken; `check`
//! passes at the end.

mod common;
use common::server::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use ssp::dev::{BlockDev, MemDev};
use ssp::pool::{CreateOptions, Options, Pool, PoolError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

const MB: u64 = 1 << 20;
const BS: usize = 4096;
/// Blocks per LU (2 MiB: two segments' worth, rewritten many times over).
const BLOCKS: u64 = 512;
const WRITER_OPS: u64 = 2500;
/// Reads per reader at least, and at most (readers go on while the writers run).
const READER_OPS: u64 = 4000;
const READER_OPS_MAX: u64 = 400_000;

/// Versions with `v % 4 == 3` are trims or zeroes (read as zeroes); version 0 is "never
/// written".
fn reads_as_zero(v: u64) -> bool {
    v == 0 || v % 4 == 3
}

/// The content of version `v` of block `lba` of LU number `lu`: a header and bytes derived
/// from all three, so a block mixing two versions is caught.
fn stamp(lu: u64, lba: u64, v: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    b[..8].copy_from_slice(&lu.to_le_bytes());
    b[8..16].copy_from_slice(&lba.to_le_bytes());
    b[16..24].copy_from_slice(&v.to_le_bytes());
    let mut x = (lu << 48) ^ (lba << 24) ^ v ^ 0x9e37_79b9_7f4a_7c15;
    for chunk in b[24..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = chunk.len();
        chunk.copy_from_slice(&x.to_le_bytes()[..n]);
    }
    b
}

/// The version a block holds, checking it is whole and belongs to (`lu`, `lba`).
fn version_of(lu: u64, lba: u64, b: &[u8]) -> Result<u64, String> {
    if b.iter().all(|&x| x == 0) {
        return Ok(0);
    }
    let v = u64::from_le_bytes(b[16..24].try_into().unwrap());
    if b != stamp(lu, lba, v).as_slice() {
        return Err(format!(
            "LU {lu} block {lba}: torn or misplaced (header says LU {}, block {}, version {v})",
            u64::from_le_bytes(b[..8].try_into().unwrap()),
            u64::from_le_bytes(b[8..16].try_into().unwrap())
        ));
    }
    Ok(v)
}

/// One writable LU: versions started and completed per block (one writer thread per LU, so
/// each block's versions rise).
struct Lu {
    num: u64,
    id: u64,
    name: String,
    started: Vec<AtomicU64>,
    done: Vec<AtomicU64>,
}

/// A snapshot or clone and the versions it must read.
struct Frozen {
    lu: u64,
    id: u64,
    versions: Vec<u64>,
}

fn new_pool() -> Pool {
    let dev: Arc<dyn BlockDev> = Arc::new(MemDev::new("mem0", 48 * MB));
    let copts = CreateOptions {
        name: "par".into(),
        journal_blocks: 256,
    };
    let opts = Options {
        // Small caches: reads keep missing and loading under the exclusive side too.
        map_cache_nodes: 8,
        vba_cache_pages: 8,
        checkpoint_writes: 2048,
        ..Options::default()
    };
    Pool::create(vec![dev], &copts, opts).unwrap()
}

fn writer(p: &Pool, lu: &Lu, frozen: &Mutex<Vec<Frozen>>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next = vec![0u64; BLOCKS as usize];
    let mut taken = Vec::new();
    for op in 0..WRITER_OPS {
        if op % 400 == 399 {
            // Snapshot and clone; every completed version is in them (this thread is the
            // LU's only writer).
            let k = op / 400;
            let snap = format!("{}@s{k}", lu.name);
            let clone = format!("{}-c{k}", lu.name);
            let versions: Vec<u64> = lu.done.iter().map(|d| d.load(SeqCst)).collect();
            let sid = p.snapshot_create(&[&snap]).unwrap()[0].id;
            let cid = p.clone_create(&snap, &clone).unwrap().id;
            let mut f = frozen.lock().unwrap();
            for id in [sid, cid] {
                f.push(Frozen {
                    lu: lu.num,
                    id,
                    versions: versions.clone(),
                });
            }
            drop(f);
            taken.push((snap, clone, sid, cid));
            if taken.len() > 2 {
                let (snap, clone, sid, cid) = taken.remove(0);
                frozen
                    .lock()
                    .unwrap()
                    .retain(|f| f.id != sid && f.id != cid);
                p.lu_remove(&clone).unwrap();
                p.snapshot_remove(&snap).unwrap();
            }
            continue;
        }
        // Runs of 1-4 blocks, each block its own next version.
        let lba = rng.gen_range(0..BLOCKS - 4);
        let n = rng.gen_range(1..=4u64);
        let b0 = lba as usize;
        // All blocks of the run get versions of the same kind (data or zeroes).
        let zero = rng.gen_ratio(1, 5);
        let mut data = Vec::with_capacity(n as usize * BS);
        for k in 0..n as usize {
            let mut v = next[b0 + k] + 1;
            while reads_as_zero(v) != zero {
                v += 1;
            }
            next[b0 + k] = v;
            lu.started[b0 + k].store(v, SeqCst);
            data.extend(stamp(lu.num, lba + k as u64, v));
        }
        let (off, len) = (lba * BS as u64, n * BS as u64);
        match (zero, op % 3) {
            (true, 0) => p.trim(lu.id, off, len).unwrap(),
            (true, 1) => p.write_zeroes(lu.id, off, len, false).unwrap(),
            (true, _) => p.write_zeroes_allocated(lu.id, off, len, false).unwrap(),
            (false, _) => p.write(lu.id, off, &data, op % 17 == 0).unwrap(),
        }
        for k in 0..n as usize {
            lu.done[b0 + k].store(next[b0 + k], SeqCst);
        }
    }
}

/// Returns (reads, of them from snapshots and clones, reads done while writers ran).
fn reader(
    p: &Pool,
    lus: &[Lu],
    frozen: &Mutex<Vec<Frozen>>,
    writing: &AtomicBool,
    seed: u64,
) -> (u64, u64, u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut reads, mut frozen_reads, mut during) = (0, 0, 0);
    for i in 0..READER_OPS_MAX {
        let w = writing.load(SeqCst);
        if i >= READER_OPS && !w {
            break;
        }
        reads += 1;
        during += u64::from(w);
        let n = rng.gen_range(1..=8u64);
        let lba = rng.gen_range(0..BLOCKS - n);
        let mut buf = vec![0u8; n as usize * BS];
        if rng.gen_ratio(1, 4) {
            // A snapshot or clone: exactly the versions it was taken with.
            let pick = {
                let f = frozen.lock().unwrap();
                if f.is_empty() {
                    continue;
                }
                let x = &f[rng.gen_range(0..f.len())];
                (x.lu, x.id, x.versions.clone())
            };
            let (lu, id, versions) = pick;
            match p.read(id, lba * BS as u64, &mut buf) {
                Ok(()) => {}
                // Removed since it was picked.
                Err(PoolError::NotFound(_)) => continue,
                Err(e) => panic!("read of frozen volume {id}: {e}"),
            }
            for (k, b) in buf.chunks(BS).enumerate() {
                let l = lba + k as u64;
                let v = version_of(lu, l, b).unwrap();
                let want = versions[l as usize];
                let want = if reads_as_zero(want) { 0 } else { want };
                assert_eq!(v, want, "volume {id} (of LU {lu}) block {l}");
            }
            frozen_reads += 1;
            continue;
        }
        let lu = &lus[rng.gen_range(0..lus.len())];
        let lo: Vec<u64> = (0..n)
            .map(|k| lu.done[(lba + k) as usize].load(SeqCst))
            .collect();
        p.read(lu.id, lba * BS as u64, &mut buf)
            .unwrap_or_else(|e| panic!("read of {} at block {lba}: {e}", lu.name));
        for (k, b) in buf.chunks(BS).enumerate() {
            let l = lba + k as u64;
            let hi = lu.started[l as usize].load(SeqCst);
            let v = version_of(lu.num, l, b).unwrap();
            let ok = if v == 0 {
                (lo[k]..=hi).any(reads_as_zero)
            } else {
                lo[k] <= v && v <= hi && !reads_as_zero(v)
            };
            assert!(
                ok,
                "{} block {l}: read version {v}, not between {} (done before) and {hi} (started after)",
                lu.name, lo[k]
            );
        }
    }
    (reads, frozen_reads, during)
}

#[test]
fn reads_see_old_or_new_while_writers_snapshot_clone_and_maintenance_run() {
    let p = Arc::new(new_pool());
    let lus: Arc<Vec<Lu>> = Arc::new(
        ["a", "b"]
            .iter()
            .enumerate()
            .map(|(i, name)| Lu {
                num: i as u64 + 1,
                id: p.lu_create(name, BLOCKS * BS as u64).unwrap().id,
                name: name.to_string(),
                started: (0..BLOCKS).map(|_| AtomicU64::new(0)).collect(),
                done: (0..BLOCKS).map(|_| AtomicU64::new(0)).collect(),
            })
            .collect(),
    );
    let frozen = Arc::new(Mutex::new(Vec::new()));
    let writing = Arc::new(AtomicBool::new(true));
    let mut writers = Vec::new();
    for i in 0..lus.len() {
        let (p, lus, frozen) = (p.clone(), lus.clone(), frozen.clone());
        writers.push(std::thread::spawn(move || {
            writer(&p, &lus[i], &frozen, 100 + i as u64)
        }));
    }
    let readers: Vec<_> = (0..3u64)
        .map(|i| {
            let (p, lus, frozen, w) = (p.clone(), lus.clone(), frozen.clone(), writing.clone());
            std::thread::spawn(move || reader(&p, &lus, &frozen, &w, 200 + i))
        })
        .collect();
    let maint = {
        let (p, writing) = (p.clone(), writing.clone());
        std::thread::spawn(move || {
            let mut cleaned = 0;
            // Bounded; ends early once the writers are done.
            for _ in 0..2000 {
                if !writing.load(SeqCst) {
                    break;
                }
                p.checkpoint().unwrap();
                cleaned += p.gc(2).unwrap().segments_cleaned;
                std::thread::yield_now();
            }
            cleaned
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    writing.store(false, SeqCst);
    let (mut reads, mut frozen_reads, mut during) = (0, 0, 0);
    for r in readers {
        let (a, b, c) = r.join().unwrap();
        (reads, frozen_reads, during) = (reads + a, frozen_reads + b, during + c);
    }
    let cleaned = maint.join().unwrap();
    eprintln!(
        "{reads} reads ({frozen_reads} of snapshots/clones, {during} while writing), \
         {cleaned} segments cleaned"
    );
    // The run did what it is meant to: segments were cleaned (and so reused) under readers,
    // and snapshots and clones were read.
    assert!(cleaned > 0, "the cleaner never ran");
    assert!(frozen_reads > 0, "no snapshot or clone was read");
    assert!(during > 0, "no read ran while the writers did");
    // The final state reads as the last versions, and the pool is consistent.
    let mut b = vec![0u8; BS];
    for lu in lus.iter() {
        for l in 0..BLOCKS {
            p.read(lu.id, l * BS as u64, &mut b).unwrap();
            let want = lu.done[l as usize].load(SeqCst);
            let want = if reads_as_zero(want) { 0 } else { want };
            assert_eq!(
                version_of(lu.num, l, &b).unwrap(),
                want,
                "{} block {l}",
                lu.name
            );
        }
    }
    let rep = p.check().unwrap();
    assert!(rep.errors.is_empty(), "{:#?}", rep.errors);
}

/// Through sspd: four NBD connections read one LU (the multi-conn case; reads run inline or on
/// blocking threads, whichever does not wait) while a fifth writes, trims and flushes it; every
/// block reads old-or-new and whole.
const MULTICONN: &str = r#"
import nbd, random, struct, sys, threading
uri = sys.argv[1]
BLOCKS = 512
started = [0] * BLOCKS
done = [0] * BLOCKS
errors = []

def stamp(b, v):
    return struct.pack("<QQ", b, v) * 256

def zero_version(v):
    return v == 0 or v % 4 == 3

def writer():
    h = nbd.NBD(); h.connect_uri(uri)
    rnd = random.Random(1)
    nxt = [0] * BLOCKS
    for i in range(3000):
        b = rnd.randrange(BLOCKS)
        v = nxt[b] + 1
        if rnd.random() < 0.2:
            while not zero_version(v): v += 1
        else:
            while zero_version(v): v += 1
        nxt[b] = v
        started[b] = v
        if zero_version(v):
            h.trim(4096, b * 4096)
        else:
            h.pwrite(stamp(b, v), b * 4096)
        done[b] = v
        if i % 500 == 499:
            h.flush()
    h.shutdown()

def reader(seed, out):
    h = nbd.NBD(); h.connect_uri(uri)
    rnd = random.Random(seed)
    n_reads = 0
    while n_reads < 3000 and not errors:
        n = rnd.randrange(1, 5)
        b0 = rnd.randrange(BLOCKS - n)
        lo = done[b0:b0 + n]
        data = h.pread(n * 4096, b0 * 4096)
        hi = started[b0:b0 + n]
        for k in range(n):
            blk = data[k * 4096:(k + 1) * 4096]
            b = b0 + k
            if blk == bytes(4096):
                ok = any(zero_version(v) for v in range(lo[k], hi[k] + 1))
                v = 0
            else:
                b_, v = struct.unpack("<QQ", blk[:16])
                ok = blk == stamp(b, v) and lo[k] <= v <= hi[k] and not zero_version(v)
            if not ok:
                errors.append(f"block {b}: read version {v}, not in [{lo[k]}, {hi[k]}]")
        n_reads += 1
    out.append(n_reads)
    h.shutdown()

counts = []
ts = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(s, counts)) for s in range(4)]
for t in ts: t.start()
for t in ts: t.join()
if errors:
    sys.exit("\n".join(errors[:10]))
print(sum(counts))
"#;

#[test]
fn four_connections_read_old_or_new_while_a_fifth_writes() {
    let srv = Server::start(&[("lu", "2M")]);
    let reads: u64 = nbdsh(&srv.uri("lu"), MULTICONN).trim().parse().unwrap();
    assert_eq!(reads, 4 * 3000);
    let rep: serde_json::Value =
        serde_json::from_str(&sspctl(&srv.pool, &["check", "--json"])).unwrap();
    assert_eq!(rep["errors"].as_array().unwrap().len(), 0, "{rep}");
    srv.stop();
}
