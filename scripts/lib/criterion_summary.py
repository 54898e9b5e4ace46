"""Summary of benches/engine.rs criterion results newer than a stamp file (used by
scripts/bench-engine.sh criterion): python3 criterion_summary.py CRITERION_DIR STAMP."""
import json, os, sys

crit_dir, stamp = sys.argv[1], sys.argv[2]
since = os.path.getmtime(stamp)
rows = {}
for root, dirs, files in os.walk(crit_dir):
    if os.path.basename(root) != "new" or "estimates.json" not in files:
        continue
    est_path = os.path.join(root, "estimates.json")
    if os.path.getmtime(est_path) < since:
        continue
    with open(est_path) as f:
        est = json.load(f)
    try:
        with open(os.path.join(root, "benchmark.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        meta = {}
    name = meta.get("function_id") or meta.get("full_id") or os.path.basename(os.path.dirname(root))
    group = meta.get("group_id", "")
    tp = meta.get("throughput") or {}
    nbytes = tp.get("Bytes") or tp.get("BytesDecimal")
    mean = est["mean"]["point_estimate"]  # ns per iteration
    ci = est["mean"].get("confidence_interval", {})
    # Criterion's headline estimate is the slope (linear sampling) when there is one.
    slope = (est.get("slope") or {}).get("point_estimate")
    rows[name] = dict(group=group, mean=mean, lo=ci.get("lower_bound", mean),
                      hi=ci.get("upper_bound", mean), slope=slope,
                      median=est["median"]["point_estimate"], bytes=nbytes)

if not rows:
    sys.exit(f"no criterion results newer than this run under {crit_dir}")

def fmt_time(ns):
    for unit, div in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= div:
            return f"{ns / div:.3f} {unit}"
    return f"{ns:.1f} ns"

def fmt_ops(ops):
    if ops >= 1e6:
        return f"{ops / 1e6:.2f} M/s"
    if ops >= 1e3:
        return f"{ops / 1e3:.1f} k/s"
    return f"{ops:.2f} /s"

order = ["write_4k_random", "pwrite_4k_random", "read_4k_random", "pread_4k_random",
         "write_1m_seq", "pwrite_1m_seq", "read_1m_seq", "pread_1m_seq", "open_1m_blocks"]
names = [n for n in order if n in rows] + sorted(n for n in rows if n not in order)

hdr = (f"{'benchmark':<17} {'mean':>10} {'95% CI of mean':>22} {'slope':>10} {'median':>10} "
       f"{'MB/s mean':>10} {'MB/s slope':>10} {'ops/s mean':>10}")
print()
print("times per operation; MB/s = MiB/s; the slope is criterion's headline estimate")
print(hdr)
print("-" * len(hdr))

def rate(r, t):
    return f"{r['bytes'] * 1e9 / t / (1 << 20):.1f}" if r["bytes"] and t else "-"

for n in names:
    r = rows[n]
    ci = f"{fmt_time(r['lo'])}..{fmt_time(r['hi'])}"
    slope = fmt_time(r["slope"]) if r["slope"] else "-"
    print(f"{n:<17} {fmt_time(r['mean']):>10} {ci:>22} {slope:>10} {fmt_time(r['median']):>10} "
          f"{rate(r, r['mean']):>10} {rate(r, r['slope']):>10} {fmt_ops(1e9 / r['mean']):>10}")

pairs = [("write_4k_random", "pwrite_4k_random", 0.80),
         ("read_4k_random", "pread_4k_random", None),
         ("write_1m_seq", "pwrite_1m_seq", None),
         ("read_1m_seq", "pread_1m_seq", None)]
lines = []
for eng, base, target in pairs:
    if eng in rows and base in rows:
        e, b = rows[eng], rows[base]
        by_mean = b["mean"] / e["mean"]  # engine throughput / baseline throughput
        by_slope = b["slope"] / e["slope"] if e["slope"] and b["slope"] else None
        s_txt = f"{by_slope:7.1%}" if by_slope is not None else "      -"
        note = ""
        if target is not None:
            ok = by_mean >= target and (by_slope is None or by_slope >= target)
            note = f"   target >= {target:.0%}: {'met' if ok else 'NOT met'}"
        lines.append(f"{eng + ' / ' + base:<36} {by_mean:7.1%} {s_txt}{note}")
if lines:
    print()
    print(f"{'engine / baseline throughput':<36} {'mean':>7} {'slope':>7}")
    for line in lines:
        print(line)
if "open_1m_blocks" in rows:
    print()
    print("open_1m_blocks: MB/s is mapped LU bytes (1,000,000 x 4 KiB) per open+close; "
          "the time is what counts")
