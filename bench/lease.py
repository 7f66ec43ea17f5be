#!/usr/bin/python3
"""lease.py - partition assignment measured: "assignment": "lease" and "kafka-group" side by side.

Usually started through `bash bench/lease.sh` (which builds first).  It starts
a throwaway PostgreSQL and the librdkafka mock cluster (the environment of
bench.py) and measures, for each mode, in interleaved rounds (lease, group,
lease, group, ...; medians reported):

  failover   3 instances, 12 partitions, records produced at a steady rate;
             kill -9 of one instance: how long until every partition it held
             has a new lease (target for lease mode: ttl + 1 renew interval),
             and until each of them has its first commit after that
  join       2 instances running; a third starts: how long until it holds its
             fair share, and how many partitions moved other than to it
  sigterm    SIGTERM to an instance holding partitions: exit code, time to
             exit, and whether its leases were released (expired at once)
  upkeep     1 and 3 idle instances (no records): PostgreSQL statements per
             second spent on lease upkeep (pg_stat_statements), at 16 and
             1024 partitions: it should grow with instances, not partitions

All with lease.ttl_ms 3000 / renew_ms 1000 and the group timeouts the tests
use (session.timeout.ms 6000, heartbeat.interval.ms 500).  Prints a table and
writes JSON (--json).
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Child, Env, free_port, log  # noqa: E402  (bench.py: the shared environment)

TTL_MS, RENEW_MS = 3000, 1000
GROUP_PROPS = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}
UPKEEP = ("lease_tick", "acquire_leases", "request_handoffs", "refuse_handoffs",
          "register_instance", "partition_stats", "leases l SET expires_at")


class Instance:
    """One `sidecar run` of the benchmark's pipeline, in either mode."""

    def __init__(self, env, pipeline, topic, mode, name):
        self.env, self.name = env, name
        conf = {
            "instance_id": name,
            "postgres": {"dsn": env.dsn},
            "kafka": {"bootstrap.servers": env.bootstrap, "properties": dict(GROUP_PROPS)},
            "admin": {"listen": "127.0.0.1:%d" % free_port()},
            "log": {"level": "info", "format": "text"},
            "pipelines": [{
                "name": pipeline, "topics": [topic], "assignment": mode,
                "lease": {"ttl_ms": TTL_MS, "renew_ms": RENEW_MS},
                "batch": {"max_records": 200, "max_wait_ms": 20},
                "workers": 2,
                "sink": {"type": "file", "fsync": "never",
                         "path": os.path.join(env.dir, "out", pipeline, "{topic}",
                                              "{partition}.jsonl")},
            }],
        }
        self.conf_path = os.path.join(env.dir, "%s-%s.json" % (pipeline, name))
        with open(self.conf_path, "w") as f:
            json.dump(conf, f)
        self.log_path = os.path.join(env.dir, "%s-%s.log" % (pipeline, name))
        self.child = None

    def start(self):
        self.child = Child([self.env.bin["sidecar"], "run", "-c", self.conf_path],
                           stderr=open(self.log_path, "a"), stdout=subprocess.DEVNULL)
        return self

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.child:
            self.child.stop(sig, timeout)


def leases(env, pipeline, owner=None):
    return env.sql("SELECT topic, partition, owner FROM sidecar.leases WHERE pipeline = %s AND "
                   "expires_at > now() AND (%s::text IS NULL OR owner = %s)",
                   (pipeline, owner, owner))


def wait(cond, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    sys.exit("bench: timed out waiting for %s" % what)


def migrate(env, inst):
    subprocess.run([env.bin["sidecar"], "migrate", "-c", inst.conf_path], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_group(env, pipeline, topic, mode, names, nparts):
    insts = [Instance(env, pipeline, topic, mode, n) for n in names]
    for i in insts:
        i.start()
    # Everyone holds at least one partition and all are leased: at rest enough to measure.
    wait(lambda: len(leases(env, pipeline)) == nparts and
         all(len(leases(env, pipeline, i.name)) > 0 for i in insts), 120,
         "%s: %d instances to share %d partitions" % (mode, len(insts), nparts))
    time.sleep(2)
    return insts


# ---- phases --------------------------------------------------------------------------------


def phase_failover(env, mode, run):
    pipeline, topic = "fo%d%s" % (run, mode[0]), "fo%d%s" % (run, mode[0])
    nparts = 12
    env.mock.p.stdin.write(("topic create %s %d\n" % (topic, nparts)).encode())
    env.mock.p.stdin.flush()
    env.mock.p.stdout.readline()
    insts = start_group(env, pipeline, topic, mode, ["a", "b", "c"], nparts)
    # Records keep arriving through the takeover (about a minute's worth at this rate).
    producer = Child([env.bin["produce"], "-b", env.bootstrap, "-t", topic, "--count", "20000",
                      "--rate", "4000"], stderr=subprocess.DEVNULL)
    time.sleep(2)
    victim = insts[1]
    held = {(t, p) for t, p, _ in leases(env, pipeline, victim.name)}
    t_kill = time.time()
    victim.stop(signal.SIGKILL, 5)

    def taken():
        now = {(t, p): o for t, p, o in leases(env, pipeline)}
        return all(now.get(k) not in (None, victim.name) for k in held)
    wait(taken, 120, "%s: takeover" % mode)
    t_leased = time.time()

    # DB time of each new acquisition and of the first commit after it.
    def first_commits():
        return env.sql(
            "WITH acq AS (SELECT topic, partition, min(at) AS a FROM sidecar.events"
            "  WHERE pipeline = %s AND kind = 'lease' AND detail->>'action' = 'acquire'"
            "    AND owner <> %s AND at >= to_timestamp(%s) GROUP BY topic, partition)"
            " SELECT acq.topic, acq.partition, extract(epoch FROM acq.a)::float8,"
            "  (SELECT extract(epoch FROM min(c.at))::float8 FROM sidecar.events c"
            "    WHERE c.pipeline = %s AND c.topic = acq.topic AND c.partition = acq.partition"
            "      AND c.kind IN ('commit', 'replay') AND c.at >= acq.a)"
            " FROM acq", (pipeline, victim.name, t_kill, pipeline))
    end = time.time() + 10
    rows = first_commits()
    while time.time() < end and any(r[3] is None for r in rows if (r[0], r[1]) in held):
        time.sleep(0.05)
        rows = first_commits()
    acq = [r[2] - t_kill for r in rows if (r[0], r[1]) in held]
    first = [r[3] - r[2] for r in rows if (r[0], r[1]) in held and r[3] is not None]
    producer.stop(signal.SIGKILL, 30)
    for i in insts:
        if i is not victim:
            i.stop()
    return {"mode": mode, "partitions_moved": len(held),
            "all_leased_s": round(t_leased - t_kill, 3),
            "last_acquired_s": round(max(acq), 3) if acq else None,
            "first_commit_after_lease_s": round(max(first), 3) if first else None}


def phase_join(env, mode, run):
    pipeline, topic = "jo%d%s" % (run, mode[0]), "jo%d%s" % (run, mode[0])
    nparts = 12
    env.mock.p.stdin.write(("topic create %s %d\n" % (topic, nparts)).encode())
    env.mock.p.stdin.flush()
    env.mock.p.stdout.readline()
    insts = start_group(env, pipeline, topic, mode, ["a", "b"], nparts)
    before = {(t, p): o for t, p, o in leases(env, pipeline)}
    newcomer = Instance(env, pipeline, topic, mode, "c")
    t0 = time.time()
    newcomer.start()
    wait(lambda: len(leases(env, pipeline, "c")) >= nparts // 3, 120, "%s: join" % mode)
    t_share = time.time() - t0
    time.sleep(3 * RENEW_MS / 1000)  # at rest: nothing more moves
    after = {(t, p): o for t, p, o in leases(env, pipeline)}
    moved_elsewhere = sum(1 for k, o in after.items() if before.get(k) not in (o, None)
                          and o != "c")
    for i in insts + [newcomer]:
        i.stop()
    return {"mode": mode, "share_s": round(t_share, 3),
            "held_by_newcomer": sum(1 for o in after.values() if o == "c"),
            "moved_between_others": moved_elsewhere}


def phase_sigterm(env, mode, run):
    pipeline, topic = "st%d%s" % (run, mode[0]), "st%d%s" % (run, mode[0])
    nparts = 6
    env.mock.p.stdin.write(("topic create %s %d\n" % (topic, nparts)).encode())
    env.mock.p.stdin.flush()
    env.mock.p.stdout.readline()
    insts = start_group(env, pipeline, topic, mode, ["a", "b"], nparts)
    t0 = time.time()
    insts[0].stop(signal.SIGTERM, 30)
    took = time.time() - t0
    left = len(leases(env, pipeline, insts[0].name))
    insts[1].stop()
    return {"mode": mode, "exit": insts[0].child.status, "exit_s": round(took, 3),
            "leases_left": left}


def phase_upkeep(env, mode, nparts, ninst, seconds):
    pipeline = topic = "up%d%s%d" % (nparts, mode[0], ninst)
    env.mock.p.stdin.write(("topic create %s %d\n" % (topic, nparts)).encode())
    env.mock.p.stdin.flush()
    env.mock.p.stdout.readline()
    insts = start_group(env, pipeline, topic, mode, ["a", "b", "c"][:ninst], nparts)
    time.sleep(3)
    env.sql("SELECT pg_stat_statements_reset()")
    time.sleep(seconds)
    rows = env.sql("SELECT query, calls, rows FROM pg_stat_statements")
    calls = sum(c for q, c, _ in rows if any(k in q for k in UPKEEP))
    rows_out = sum(r for q, _, r in rows if "lease_tick" in q)
    for i in insts:
        i.stop()
    return {"mode": mode, "partitions": nparts, "instances": ninst,
            "statements_per_s": round(calls / seconds, 2),
            "per_instance_per_s": round(calls / seconds / ninst, 2),
            "tick_rows_per_s": round(rows_out / seconds, 1)}


def median(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default="build-bench")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds per mode")
    ap.add_argument("--upkeep-seconds", type=int, default=20)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    env = Env(args)
    env.start_pg()
    env.start_mock(["warmup:1"])
    # Migrate once with any config.
    first = Instance(env, "warmup", "warmup", "lease", "w")
    migrate(env, first)

    results = {"failover": [], "join": [], "sigterm": [], "upkeep": []}
    modes = ["lease", "kafka-group"]
    for run in range(args.repeat):
        for mode in modes:
            log("round %d, %s: failover" % (run + 1, mode))
            results["failover"].append(phase_failover(env, mode, run))
            log("round %d, %s: join" % (run + 1, mode))
            results["join"].append(phase_join(env, mode, run))
            log("round %d, %s: sigterm" % (run + 1, mode))
            results["sigterm"].append(phase_sigterm(env, mode, run))
    for nparts in (16, 1024):
        for ninst in (1, 3):
            for mode in modes:
                log("upkeep, %s, %d partitions, %d instance(s)" % (mode, nparts, ninst))
                results["upkeep"].append(phase_upkeep(env, mode, nparts, ninst,
                                                      args.upkeep_seconds))

    summary = {}
    for mode in modes:
        fo = [r for r in results["failover"] if r["mode"] == mode]
        jo = [r for r in results["join"] if r["mode"] == mode]
        st = [r for r in results["sigterm"] if r["mode"] == mode]
        summary[mode] = {
            "failover_all_leased_s": median([r["all_leased_s"] for r in fo]),
            "failover_first_commit_after_lease_s": median(
                [r["first_commit_after_lease_s"] for r in fo]),
            "join_share_s": median([r["share_s"] for r in jo]),
            "join_moved_between_others": max(r["moved_between_others"] for r in jo),
            "sigterm_exit_codes": sorted({r["exit"] for r in st}),
            "sigterm_exit_s": median([r["exit_s"] for r in st]),
            "sigterm_leases_left": max(r["leases_left"] for r in st),
        }
    print("\nassignment benchmark (ttl %d ms, renew %d ms; medians of %d interleaved rounds)"
          % (TTL_MS, RENEW_MS, args.repeat))
    print("%-46s %12s %12s" % ("", "lease", "kafka-group"))
    for key in summary["lease"]:
        print("%-46s %12s %12s" % (key, summary["lease"][key], summary["kafka-group"][key]))
    print("\nlease upkeep of idle instances: PostgreSQL statements per second")
    print("%-12s %10s %12s %13s %14s" % ("partitions", "instances", "mode", "statements/s",
                                          "tick rows/s"))
    for r in results["upkeep"]:
        print("%-12d %10d %12s %13.2f %14.1f" % (r["partitions"], r["instances"], r["mode"],
                                                 r["statements_per_s"], r["tick_rows_per_s"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "runs": results, "ttl_ms": TTL_MS,
                       "renew_ms": RENEW_MS}, f, indent=2)
        log("wrote %s" % args.json)


if __name__ == "__main__":
    main()
