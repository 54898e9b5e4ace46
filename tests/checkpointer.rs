//! Checkpoints off the request path: sspd's writers wake a background checkpointer when a
//! checkpoint is due and only checkpoint themselves at a hard limit.

mod common;
use common::server::*;
use serde_json::Value;

fn status(pool: &std::path::Path) -> Value {
    let out = sspctl(pool, &["pool", "status", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Writes with a flush after each fill a 1 MiB journal ring (256 blocks) several times over:
/// every checkpoint is taken by the checkpointer thread, none by a writer, and the data and
/// the pool are intact after a restart.
#[test]
fn writers_leave_due_checkpoints_to_the_checkpointer() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let pv = format!("{}:256M", dir.path().join("pv0.img").display());
    sspctl(&pool, &["pool", "create", "--pv", &pv, "--journal-mb", "1"]);
    sspctl(&pool, &["lu", "create", "lu", "--size", "64M"]);
    let s = Server::serve(pool.clone(), dir);
    let before = status(&pool)["counters"].clone();
    // Each flush writes its own journal block: 600 of them cross the ring's half four times.
    nbdsh(
        &s.uri("lu"),
        "import nbd,sys\nh=nbd.NBD(); h.connect_uri(sys.argv[1])\n\
         for i in range(600):\n  h.pwrite(bytes([i % 251 + 1]) * 4096, (i % 4000) * 4096)\n  h.flush()\n\
         h.shutdown()\n",
    );
    let after = status(&pool)["counters"].clone();
    let n = |c: &Value, k: &str| c[k].as_u64().unwrap_or_else(|| panic!("no {k} in {c}"));
    let background = n(&after, "background_checkpoints") - n(&before, "background_checkpoints");
    let by_writers = n(&after, "writer_checkpoints") - n(&before, "writer_checkpoints");
    assert!(
        background >= 2,
        "{background} background checkpoints: {after}"
    );
    assert_eq!(by_writers, 0, "writers checkpointed themselves: {after}");
    let (_, dir) = s.stop_keep();
    let s = Server::serve(pool.clone(), dir);
    let out = nbdsh(
        &s.uri("lu"),
        "import nbd,sys\nh=nbd.NBD(); h.connect_uri(sys.argv[1])\n\
         ok = all(h.pread(4096, (i % 4000) * 4096) == bytes([i % 251 + 1]) * 4096 for i in range(600))\n\
         print('intact' if ok else 'lost')\n",
    );
    assert_eq!(out.trim(), "intact");
    s.stop();
}
