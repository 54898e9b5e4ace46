//! The fuzz targets' entry points (`ssp::fuzzing`, run by `scripts/fuzz.sh` under libFuzzer)
//! replayed on their seeds and on every finding kept in `tools/fuzz/regressions/TARGET/`, so a
//! finding stays fixed without a fuzzer.

use ssp::dev::{BlockDev, MemDev};
use ssp::fuzzing;
use ssp::pool::{Options, Pool};
use std::path::Path;
use std::sync::Arc;

/// Run every input in `tools/fuzz/KIND/TARGET/` (KIND: `seeds` or `regressions`).
fn replay(kind: &str, target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools/fuzz")
        .join(kind)
        .join(target);
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            let bytes = std::fs::read(&p).expect("read a regression input");
            eprintln!("replaying {}", p.display());
            run(&bytes);
            n += 1;
        }
    }
    n
}

#[test]
fn pool_seeds_open_and_replay() {
    let seeds = fuzzing::pool_seeds();
    assert_eq!(seeds.len(), 3);
    for s in &seeds {
        // A seed is a real pool: it opens (read-only and read-write) and survives the driver.
        assert_eq!(s.len() % fuzzing::RECORD, 0);
        let img = fuzzing::image_from_records(s);
        assert_eq!(fuzzing::records_from_image(&img), *s);
        fuzzing::pool_image(s);
    }
    // Seed 1 was never checkpointed after its last writes: what it holds comes from replay.
    let img = fuzzing::image_from_records(&seeds[1]);
    let dev: Arc<dyn BlockDev> = Arc::new(MemDev::from_bytes("seed1", img));
    let opts = Options {
        read_only: true,
        ..Options::default()
    };
    let pool = Pool::open(vec![dev], opts).expect("seed 1 opens");
    let mut names: Vec<String> = pool.lu_list().into_iter().map(|l| l.name).collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"], "LU b exists only in the journal");
    let c = pool.lu_id("c").expect("clone c");
    let mut buf = vec![0u8; 4096];
    pool.read(c, 0, &mut buf).expect("read the clone");
    assert!(
        buf.iter().all(|&b| b == 9u8.wrapping_mul(37) | 1),
        "replayed clone write"
    );
}

#[test]
fn pool_image_regressions() {
    replay("regressions", "pool_image", fuzzing::pool_image);
}

#[test]
fn nbd_stream_seeds_and_regressions() {
    assert!(replay("seeds", "nbd_stream", fuzzing::nbd_stream) >= 4);
    replay("regressions", "nbd_stream", fuzzing::nbd_stream);
}

#[test]
fn admin_lines_seeds_and_regressions() {
    assert!(replay("seeds", "admin_lines", fuzzing::admin_lines) >= 3);
    replay("regressions", "admin_lines", fuzzing::admin_lines);
    // A valid request runs; the same line with another version is refused by the decoder.
    fuzzing::admin_lines(b"{\"version\":2,\"cmd\":\"lu_create\",\"name\":\"x\",\"size\":4096}\n");
    assert!(ssp::admin::decode_request_line("{\"version\":1,\"cmd\":\"lu_list\"}").is_err());
}
