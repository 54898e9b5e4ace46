//! One conformance suite over every engine and cache mode of [`FileDev`] (sync and io_uring,
//! page cache and `O_DIRECT`), the memory and fault devices, and a differential proptest: the
//! same random operations against the sync and the io_uring engine leave the same bytes.

use std::io;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::mem::suite;
use super::{
    BlockDev, Cache, CacheChoice, Engine, EngineChoice, FaultDev, FileDev, IoConfig, MemDev,
};

const SIZE: u64 = 256 * 1024;

/// A directory on a file system that supports `O_DIRECT` (tmpfs does not), or `None` with the
/// reason printed: the `O_DIRECT` cases then skip loudly.
fn direct_dir() -> Option<tempfile::TempDir> {
    for base in ["/var/tmp", "/tmp", env!("CARGO_MANIFEST_DIR")] {
        let Ok(d) = tempfile::tempdir_in(base) else {
            continue;
        };
        let probe = d.path().join("probe");
        let cfg = IoConfig::new(EngineChoice::Sync, CacheChoice::None);
        match FileDev::create_with(&probe, 4096, &cfg) {
            Ok(_) => return Some(d),
            Err(e) => eprintln!("O_DIRECT unsupported under {base}: {e}"),
        }
    }
    eprintln!("SKIPPED: no file system here supports O_DIRECT; cache=none cases not run");
    None
}

fn uring_or_skip() -> bool {
    match super::iomode::uring_available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIPPED: io_uring unavailable here ({why}); uring cases not run");
            false
        }
    }
}

/// Every (engine, cache) pair this host can run, with the directory to put the file in.
fn configs() -> Vec<(IoConfig, PathBuf, Option<tempfile::TempDir>)> {
    let mut out = Vec::new();
    let mut engines = vec![EngineChoice::Sync];
    if uring_or_skip() {
        engines.push(EngineChoice::Uring);
    }
    for e in &engines {
        let d = tempfile::tempdir().unwrap();
        out.push((
            IoConfig::new(*e, CacheChoice::Writeback),
            d.path().to_owned(),
            Some(d),
        ));
    }
    for e in &engines {
        if let Some(d) = direct_dir() {
            out.push((
                IoConfig::new(*e, CacheChoice::None),
                d.path().to_owned(),
                Some(d),
            ));
        }
    }
    out
}

fn expected_mode(cfg: &IoConfig) -> (Engine, Cache) {
    let cache = cfg.cache_for(false);
    let e = match (cfg.engine, cache) {
        (EngineChoice::Sync, _) | (EngineChoice::Auto, Cache::Writeback) => Engine::Sync,
        _ => Engine::Uring,
    };
    (e, cache)
}

/// Checks beyond [`suite::run`]: batched writes, large and multi-block transfers from aligned
/// and unaligned memory, many concurrent callers, reopening after close.
fn extra(dev: &dyn BlockDev, len: u64) {
    // A batch of writes, aligned and not, then read back.
    let a: Vec<u8> = (0..8192u32).map(|i| (i % 249) as u8).collect();
    let b = vec![0x5Au8; 100];
    let c = vec![0xC3u8; 4096];
    dev.write_many_at(&[(&a, 16384), (&b, 40000), (&c, len - 4096)])
        .unwrap();
    let mut got = vec![0u8; 8192];
    dev.read_at(&mut got, 16384).unwrap();
    assert_eq!(got, a);
    let mut got = vec![0u8; 102];
    dev.read_at(&mut got, 39999).unwrap();
    assert_eq!(&got[1..101], &b[..]);
    let mut got = vec![0u8; 4096];
    dev.read_at(&mut got, len - 4096).unwrap();
    assert_eq!(got, c);
    // An out-of-range entry fails the batch up front.
    assert!(dev.write_many_at(&[(&c, len - 2048)]).is_err());

    // Whole blocks from memory at an odd address (the O_DIRECT bounce path).
    let mut big = vec![0u8; 65536 + 1];
    for (i, x) in big.iter_mut().enumerate() {
        *x = (i * 7 % 256) as u8;
    }
    let odd = &big[1..];
    dev.write_at(odd, 65536).unwrap();
    let mut back = vec![0u8; 65536 + 3];
    dev.read_at(&mut back[3..], 65536).unwrap();
    assert_eq!(&back[3..], odd);
    // Aligned memory straight through.
    let mut al = super::direct::AlignedBuf::new(32768);
    al.fill(0x11);
    dev.write_at(&al, 131072).unwrap();
    let mut alr = super::direct::AlignedBuf::new(32768);
    dev.read_at(&mut alr, 131072).unwrap();
    assert!(alr.iter().all(|&x| x == 0x11));

    // Eight threads, each writing a distinct pattern to its own unaligned slice, many times.
    std::thread::scope(|s| {
        for t in 0..8u8 {
            s.spawn(move || {
                for round in 0..20u64 {
                    let off = 180_000 + u64::from(t) * 3001;
                    let pat = vec![t.wrapping_mul(31).wrapping_add(round as u8); 3001];
                    dev.write_at(&pat, off).unwrap();
                    let mut got = vec![0u8; 3001];
                    dev.read_at(&mut got, off).unwrap();
                    assert_eq!(got, pat, "thread {t} round {round}");
                }
            });
        }
    });
    dev.sync().unwrap();
}

#[test]
fn every_engine_and_cache_mode_passes_the_suite() {
    let cfgs = configs();
    assert!(!cfgs.is_empty());
    for (cfg, dir, _keep) in &cfgs {
        let path = dir.join("pv0");
        let dev = FileDev::create_with(&path, SIZE, cfg).unwrap();
        assert_eq!(dev.io_mode(), Some(expected_mode(cfg)), "{cfg:?}");
        suite::run(&dev, SIZE);
        extra(&dev, SIZE);
        // Reopen (the lock is released at drop) and see the synced bytes.
        let mut before = vec![0u8; SIZE as usize];
        dev.read_at(&mut before, 0).unwrap();
        drop(dev);
        let dev = FileDev::open_with(&path, cfg).unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
        let mut after = vec![0u8; SIZE as usize];
        dev.read_at(&mut after, 0).unwrap();
        assert!(before == after, "{cfg:?}: bytes changed across reopen");
        // And the same bytes through the page cache with the sync engine.
        drop(dev);
        let plain = FileDev::open_with(
            &path,
            &IoConfig::new(EngineChoice::Sync, CacheChoice::Writeback),
        )
        .unwrap();
        let mut plain_bytes = vec![0u8; SIZE as usize];
        plain.read_at(&mut plain_bytes, 0).unwrap();
        assert!(before == plain_bytes, "{cfg:?}: differs from a plain read");
    }
}

#[test]
fn memory_and_fault_devices_batch_like_files() {
    let m = MemDev::new("mem", SIZE);
    extra(&m, SIZE);
    let (f, _ctl) = FaultDev::new("fault", SIZE);
    extra(&f, SIZE);
    assert_eq!(m.io_mode(), None);
}

#[test]
fn cache_none_refuses_what_o_direct_cannot_do() {
    // A size that is not whole 4 KiB blocks.
    let Some(d) = direct_dir() else { return };
    let path = d.path().join("odd");
    std::fs::write(&path, vec![0u8; 4096 + 512]).unwrap();
    let none = IoConfig::new(EngineChoice::Sync, CacheChoice::None);
    let e = FileDev::open_with(&path, &none).unwrap_err();
    assert!(e.to_string().contains("multiple of 4096"), "{e}");
    // tmpfs has no O_DIRECT: a clear error naming the way out.
    if Path::new("/dev/shm").is_dir() {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let p = t.path().join("pv");
        match FileDev::create_with(&p, 8192, &none) {
            Err(e) => assert!(e.to_string().contains("--cache writeback"), "{e}"),
            Ok(_) => eprintln!("/dev/shm accepts O_DIRECT here"),
        }
    }
}

#[test]
fn uring_reports_errors_like_sync() {
    if !uring_or_skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("pv0");
    let cfg = IoConfig::new(EngineChoice::Uring, CacheChoice::Writeback);
    let dev = FileDev::create_with(&path, 8192, &cfg).unwrap();
    let e = dev.read_at(&mut [0; 8], 8190).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    assert!(e.to_string().contains("pv0"), "{e}");
    // The file shrinks under the device: the ring's read comes back short, then empty.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let e = dev.read_at(&mut [0; 8192], 0).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
}

#[derive(Clone, Debug)]
enum Op {
    Write { off: u64, len: usize, seed: u8 },
    Batch(Vec<(u64, usize, u8)>),
    Read { off: u64, len: usize },
    Sync,
}

const PSIZE: u64 = 128 * 1024;

fn op() -> impl Strategy<Value = Op> {
    let range =
        (0..PSIZE).prop_flat_map(|off| (Just(off), 0..=((PSIZE - off).min(20000) as usize)));
    prop_oneof![
        4 => (range.clone(), any::<u8>()).prop_map(|((off, len), seed)| Op::Write { off, len, seed }),
        // Block-aligned writes, as the pool does them.
        2 => (0..PSIZE / 4096, 1..4u64, any::<u8>()).prop_map(|(b, n, seed)| {
            let n = n.min(PSIZE / 4096 - b);
            Op::Write { off: b * 4096, len: (n * 4096) as usize, seed }
        }),
        1 => proptest::collection::vec((0..PSIZE / 8192, 1..4096usize, any::<u8>()), 1..6)
            .prop_map(|v| {
                // Disjoint: one entry per distinct 8 KiB slot.
                let mut seen = std::collections::BTreeSet::new();
                Op::Batch(v.into_iter().filter(|e| seen.insert(e.0)).map(|(s, l, seed)| (s * 8192 + 7, l, seed)).collect())
            }),
        3 => range.prop_map(|(off, len)| Op::Read { off, len }),
        1 => Just(Op::Sync),
    ]
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

fn apply(dev: &dyn BlockDev, op: &Op) -> Option<Vec<u8>> {
    match op {
        Op::Write { off, len, seed } => {
            dev.write_at(&pattern(*len, *seed), *off).unwrap();
            None
        }
        Op::Batch(v) => {
            let bufs: Vec<(Vec<u8>, u64)> =
                v.iter().map(|(o, l, s)| (pattern(*l, *s), *o)).collect();
            let refs: Vec<(&[u8], u64)> = bufs.iter().map(|(b, o)| (b.as_slice(), *o)).collect();
            dev.write_many_at(&refs).unwrap();
            None
        }
        Op::Read { off, len } => {
            // Read into memory at an odd address too (unaligned for O_DIRECT).
            let mut b = vec![0u8; len + 1];
            dev.read_at(&mut b[1..], *off).unwrap();
            Some(b[1..].to_vec())
        }
        Op::Sync => {
            dev.sync().unwrap();
            None
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The same operations against the sync engine, the io_uring engine and (where the file
    /// system allows) io_uring with O_DIRECT: every read returns the same bytes, and so does
    /// each whole file at the end.
    #[test]
    fn engines_agree_byte_for_byte(ops in proptest::collection::vec(op(), 1..40)) {
        let d = tempfile::tempdir().unwrap();
        let sync = FileDev::create_with(&d.path().join("sync"), PSIZE,
            &IoConfig::new(EngineChoice::Sync, CacheChoice::Writeback)).unwrap();
        let mut others: Vec<(String, FileDev)> = Vec::new();
        if super::iomode::uring_available().is_ok() {
            others.push(("uring".into(), FileDev::create_with(&d.path().join("uring"), PSIZE,
                &IoConfig::new(EngineChoice::Uring, CacheChoice::Writeback)).unwrap()));
        }
        let direct = direct_dir();
        if let Some(dd) = &direct {
            let e = if others.is_empty() { EngineChoice::Sync } else { EngineChoice::Uring };
            others.push(("direct".into(), FileDev::create_with(&dd.path().join("direct"), PSIZE,
                &IoConfig::new(e, CacheChoice::None)).unwrap()));
        }
        prop_assume!(!others.is_empty());
        for (i, op) in ops.iter().enumerate() {
            let want = apply(&sync, op);
            for (name, dev) in &others {
                let got = apply(dev, op);
                prop_assert!(want == got, "op {i} {op:?}: {name} read other bytes");
            }
        }
        let mut want = vec![0u8; PSIZE as usize];
        sync.read_at(&mut want, 0).unwrap();
        for (name, dev) in &others {
            let mut got = vec![0u8; PSIZE as usize];
            dev.read_at(&mut got, 0).unwrap();
            prop_assert!(want == got, "{name}: final bytes differ");
        }
    }
}
