#!/usr/bin/python3
"""soak.py - the sidecar for a long run under kills and PostgreSQL restarts: no leak, no loss.

Usually started through `bash bench/soak.sh` (not in CI: 30 minutes by default).
Reuses bench.py's harness: a throwaway PostgreSQL (fsync on) and the mock Kafka
cluster.  Two instances, A and B, run one pipeline (file sink, fsync: batch) on
a topic with 8 partitions while records are produced at a steady rate
(default 2,000 records/s in total) for --minutes:

  - B is SIGKILLed every --kill-every seconds (+-25 % jitter) and restarted
    after a short random pause; the survivor and the restarted B take over
    its partitions, replaying pending batches.
  - PostgreSQL is restarted in immediate mode (a crash) every
    --pg-restart-every seconds.
  - A is never killed: its RSS (VmRSS), sampled every 10 s, shows leaks.

The mock broker keeps only about 5 MiB of batches per partition
(docs/design.md §8), so the backlog (partition_status.lag) is watched: at the default
rate the sidecar keeps up easily, and a lost record would show below anyway.
The producer lingers 100 ms (--linger-ms): the mock answers a fetch with one
batch per partition, and batches of a record or two make catching up after a
rebalance crawl.

At the end production stops, everything is committed, both instances stop,
and every partition file must hold offsets 0..n-1 exactly once, in order.
Memory is "flat" if the median RSS of the last window is at most the median
of the first window * 1.10 + 8 MiB; the windows are 5 minutes long (shorter
in short runs: half of what follows the warm-up) and start after the first
minute (warm-up).  Prints a summary, writes JSON, and exits non-zero unless
the output is exact and memory flat.
"""
import argparse
import datetime
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time

import psycopg2

sys.dont_write_bytecode = True  # no bench/__pycache__ in the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (bench/bench.py: Env, Sidecar, Child, helpers)

PIPELINE = "soak"
TOPIC = "soak"
SAMPLE_S = 10
WARMUP_S = 60
WINDOW_S = 300
KiB = 1024


def log(msg):
    print("soak: " + msg, file=sys.stderr, flush=True)


def sql(env, q, params=None, tries=1):
    """env.sql that reconnects after a PostgreSQL restart; None if the server is still down."""
    for i in range(tries):
        try:
            return env.sql(q, params)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            try:
                env.db.close()
            except Exception:
                pass
            try:
                env.db = psycopg2.connect(env.dsn, connect_timeout=5)
                env.db.autocommit = True
                return env.sql(q, params)
            except psycopg2.Error:
                if i + 1 < tries:
                    time.sleep(1)
    return None


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def restart_pg(env):
    """pg_ctl restart -m immediate as the postgres user (a crash, then recovery); seconds taken."""
    t = time.time()
    env.as_postgres([env.pgbin + "/pg_ctl", "restart", "-w", "-t", "120", "-m", "immediate",
                     "-D", env.pgdata, "-l", os.path.join(env.pgdata, "server.log")],
                    stderr=subprocess.DEVNULL)
    with open(os.path.join(env.pgdata, "postmaster.pid")) as f:
        env.pg_pid = int(f.readline())
    sql(env, "SELECT 1", tries=10)
    return time.time() - t


def verify_files(out, per_part, partitions):
    """Every partition file holds offsets 0..per_part-1 exactly once, in order."""
    res = {"files": 0, "records_in_files": 0, "files_out_of_order": 0, "bad": []}
    pat = re.compile(rb'"offset":(\d+)')
    for p in range(partitions):
        path = os.path.join(out, TOPIC, "%d.jsonl" % p)
        if not os.path.exists(path):
            res["bad"].append({"partition": p, "error": "missing file"})
            continue
        res["files"] += 1
        n, first_bad = 0, None
        with open(path, "rb") as f:
            for i, line in enumerate(f):
                n += 1
                m = pat.search(line)
                if first_bad is None and (not m or int(m.group(1)) != i):
                    first_bad = {"partition": p, "line": i,
                                 "offset": int(m.group(1)) if m else None}
        res["records_in_files"] += n
        if first_bad:
            res["files_out_of_order"] += 1
            res["bad"].append(first_bad)
        elif n != per_part:
            res["bad"].append({"partition": p, "error": "%d records, expected %d" % (n, per_part)})
    return res


def window_stats(samples, t_end):
    """RSS (MiB) figures and the verdict from [(t, kib)] samples, t from the start of production
    (which ended at t_end)."""
    vals = [k / KiB for _, k in samples]
    span = max(t_end - WARMUP_S, 0)
    win = min(WINDOW_S, span / 2)
    first = [k / KiB for t, k in samples if WARMUP_S <= t <= WARMUP_S + win]
    last = [k / KiB for t, k in samples if t >= t_end - win and t >= WARMUP_S]
    r = {"samples": len(vals), "window_s": round(win), "warmup_s": WARMUP_S,
         "min_mib": round(min(vals), 1) if vals else None,
         "max_mib": round(max(vals), 1) if vals else None,
         "first_window_median_mib": round(statistics.median(first), 1) if first else None,
         "last_window_median_mib": round(statistics.median(last), 1) if last else None}
    if first and last:
        limit = statistics.median(first) * 1.10 + 8
        r["limit_mib"] = round(limit, 1)
        r["flat"] = statistics.median(last) <= limit
    else:
        r["flat"] = None  # too short a run to tell
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(bench.ROOT, "build-bench"))
    ap.add_argument("--minutes", type=float, default=30, help="how long records are produced")
    ap.add_argument("--rate", type=int, default=2000, help="records/s in total")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--kill-every", type=float, default=60,
                    help="seconds between SIGKILLs of instance B (+-25%% jitter)")
    ap.add_argument("--pg-restart-every", type=float, default=300,
                    help="seconds between PostgreSQL restarts (-m immediate)")
    ap.add_argument("--linger-ms", type=int, default=100, help="the producer's linger.ms")
    ap.add_argument("--max-lag", type=int, default=15000,
                    help="warn when a partition's backlog exceeds this many records (the mock "
                    "keeps ~5 MiB per partition)")
    ap.add_argument("--seed", type=int, help="random seed of the kill schedule")
    ap.add_argument("--json",
                    help="write the results here (default bench/results/soak-<time>.json)")
    ap.add_argument("--workdir", default="/tmp")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    # What bench.Env and bench.Sidecar read from their args.
    args.batch, args.kafka_props, args.wrap = {}, {}, None
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    duration = args.minutes * 60
    per_part = int(args.rate * duration) // args.partitions
    total = per_part * args.partitions

    env = bench.Env(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    log("work directory %s" % env.dir)
    env.start_pg()
    env.start_mock(["%s:%d" % (TOPIC, args.partitions)])
    log("PostgreSQL %s on port %d; mock Kafka at %s" % (env.pg_version, env.pg_port,
                                                         env.bootstrap))
    out = os.path.join(env.dir, "out")
    sink = {"type": "file", "path": out + "/{topic}/{partition}.jsonl", "format": "jsonl",
            "fsync": "batch"}
    a = bench.Sidecar(env, PIPELINE, TOPIC, sink, instance="soak-a")
    b = bench.Sidecar(env, PIPELINE, TOPIC, sink, instance="soak-b")
    subprocess.run([env.bin["sidecar"], "migrate", "-c", a.conf_path], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a.start()
    b.start()
    bench.wait_owned(env, PIPELINE, args.partitions, owners=2)

    log("producing %d records/s for %.1f min (%d records, %d partitions); B killed every ~%gs, "
        "PostgreSQL restarted every %gs" % (args.rate, args.minutes, total, args.partitions,
                                            args.kill_every, args.pg_restart_every))
    # env.produce with a longer linger: the mock answers a fetch with one batch per partition,
    # so batches of a record or two (librdkafka's 5 ms linger at 250 records/s per partition)
    # make catching up after a rebalance crawl, and hold fewer records in the mock's 5 MiB.
    producer = bench.Child([env.bin["produce"], "-b", env.bootstrap, "-t", TOPIC, "--count",
                            str(per_part), "--rate", str(args.rate), "-X",
                            "linger.ms=%d" % args.linger_ms],
                           stderr=open(os.path.join(env.dir, "produce-%s.log" % TOPIC), "a"))
    t0 = time.time()

    def jitter(s):
        return s * rng.uniform(0.75, 1.25)

    samples, kills, restarts, lags, failures = [], [], [], [], []
    next_sample = 0.0
    next_kill = jitter(args.kill_every) if args.kill_every > 0 else float("inf")
    next_pg = args.pg_restart_every if args.pg_restart_every > 0 else float("inf")
    restart_b_at = None
    max_backlog, lag_warned = 0, False
    hard_deadline = duration + 900
    while not producer.poll():
        now = time.time() - t0
        if now > hard_deadline:
            failures.append("producer still running after %ds" % hard_deadline)
            break
        if a.child.poll():
            failures.append("instance A exited with %s at %.0fs" % (a.child.status, now))
            break
        if now >= next_sample:
            kib = rss_kib(a.child.pid)
            if kib is not None:
                samples.append((round(now, 1), kib))
            row = sql(env, "SELECT max(lag), coalesce(sum(committed_offset), 0) FROM "
                      "sidecar.partition_status WHERE pipeline = %s", (PIPELINE,))
            if row:
                lag, committed = row[0]
                committed = int(committed)
                # partition_status.lag comes from the owners' statistics (stale while a partition
                # changes hands); the produce schedule gives the backlog too.
                est = max(int(min(now, duration) * args.rate) - committed, 0) // args.partitions
                backlog = max(est, lag or 0)
                lags.append((round(now, 1), lag, est, committed))
                max_backlog = max(max_backlog, backlog)
                if backlog > args.max_lag and not lag_warned:
                    log("WARNING: backlog of ~%d records per partition (> %d): the mock may "
                        "drop data" % (backlog, args.max_lag))
                    lag_warned = True
                log("%4.0fs  A RSS %.1f MiB  committed %d  backlog/partition ~%d  kills %d  "
                    "PG restarts %d" % (now, (kib or 0) / KiB, committed, backlog, len(kills),
                                        len(restarts)))
            next_sample += SAMPLE_S
        if restart_b_at is None and now >= next_kill:
            b.child.stop(signal.SIGKILL)
            down = rng.uniform(0.5, min(12.0, args.kill_every / 3))
            kills.append({"at_s": round(now, 1), "down_s": round(down, 1)})
            restart_b_at = now + down
            next_kill = now + jitter(args.kill_every)
        if restart_b_at is not None and now >= restart_b_at:
            b.start()
            restart_b_at = None
        if now >= next_pg:
            took = restart_pg(env)
            restarts.append({"at_s": round(now, 1), "took_s": round(took, 2)})
            log("PostgreSQL restarted (immediate) in %.1fs" % took)
            next_pg += args.pg_restart_every
        time.sleep(0.2)
    t_produced = time.time() - t0
    if producer.poll() and producer.status != 0:
        failures.append("kafka-produce exited with %s (see %s)" % (producer.status, env.dir))
    if b.child.poll() and not failures:
        b.start()  # both instances through the drain and a clean stop

    exact = None
    drain_s = None
    if not failures:
        log("produced %d records in %.0fs; waiting for the last commits" % (total, t_produced))
        t = time.time()
        try:
            def committed():
                row = sql(env, "SELECT coalesce(sum(committed_offset), 0) FROM "
                          "sidecar.checkpoints WHERE pipeline = %s", (PIPELINE,), tries=5)
                return int(row[0][0]) if row else 0

            bench.wait_progress(committed, total, 300, lambda: not a.child.poll(), "soak drain")
            drain_s = time.time() - t
        except RuntimeError as e:
            failures.append(str(e))
    after_drain = rss_kib(a.child.pid)
    replays = sql(env, "SELECT count(*) FROM sidecar.events WHERE pipeline = %s AND "
                  "kind = 'replay'", (PIPELINE,), tries=5)
    for sc in (a, b):
        if sc.child.rusage is None:
            sc.child.stop(signal.SIGTERM, 60)
            if sc.child.status != 0:
                failures.append("%s exited with %s on SIGTERM" % (sc.conf_path, sc.child.status))
    logs = "".join(open(sc.log_path, errors="replace").read() for sc in (a, b))
    if not failures:
        exact = verify_files(out, per_part, args.partitions)
        exact["exactly_once"] = (exact["records_in_files"] == total and not exact["bad"])
        if not exact["exactly_once"]:
            failures.append("output not exact: %s" % json.dumps(exact["bad"][:5]))

    mem = window_stats(samples, t_produced)
    mem["after_drain_mib"] = round(after_drain / KiB, 1) if after_drain else None
    if mem["flat"] is False:
        failures.append("A's RSS grew: last-window median %.1f MiB > %.1f MiB" %
                        (mem["last_window_median_mib"], mem["limit_mib"]))
    res = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git": bench.git_rev(),
            "cpus": os.cpu_count(),
            "minutes": args.minutes,
            "rate": args.rate,
            "partitions": args.partitions,
            "kill_every_s": args.kill_every,
            "pg_restart_every_s": args.pg_restart_every,
            "seed": seed,
            "postgresql": env.pg_version,
            "sink": "file, fsync: batch",
            "producer_linger_ms": args.linger_ms,
        },
        "records": total,
        "produce_s": round(t_produced, 1),
        "drain_s": round(drain_s, 1) if drain_s is not None else None,
        "kills": len(kills),
        "pg_restarts": len(restarts),
        "replays": replays[0][0] if replays else None,
        "replays_logged": logs.count("replaying pending batch"),
        "max_backlog_per_partition": max_backlog,
        "output": exact,
        "rss_a": mem,
        "flat": mem["flat"],
        "exactly_once": bool(exact and exact["exactly_once"]),
        "failures": failures,
        "ok": not failures and mem["flat"] is not False,
        "kill_log": kills,
        "pg_restart_log": restarts,
        "rss_a_samples": [[t, round(k / KiB, 1)] for t, k in samples],
        "backlog_samples": {"columns": ["t_s", "max_partition_lag", "per_partition_estimate",
                                         "committed"], "rows": lags},
    }
    print()
    print("soak: %d records in %.1f min at %d/s, %d partitions" %
          (total, t_produced / 60, args.rate, args.partitions))
    print("  kills of B %d, PostgreSQL restarts %d, replayed batches %s, max backlog ~%d records "
          "per partition" % (len(kills), len(restarts), res["replays"], max_backlog))
    if exact:
        print("  output: %d records in %d files, %d out of order, exactly once: %s" %
              (exact["records_in_files"], exact["files"], exact["files_out_of_order"],
               exact["exactly_once"]))
    print("  A's RSS (MiB): min %s, first-window median %s, last-window median %s, max %s "
          "(%d samples, %ds windows; %s after the drain) -> %s" %
          (mem["min_mib"], mem["first_window_median_mib"], mem["last_window_median_mib"],
           mem["max_mib"], mem["samples"], mem["window_s"], mem["after_drain_mib"],
           {True: "flat", False: "GROWING", None: "too short to tell"}[mem["flat"]]))
    for f in failures:
        print("  FAILED: " + f)
    print("  verdict: %s\n" % ("ok" if res["ok"] else "FAILED"))
    path = args.json or os.path.join(bench.ROOT, "bench", "results",
                                     "soak-" + time.strftime("%Y%m%d-%H%M%S") + ".json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=2)
    log("results written to %s" % path)
    sys.exit(0 if res["ok"] else 1)


if __name__ == "__main__":
    main()
