#!/usr/bin/python3
"""bench.py - the sidecar side by side with reference consumers, in one run.

Usually started through `bash bench/run.sh` (which installs the packages and
builds first).  It starts a throwaway PostgreSQL (as the postgres user,
fsync on) and the librdkafka mock cluster (kafka-mock), produces one fixed
data set, and on that same topic measures, one after the other:

  kcat         reference consumer: kcat -C -e -o beginning into a file
  file         sidecar -> file sink (fsync: batch)
  copy         reference loader: psql \\copy of the same rows, same table shape
  postgres     sidecar -> postgres sink in the checkpoint database
  http         sidecar -> http sink -> bench-receiver (answers 200)
  naive        naive_consumer.py: confluent_kafka + psycopg2, at-least-once

For each: records/s, MB/s (key + value bytes), CPU seconds (user + sys of
the measured process, from wait4), peak RSS, and the CPU the PostgreSQL
server and the mock broker used meanwhile.  Then end-to-end latency at a
fixed produce rate (as a reader of the output files sees it, kcat's and the
sidecar's alike: bench-latency-reader), PostgreSQL round trips per batch (counted by a proxy
between the sidecar and PostgreSQL), and recovery time after SIGKILL with
two instances.  Prints a table and writes JSON.

Throughput is measured from the first delivered record to the last one, so
the consumer-group join (about 3 s on the mock) and process start-up do not
count; the wall time from process start is reported too.
"""
import argparse
import atexit
import datetime
import glob
import json
import os
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import psycopg2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.025
MiB = 1024 * 1024
PG_SETTINGS = {
    # Durable, like production: every commit waits for its WAL flush.
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "256MB",
    # Checkpoints run between phases (explicit CHECKPOINT), never in the middle of one.
    "max_wal_size": "8GB",
    "checkpoint_timeout": "1h",
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "max_connections": "100",
}


# Only where the benchmark needs to reach the server; everything else as initdb leaves it
# (--pg-config defaults: fsync on, shared_buffers 128MB, max_wal_size 1GB, checkpoints as the
# server decides, no pg_stat_statements).
PG_SHOWN = ["fsync", "synchronous_commit", "full_page_writes", "shared_buffers", "max_wal_size",
            "checkpoint_timeout", "shared_preload_libraries", "max_connections"]


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- processes ------------------------------------------------------------------------


class Child:
    """A child process whose CPU time and peak RSS come from wait4()."""

    live = set()

    def __init__(self, argv, stdout=None, stderr=None, env=None, stdin=subprocess.DEVNULL,
                 preexec=None, group=False):
        """group: a process group of its own, killed whole by stop() (--wrap)."""
        self.argv = argv
        self.group = group
        self.t_start = time.time()
        self.p = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env, stdin=stdin,
                                  preexec_fn=preexec, start_new_session=group)
        self.pid = self.p.pid
        self.rusage = None
        self.status = None
        self.t_end = None
        self.hwm_kib = 0
        Child.live.add(self)

    def sample_hwm(self):
        """
        The process's peak RSS so far (VmHWM).  wait4()'s ru_maxrss cannot be used: Linux
        counts into it the RSS the child had before exec, a copy of this Python process.
        """
        try:
            with open("/proc/%d/status" % self.pid) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.hwm_kib = max(self.hwm_kib, int(line.split()[1]))
                        break
        except OSError:
            pass

    def _reaped(self, status, ru):
        self.status = os.waitstatus_to_exitcode(status)
        self.rusage = ru
        self.t_end = time.time()
        self.p.returncode = self.status  # keep Popen from waiting for it again
        Child.live.discard(self)

    def poll(self):
        """True once the process exited (reaping it)."""
        if self.rusage is not None:
            return True
        self.sample_hwm()
        pid, status, ru = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self._reaped(status, ru)
        return True

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.time() + timeout
        while not self.poll():
            if deadline is not None and time.time() > deadline:
                return False
            time.sleep(0.01)
        return True

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.rusage is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            if not self.wait(timeout):
                os.kill(self.pid, signal.SIGKILL)
                self.wait()
        if self.group:
            try:  # what a --wrap command started (perf's child) goes with it
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return self

    @property
    def cpu(self):
        return self.rusage.ru_utime + self.rusage.ru_stime

    @property
    def maxrss_mib(self):
        """Peak RSS: VmHWM as last sampled while it ran (see sample_hwm())."""
        return (self.hwm_kib or self.rusage.ru_maxrss) / 1024.0


def proc_stat(pid):
    """The fields of /proc/PID/stat after the command name (state first), None if it is gone."""
    try:
        with open("/proc/%s/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def stat_cpu(fields):
    """utime + stime of proc_stat() fields, in seconds."""
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_stat_cpu(pid, children=False):
    """utime + stime (+ reaped children) of pid in seconds, 0 if it is gone."""
    fields = proc_stat(pid)
    if fields is None:
        return 0.0
    cpu = stat_cpu(fields)
    if children:
        cpu += (int(fields[13]) + int(fields[14])) / CLK_TCK
    return cpu


def tree_cpu(root):
    """CPU of a process tree: root, its reaped children and its live children (PostgreSQL)."""
    total = proc_stat_cpu(root, children=True)
    for d in os.listdir("/proc"):
        fields = proc_stat(d) if d.isdigit() else None
        if fields and int(fields[1]) == root:
            total += stat_cpu(fields)
    return total


# ---- environment: PostgreSQL, kafka-mock ------------------------------------------------


class Env:
    def __init__(self, args):
        self.args = args
        self.build = os.path.abspath(args.build_dir)
        self.bin = {
            "sidecar": os.path.join(self.build, "sidecar", "sidecar"),
            "mock": os.path.join(self.build, "sidecar", "kafka-mock"),
            "produce": os.path.join(self.build, "sidecar", "kafka-produce"),
            "receiver": os.path.join(self.build, "bench", "bench-receiver"),
            "delay": os.path.join(self.build, "bench", "bench-delay-proxy"),
            "latency": os.path.join(self.build, "bench", "bench-latency-reader"),
            "probe": os.path.join(self.build, "bench", "bench-machine-probe"),
        }
        if args.sidecar_ref:
            ref = os.path.abspath(args.sidecar_ref)
            self.bin["sidecar_ref"] = (os.path.join(ref, "sidecar", "sidecar")
                                       if os.path.isdir(ref) else ref)
        for name, path in self.bin.items():
            if not os.access(path, os.X_OK):
                sys.exit("bench: %s not found at %s (build first: bash bench/run.sh)" % (name, path))
        self.dir = tempfile.mkdtemp(prefix="sidecar-bench-", dir=args.workdir)
        os.chmod(self.dir, 0o755)
        self.pg_pid = None
        self.mock = None
        self.pgbin = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                            key=lambda p: int(re.search(r"/(\d+)/bin", p).group(1)))[-1]
        atexit.register(self.cleanup)

    def as_postgres(self, argv, **kw):
        if os.getuid() == 0:
            argv = ["runuser", "-u", "postgres", "--"] + argv
        return subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)

    def start_pg(self):
        self.pgdata = os.path.join(self.dir, "pg")
        os.mkdir(self.pgdata, 0o700)
        if os.getuid() == 0:
            shutil.chown(self.pgdata, "postgres")
        self.as_postgres([self.pgbin + "/initdb", "-D", self.pgdata, "-U", "postgres", "-A",
                          "trust", "-E", "UTF8", "--locale=C"], stderr=subprocess.DEVNULL)
        self.pg_port = free_port()
        self.tuned = self.args.pg_config == "tuned"
        conf = dict(PG_SETTINGS if self.tuned else {}, port=str(self.pg_port),
                    listen_addresses="'127.0.0.1'", unix_socket_directories="'%s'" % self.pgdata)
        with open(os.path.join(self.pgdata, "postgresql.conf"), "a") as f:
            for k, v in conf.items():
                f.write("%s = %s\n" % (k, v))
        self.as_postgres([self.pgbin + "/pg_ctl", "-D", self.pgdata, "-l",
                          os.path.join(self.pgdata, "server.log"), "-w", "start"])
        with open(os.path.join(self.pgdata, "postmaster.pid")) as f:
            self.pg_pid = int(f.readline())
        self.dsn = "host=127.0.0.1 port=%d user=postgres dbname=postgres" % self.pg_port
        self.db = psycopg2.connect(self.dsn)
        self.db.autocommit = True
        # This session polls progress (every POLL_S) while a sidecar runs but not while psql
        # loads: server_cpu() leaves it out so its queries are not charged to the sidecar.
        self.db_backend = self.db.get_backend_pid()
        self.has_pgss = self.tuned
        if self.has_pgss:
            self.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.pg_version = self.sql1("SHOW server_version")
        self.pg_settings = {k: self.sql1("SHOW %s" % k) for k in PG_SHOWN}
        self.pg_settings["config"] = self.args.pg_config
        # What the measured clients connect to: the server, or the delay proxy in front of it
        # (--pg-delay-ms).  The bench's own queries always go straight to the server.
        self.client_port = self.pg_port
        if self.args.pg_delay_ms > 0:
            self.proxy = Child([self.bin["delay"], "--upstream", str(self.pg_port), "--delay-us",
                                str(int(self.args.pg_delay_ms * 1000))], stdout=subprocess.PIPE,
                               stderr=open(os.path.join(self.dir, "delay-proxy.log"), "w"))
            self.client_port = int(self.proxy.p.stdout.readline())
            self.pg_settings["client_delay_ms_each_way"] = self.args.pg_delay_ms
        self.client_dsn = "host=127.0.0.1 port=%d user=postgres dbname=postgres" % self.client_port

    def reset_statements(self):
        if self.has_pgss:
            self.sql("SELECT pg_stat_statements_reset()")

    def sql(self, q, params=None):
        with self.db.cursor() as c:
            c.execute(q, params)
            return c.fetchall() if c.description else None

    def sql1(self, q, params=None):
        return self.sql(q, params)[0][0]

    def start_mock(self, topics):
        argv = [self.bin["mock"], "--brokers", "1"]
        for t in topics:
            argv += ["--topic", t]
        self.mock = Child(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=open(os.path.join(self.dir, "mock.log"), "w"))
        self.bootstrap = self.mock.p.stdout.readline().decode().strip()
        if not self.bootstrap:
            sys.exit("bench: kafka-mock did not start (see %s/mock.log)" % self.dir)

    def produce(self, topic, per_partition, rate=None, wait=True):
        argv = [self.bin["produce"], "-b", self.bootstrap, "-t", topic, "--count",
                str(per_partition)]
        if rate:
            argv += ["--rate", str(rate)]
        c = Child(argv, stderr=open(os.path.join(self.dir, "produce-%s.log" % topic), "a"))
        if wait:
            c.wait()
            if c.status != 0:
                sys.exit("bench: kafka-produce failed (see %s/produce-%s.log)" % (self.dir, topic))
        return c

    def server_cpu(self):
        own = proc_stat_cpu(self.db_backend)
        return {"postgres": tree_cpu(self.pg_pid) - own, "broker": proc_stat_cpu(self.mock.pid)}

    def checkpoint(self):
        """
        Flushes dirty buffers and WAL between phases so one phase's I/O never lands in another
        (the tuned server only: with initdb defaults the server checkpoints as it would for a
        user, whenever max_wal_size or checkpoint_timeout says).
        """
        if self.tuned:
            self.sql("CHECKPOINT")
            os.sync()

    def cleanup(self):
        for c in list(Child.live):
            if c is not self.mock:
                c.stop(signal.SIGKILL, 5)
        if self.mock:
            self.mock.stop(signal.SIGTERM, 5)
        if self.pg_pid:
            try:
                self.db.close()
            except Exception:
                pass
            try:
                self.as_postgres([self.pgbin + "/pg_ctl", "-D", self.pgdata, "-m", "immediate",
                                  "stop"], stderr=subprocess.DEVNULL)
            except subprocess.CalledProcessError:
                pass
            self.pg_pid = None
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            log("kept %s" % self.dir)


# ---- the sidecar ----------------------------------------------------------------------


class Sidecar:
    """One `sidecar run` with a generated config; progress read from sidecar.checkpoints."""

    def __init__(self, env, name, topic, sink, batch=None, instance="bench-1", dsn=None,
                 kafka_props=None, log_name=None, ref=False, topics=None, extra=None):
        """ref: run the reference binary (--sidecar-ref) with only what it understands."""
        self.env, self.name, self.ref = env, name, ref
        self.admin = "127.0.0.1:%d" % free_port()
        pipeline = {"name": name, "topics": topics or [topic], "start_from": "earliest",
                    "sink": sink}
        batch = dict(env.args.batch, **(batch or {}))
        if batch:
            pipeline["batch"] = batch
        kafka_props = dict(env.args.kafka_props, **(kafka_props or {}))
        if kafka_props:
            pipeline["kafka_properties"] = kafka_props
        pipeline.update(env.args.pipeline)
        conf = {
            "instance_id": instance,
            "postgres": {"dsn": dsn or env.client_dsn},
            "kafka": {"bootstrap.servers": env.bootstrap},
            "admin": {"listen": self.admin},
            "log": {"level": env.args.log_level, "format": "text"},
            "pipelines": [pipeline],
        }
        limit = env.args.ref_memory_mib if ref else env.args.memory_mib
        if limit:
            conf["memory"] = {"limit_mib": limit}
        for k, v in (extra or {}).items():
            conf[k] = v
        self.conf_path = os.path.join(env.dir, "%s-%s.json" % (name, instance))
        with open(self.conf_path, "w") as f:
            json.dump(conf, f, indent=2)
        self.log_path = os.path.join(env.dir, log_name or "%s-%s.log" % (name, instance))
        self.child = None

    def start(self):
        wrap = self.env.args.wrap.split() if self.env.args.wrap else []
        binary = self.env.bin["sidecar_ref" if self.ref else "sidecar"]
        env = dict(os.environ, **self.env.args.sidecar_env) if self.env.args.sidecar_env else None
        self.child = Child(wrap + [binary, "run", "-c", self.conf_path], env=env,
                           stderr=open(self.log_path, "a"), stdout=subprocess.DEVNULL,
                           group=bool(wrap))
        return self

    def committed(self):
        return int(self.env.sql1("SELECT coalesce(sum(committed_offset), 0) FROM "
                                 "sidecar.checkpoints WHERE pipeline = %s", (self.name,)))

    def assigned(self):
        """When the group handed it its partitions (its first lease): fetching starts then."""
        return float(self.env.sql1("SELECT extract(epoch FROM min(at)) FROM sidecar.events WHERE "
                                   "pipeline = %s AND kind = 'lease'", (self.name,)))

    def batches(self):
        return int(self.env.sql1("SELECT count(*) FROM sidecar.events WHERE pipeline = %s AND "
                                 "kind IN ('commit', 'replay')", (self.name,)))

    def metrics(self):
        try:
            with urllib.request.urlopen("http://%s/metrics" % self.admin, timeout=5) as r:
                return r.read().decode()
        except OSError:
            return ""


def wait_progress(progress, expect, timeout, alive=None, what="run", stalls=None):
    """
    Polls progress() until it reaches expect.  Returns (t_first, n_first, t_done).
    stalls, a list, receives the longest time (s) without progress once delivery started.
    """
    t_first = n_first = None
    deadline = time.time() + timeout
    last_n, last_t, longest = -1, None, 0.0
    while True:
        n = progress()
        now = time.time()
        if n > 0 and t_first is None:
            t_first, n_first = now, n
        if n != last_n:
            if last_t is not None and last_n > 0:
                longest = max(longest, now - last_t)
            last_n, last_t = n, now
        if n >= expect:
            if stalls is not None:
                stalls.append(round(longest, 3))
            return t_first, n_first, now
        if now > deadline:
            raise RuntimeError("%s: %d of %d records after %ds" % (what, n, expect, timeout))
        if alive is not None and not alive():
            raise RuntimeError("%s: process exited with %d of %d records" % (what, n, expect))
        time.sleep(POLL_S)


def result(name, records, payload_bytes, t_start, t_begin, t_done, child, servers, extra=None):
    """One throughput row: rate over [t_begin, t_done], CPU and RSS of the child."""
    span = max(t_done - t_begin, 1e-6)
    rate = records / span
    r = {
        "name": name,
        "records": records,
        "seconds": round(span, 3),
        "wall_seconds": round(t_done - t_start, 3),
        "records_per_s": round(rate),
        "mb_per_s": round(rate * payload_bytes / records / 1e6, 2),
        "cpu_s": round(child.cpu, 2) if child else None,
        "cpu_user_s": round(child.rusage.ru_utime, 2) if child else None,
        "cpu_sys_s": round(child.rusage.ru_stime, 2) if child else None,
        "cpu_s_per_million": round(child.cpu * 1e6 / records, 2) if child else None,
        "peak_rss_mib": round(child.maxrss_mib, 1) if child else None,
        "postgres_cpu_s": round(servers["postgres"], 2),
        "broker_cpu_s": round(servers["broker"], 2),
        "postgres_cpu_s_by_role": servers.get("postgres_roles"),
        "postgres_minor_faults_by_role": servers.get("postgres_minflt"),
    }
    if extra:
        r.update(extra)
    return r


# PostgreSQL's processes by the title it gives them (postgres: checkpointer, ...); a client's
# backend is titled with its user, database and address.
PG_ROLES = ("autovacuum worker", "autovacuum launcher", "checkpointer", "background writer",
            "walwriter", "logical replication launcher")


def pg_children(root, skip):
    """
    {pid: (role, CPU s, minor page faults)} of the live children of root, but skip (the bench's
    own backend).
    """
    out = {}
    try:
        with open("/proc/%d/task/%d/children" % (root, root)) as f:
            pids = f.read().split()
    except OSError:
        return out
    for d in pids:
        fields = proc_stat(d) if int(d) != skip else None
        if fields is None:
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        role = next((r for r in PG_ROLES if r in title), "backend")
        out[int(d)] = (role, stat_cpu(fields), int(fields[7]))
    return out


class Meter:
    """
    Server CPU used between start() and stop(), and PostgreSQL's part of it by process role
    (client backends, autovacuum workers, checkpointer, ...): a thread samples the server's
    processes every 100 ms, so a process that exits loses at most its last 100 ms to
    "unattributed".  With initdb defaults the server vacuums and checkpoints on its own, and
    this says whether that work landed in the window.
    """

    def __init__(self, env):
        self.env = env
        self.t0 = env.server_cpu()
        self.first = pg_children(env.pg_pid, env.db_backend) if env.pg_pid else {}
        self.last = dict(self.first)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self):
        while not self.done.wait(0.1):
            self.last.update(pg_children(self.env.pg_pid, self.env.db_backend))

    def stop(self):
        time.sleep(0.5)  # let the postmaster reap exited backends: a zombie's CPU is invisible
        self.done.set()
        self.thread.join()
        t1 = self.env.server_cpu()
        out = {k: t1[k] - self.t0[k] for k in t1}
        roles, faults = {}, {}
        for pid, (role, cpu, minflt) in self.last.items():
            before = self.first.get(pid, (role, 0.0, 0))
            roles[role] = roles.get(role, 0.0) + cpu - before[1]
            faults[role] = faults.get(role, 0) + minflt - before[2]
        roles = {k: round(v, 2) for k, v in roles.items() if v >= 0.005}
        roles["unattributed"] = round(out["postgres"] - sum(roles.values()), 2)
        out["postgres_roles"] = roles
        # Minor page faults: a backend maps each page of shared_buffers it touches on its
        # first touch, so every new connection pays for the buffers it uses once.
        out["postgres_minflt"] = {k: v for k, v in faults.items() if v > 0}
        return out


# ---- throughput phases --------------------------------------------------------------------

KCAT_FORMAT = "%t\\t%p\\t%o\\t%T\\t%k\\t%s\\n"


# librdkafka 2.0 stops fetching a partition once its queue holds queued.min.messages (100000)
# and only looks again when something wakes the fetcher, up to a second later: with its
# defaults kcat drains the backlog in bursts with most of each second idle.  The tuned
# reference lets it prefetch (almost) everything instead: its ceiling, bought with memory.
KCAT_TUNED = {"queued.min.messages": "1000000", "fetch.wait.max.ms": "100"}


def run_kcat(env, ds, name, props):
    out = os.path.join(env.dir, "%s.tsv" % name)
    env.checkpoint()
    m = Meter(env)
    argv = ["kcat", "-C", "-b", env.bootstrap, "-t", ds["topic"], "-o", "beginning", "-e", "-q",
            "-f", KCAT_FORMAT]
    for k, v in props.items():
        argv += ["-X", "%s=%s" % (k, v)]
    # Everything the file sink's envelope holds (topic, partition, offset, timestamp, key,
    # value), one record per line: the same work per record as the sidecar, minus the JSON.
    c = Child(argv, stdout=open(out, "wb"))
    # Done = the last byte written: kcat's exit (EOF on every partition, then closing the
    # client) may come a while later.
    t_done, last = None, -1
    while not c.poll():
        size = os.path.getsize(out)
        if size != last:
            t_done, last = time.time(), size
        time.sleep(POLL_S)
    if os.path.getsize(out) != last:
        t_done = c.t_end
    servers = m.stop()
    if c.status != 0:
        raise RuntimeError("%s exited with %d" % (name, c.status))
    lines = count_lines([out])
    if lines != ds["records"]:
        raise RuntimeError("%s wrote %d records, expected %d" % (name, lines, ds["records"]))
    size = os.path.getsize(out)
    # kcat assigns the partitions itself (no consumer group): it fetches from the start.
    r = result(name, ds["records"], ds["payload_bytes"], c.t_start, c.t_start, t_done, c,
               servers, {"output_mb": round(size / 1e6, 1), "properties": props})
    if "kcat_tsv" not in ds:
        ds["kcat_tsv"] = out  # the \copy input is made from it
    else:
        os.unlink(out)
    return r


def phase_kcat(env, ds, run):
    return run_kcat(env, ds, "kcat", {})


def phase_kcat_tuned(env, ds, run):
    return run_kcat(env, ds, "kcat_tuned", KCAT_TUNED)


def count_lines(paths):
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                n += b.count(b"\n")
    return n


# Statements the bench itself sends while it watches (excluded from the sidecar's counts).
BENCH_QUERY = re.compile(r"coalesce\(sum\(committed_offset\)|extract\(epoch|count\(\*\) FROM "
                         r"sidecar.events|pg_stat_statements|sidecar.partition_status")


def statement_counts(env, batches):
    """
    The sidecar's statements per batch since the last pg_stat_statements_reset(), and its
    transactions per batch: a checkpoint write is a transaction of its own unless it ran
    inside BEGIN ... COMMIT (the postgres sink's advance).
    """
    if not env.has_pgss:
        return {}
    allrows = [(calls, ms, q) for calls, ms, q in env.sql(
        "SELECT calls, total_exec_time, query FROM pg_stat_statements") if not BENCH_QUERY.search(q)]
    rows = [(calls, q) for calls, _, q in allrows]
    top = sorted(allrows, key=lambda r: -r[1])[:8]
    per = max(batches, 1)
    cp = {"pend": r"SET pending_first_offset = \$6", "commit": r"pending_first_offset = NULL",
          "commit_and_pend": r"pending_first_offset = \$9",
          "advance": r"committed_offset = \$9::bigint",
          # the grouped statements: several partitions' rows in one (sc_checkpoint.c)
          "commit_group": r"t SET committed_offset = r\.nxt",
          "pend_group": r"t SET pending_first_offset = r\.f"}
    counts = {k: sum(c for c, q in rows if re.search(r"checkpoints (t )?SET", q) and
                     re.search(v, q))
              for k, v in cp.items()}
    commits = sum(c for c, q in rows if q.strip().upper() == "COMMIT")
    tx = commits + sum(counts[k] for k in ("pend", "commit", "commit_and_pend", "commit_group",
                                           "pend_group"))
    # The postgres sink's ways for the rows: COPY, or the pipelined INSERT (sink_pg_fast).
    copies = sum(c for c, q in rows if re.search(r"^\s*COPY ", q, re.M))
    inserts = sum(c for c, q in rows if q.lstrip().upper().startswith("INSERT INTO") and
                  "unnest(" in q)
    return {
        "copy_per_batch": round(copies / per, 2),
        "insert_per_batch": round(inserts / per, 2),
        "statements_per_batch": round(sum(c for c, _ in rows) / per, 2),
        "transactions_per_batch": round(tx / per, 2),
        "checkpoint_writes_per_batch": {k: round(v / per, 2) for k, v in counts.items() if v},
        "top_statements_ms": [[c, round(ms), re.sub(r"\s+", " ", q)[:90]] for c, ms, q in top],
    }


def log_timeline(env, name, t_begin):
    """Commits per 50 ms since the first lease, and when each partition first did what."""
    rows = env.sql("SELECT floor((extract(epoch FROM at) - %s) * 20)::int, count(*), "
                   "sum(last_offset - first_offset + 1), count(DISTINCT partition) "
                   "FROM sidecar.events WHERE pipeline = %s AND kind = 'commit' "
                   "GROUP BY 1 ORDER BY 1", (t_begin, name))
    for b, c, n, np in rows:
        log("  t=%4d ms  %3d commits  %7d records  %2d partitions" % (b * 50, c, n, np))
    rows = env.sql("SELECT kind, partition, round((extract(epoch FROM min(at)) - %s) * 1000) "
                   "FROM sidecar.events WHERE pipeline = %s AND partition IS NOT NULL "
                   "GROUP BY 1, 2 ORDER BY 3", (t_begin, name))
    log("  first event per partition (ms): " +
        " ".join("%s/%s@%d" % (k, p, t) for k, p, t in rows))


def run_sidecar_phase(env, ds, label, name, sink, verify, batch=None, ref=False):
    env.checkpoint()
    env.reset_statements()
    m = Meter(env)
    _, _, wal0 = pg_counters(env)
    sc = Sidecar(env, name, ds["topic"], sink, batch=batch, ref=ref).start()
    stalls = []
    _, _, t_done = wait_progress(sc.committed, ds["records"], env.args.timeout,
                                 lambda: not sc.child.poll(), label, stalls)
    batches = sc.batches()
    t_begin = sc.assigned()
    if env.args.timeline:
        log_timeline(env, name, t_begin)
    metrics = sc.metrics()
    sc.child.stop(signal.SIGTERM)
    servers = m.stop()
    _, _, wal1 = pg_counters(env)
    extra = {"batches": batches, "records_per_batch": round(ds["records"] / max(batches, 1)),
             "longest_stall_s": stalls[0], "wal_bytes": wal1 - wal0}
    extra.update(statement_counts(env, batches))
    extra.update(verify())
    extra["sink_write_s_avg_ms"] = hist_avg_ms(metrics, "sidecar_sink_write_seconds")
    extra["checkpoint_s_avg_ms"] = hist_avg_ms(metrics, "sidecar_checkpoint_seconds")
    return result(label, ds["records"], ds["payload_bytes"], sc.child.t_start, t_begin, t_done,
                  sc.child, servers, extra)


def hist_avg_ms(metrics, name):
    total = count = 0.0
    for line in metrics.splitlines():
        if line.startswith(name + "_sum"):
            total += float(line.split()[-1])
        elif line.startswith(name + "_count"):
            count += float(line.split()[-1])
    return round(total / count * 1000, 3) if count else None


def phase_file(env, ds, run, ref=False):
    out = os.path.join(env.dir, "out-file-%d%s" % (run, "-ref" if ref else ""))
    sink = {"type": "file", "path": out + "/{topic}/{partition}.jsonl", "format": "jsonl",
            "fsync": "batch"}

    def verify():
        files = glob.glob(out + "/*/*.jsonl")
        lines = count_lines(files)
        if lines != ds["records"]:
            raise RuntimeError("file sink wrote %d records, expected %d" % (lines, ds["records"]))
        size = sum(os.path.getsize(f) for f in files)
        shutil.rmtree(out)
        return {"output_mb": round(size / 1e6, 1)}

    return run_sidecar_phase(env, ds, "file_ref" if ref else "file",
                             "bench-file-%d%s" % (run, "-ref" if ref else ""), sink, verify, ref=ref)


def make_copy_input(env, ds):
    """The kcat dump as COPY text rows of the sink's default table shape (not timed)."""
    path = os.path.join(env.dir, "copy.txt")
    utc = datetime.timezone.utc
    with open(ds["kcat_tsv"], "rb") as src, open(path, "wb") as dst:
        for line in src:
            t, p, o, ts, k, v = line.rstrip(b"\n").split(b"\t", 5)
            v = v.replace(b"\\", b"\\\\")
            when = datetime.datetime.fromtimestamp(int(ts) / 1000, utc).isoformat()
            dst.write(b"\t".join([t, p, o, k, v, b"{}", when.encode()]) + b"\n")
    ds["copy_txt"] = path


TABLE_DDL = ('CREATE TABLE %s (topic text NOT NULL, partition int NOT NULL, "offset" bigint NOT '
             'NULL, key text, value jsonb, headers jsonb, ts timestamptz, '
             'PRIMARY KEY (topic, partition, "offset"))')


def table_sizes(env, name):
    """The loaded table's heap and index sizes: how the order of the rows shaped them."""
    heap, index = env.sql("SELECT pg_relation_size(%s::regclass), pg_indexes_size(%s::regclass)", (name, name))[0]
    return {"heap_mib": round(heap / 2**20, 1), "index_mib": round(index / 2**20, 1)}


def fresh_table(env, name):
    env.sql("DROP TABLE IF EXISTS %s" % name)
    env.sql(TABLE_DDL % name)


def phase_copy(env, ds, run):
    if "copy_txt" not in ds:
        make_copy_input(env, ds)
    table = "bench.copy_rows"
    fresh_table(env, table)
    env.checkpoint()
    m = Meter(env)
    _, _, wal0 = pg_counters(env)
    c = Child(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p",
               str(env.client_port), "-U", "postgres", "-d", "postgres", "-c",
               "\\copy %s (topic, partition, \"offset\", key, value, headers, ts) FROM '%s'" %
               (table, ds["copy_txt"])], stdout=subprocess.DEVNULL)
    c.wait()
    servers = m.stop()
    _, _, wal1 = pg_counters(env)
    if c.status != 0:
        raise RuntimeError("psql \\copy exited with %d" % c.status)
    n = env.sql1("SELECT count(*) FROM %s" % table)
    if n != ds["records"]:
        raise RuntimeError("\\copy loaded %d rows, expected %d" % (n, ds["records"]))
    # psql connects, sends the file and commits once: its whole lifetime is the load.
    r = result("copy", ds["records"], ds["payload_bytes"], c.t_start, c.t_start, c.t_end, c,
               servers)
    r.update({"wal_bytes": wal1 - wal0, **table_sizes(env, table)})
    return r


def phase_postgres(env, ds, run, ref=False, method=None):
    """method: force the sink's write_method (copy, pipeline); None: the default (auto)."""
    label = "postgres" + ("_ref" if ref else "_" + method if method else "")
    table = "bench.sidecar_rows"
    fresh_table(env, table)
    sink = {"type": "postgres", "table": table, "mode": "insert"}
    if method:
        sink["write_method"] = method

    def verify():
        n = env.sql1("SELECT count(*) FROM %s" % table)
        if n != ds["records"]:
            raise RuntimeError("postgres sink wrote %d rows, expected %d" % (n, ds["records"]))
        return table_sizes(env, table)

    return run_sidecar_phase(env, ds, label, "bench-%s-%d" % (label, run), sink, verify, ref=ref)


class Receiver:
    def __init__(self, env):
        self.child = Child([env.bin["receiver"]], stdout=subprocess.PIPE,
                           stderr=open(os.path.join(env.dir, "receiver.log"), "a"))
        self.port = int(self.child.p.stdout.readline())
        self.url = "http://127.0.0.1:%d/ingest" % self.port

    def stats(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/stats" % self.port, timeout=5) as r:
            return json.loads(r.read())


def phase_http(env, ds, run, ref=False):
    rx = Receiver(env)
    sink = {"type": "http", "url": rx.url}

    def verify():
        st = rx.stats()
        rx.child.stop()
        if st["lines"] < ds["records"]:
            raise RuntimeError("receiver got %d records, expected %d" % (st["lines"],
                                                                         ds["records"]))
        return {"receiver_cpu_s": round(rx.child.cpu, 2), "requests": st["requests"]}

    return run_sidecar_phase(env, ds, "http_ref" if ref else "http",
                             "bench-http-%d%s" % (run, "-ref" if ref else ""), sink, verify, ref=ref)


def phase_naive(env, ds, run):
    table = "bench.naive_rows"
    fresh_table(env, table)
    env.checkpoint()
    m = Meter(env)
    c = Child(["/usr/bin/python3", os.path.join(ROOT, "bench", "naive_consumer.py"),
               "--bootstrap", env.bootstrap, "--topic", ds["topic"], "--group",
               "bench-naive-%d" % run, "--dsn", env.client_dsn, "--table", table, "--expect",
               str(ds["records"])], stdout=subprocess.PIPE,
              stderr=open(os.path.join(env.dir, "naive.log"), "a"))
    out = c.p.stdout.read()
    c.wait()
    servers = m.stop()
    if c.status != 0:
        raise RuntimeError("naive consumer exited with %d (see naive.log)" % c.status)
    rep = json.loads(out)
    n = env.sql1("SELECT count(DISTINCT (partition, \"offset\")) FROM %s" % table)
    if n != ds["records"]:
        raise RuntimeError("naive consumer wrote %d distinct rows, expected %d" %
                           (n, ds["records"]))
    return result("naive", ds["records"], ds["payload_bytes"], c.t_start, rep["assigned"],
                  rep["done"], c, servers, {"batches": rep["batches"]})


PHASES = {
    "kcat": phase_kcat,
    "kcat_tuned": phase_kcat_tuned,
    "file": phase_file,
    "file_ref": lambda env, ds, run: phase_file(env, ds, run, ref=True),
    "copy": phase_copy,
    "postgres": phase_postgres,
    "postgres_copy": lambda env, ds, run: phase_postgres(env, ds, run, method="copy"),
    "postgres_pipeline": lambda env, ds, run: phase_postgres(env, ds, run, method="pipeline"),
    "postgres_ref": lambda env, ds, run: phase_postgres(env, ds, run, ref=True),
    "http": phase_http,
    "http_ref": lambda env, ds, run: phase_http(env, ds, run, ref=True),
    "naive": phase_naive,
}
# Run unless --only says otherwise (the _ref phases need --sidecar-ref; postgres_copy and
# postgres_pipeline force one way of the postgres sink, for comparing them).
DEFAULT_PHASES = ["kcat", "kcat_tuned", "file", "copy", "postgres", "http", "naive"]


# ---- latency ------------------------------------------------------------------------------


class LatencyReader:
    """
    bench-latency-reader on one directory: the wall-clock time at which each line written
    there could be read, minus the record's Kafka timestamp.  Both sides of the comparison
    go through it (kcat writes the same format to a file), so its own lag, small as it is,
    counts for both.
    """

    def __init__(self, env, directory, name):
        self.tsv = os.path.join(env.dir, "latency-%s.tsv" % name)
        os.makedirs(directory, exist_ok=True)
        self.child = Child([env.bin["latency"], directory, self.tsv], stdout=subprocess.PIPE)
        if self.child.p.stdout.readline().strip() != b"ready":
            raise RuntimeError("bench-latency-reader did not start on " + directory)

    def stop(self):
        """The (timestamp, latency ms) of every line read."""
        self.child.stop()
        with open(self.tsv) as f:
            return [(int(t), float(v)) for t, v in (line.split() for line in f)]


def percentiles(lat, skip_ms):
    """p50/p99/max of the latencies of records produced after the first skip_ms."""
    if not lat:
        return {"records": 0}
    start = min(t for t, _ in lat) + skip_ms
    vals = sorted(v for t, v in lat if t >= start)
    if not vals:
        return {"records": 0}

    def pct(p):
        return round(vals[min(len(vals) - 1, int(len(vals) * p / 100))], 1)

    return {"records": len(vals), "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
            "max_ms": round(vals[-1], 1),
            # the distribution, for plot.py: percentiles 1..99 and 99.9
            "quantiles": [pct(q) for q in range(1, 100)] + [pct(99.9)]}


def wait_owned(env, pipeline, partitions, timeout=60, owners=1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = env.sql("SELECT count(*), count(DISTINCT owner) FROM sidecar.partition_status "
                       "WHERE pipeline = %s AND lease_live", (pipeline,))
        if rows[0][0] >= partitions and rows[0][1] >= owners:
            return
        time.sleep(0.1)
    raise RuntimeError("%s: partitions not leased after %ds" % (pipeline, timeout))


# The mock broker's CPU per second of a latency run above which the run measures the broker
# more than the consumers (see --latency-seconds).
MOCK_BUSY = 0.5


class BrokerLoad:
    """The mock broker's CPU from here to per_s(), per second of wall-clock time."""

    def __init__(self, env):
        self.env = env
        self.t0, self.cpu0 = time.time(), proc_stat_cpu(env.mock.pid)

    def per_s(self):
        cpu, t = proc_stat_cpu(self.env.mock.pid), time.time()
        return round((cpu - self.cpu0) / max(t - self.t0, 0.001), 2)


def phase_latency(env, args, quick, run=0):
    """Records produced at a fixed rate; their arrival in the file sink vs their timestamp."""
    seconds = 6 if quick else args.latency_seconds
    rate = args.rate
    per_part = rate * seconds // args.partitions
    # The mock broker answers a fetch that found no data only after fetch.wait.max.ms
    # (500 ms by default) and never early when data arrives meanwhile; a real broker answers
    # as soon as fetch.min.bytes are there.  A short wait emulates that for both consumers.
    props = {"fetch.wait.max.ms": "5"}
    res = {"rate": rate, "seconds": seconds, "max_wait_ms": 10,
           "consumer_properties": props, "skip_first_ms": 1000}

    # Reference: kcat on its own topic, writing each record's timestamp as a JSON line to a
    # file as it gets it (-u: unbuffered), read by the same reader as the sidecar's files.
    kdir = os.path.join(env.dir, "out-latency-kcat-%d" % run)
    kreader = LatencyReader(env, kdir, "kcat-%d" % run)
    argv = ["kcat", "-C", "-u", "-q", "-b", env.bootstrap, "-t", "latref%d" % run, "-o", "end",
            "-f", '{"timestamp":%T}\\n']
    for k, v in props.items():
        argv += ["-X", "%s=%s" % (k, v)]
    with open(os.path.join(kdir, "kcat.jsonl"), "w") as kout:
        kcat = Child(argv, stdout=kout)
    time.sleep(2)  # kcat -o end: let it reach the end before producing
    broker = BrokerLoad(env)
    env.produce("latref%d" % run, per_part, rate=rate)
    kcat_broker = broker.per_s()
    time.sleep(1)
    kcat.stop()
    res["kcat"] = percentiles(kreader.stop(), 1000)
    res["kcat"]["broker_cpu_per_s"] = kcat_broker

    out = os.path.join(env.dir, "out-latency-%d" % run)
    sink = {"type": "file", "path": out + "/{topic}/{partition}.jsonl", "format": "jsonl",
            "fsync": "batch"}
    topic, name = "lat%d" % run, "bench-latency-%d" % run
    sc = Sidecar(env, name, topic, sink, batch={"max_wait_ms": 10}, kafka_props=props).start()
    wait_owned(env, name, args.partitions)
    deadline = time.time() + 30
    while len(glob.glob(out + "/%s/*.jsonl" % topic)) < args.partitions and time.time() < deadline:
        time.sleep(0.1)
    reader = LatencyReader(env, os.path.join(out, topic), "sidecar-%d" % run)
    env.reset_statements()
    m = Meter(env)
    broker = BrokerLoad(env)
    env.produce(topic, per_part, rate=rate)
    sc_broker = broker.per_s()
    wait_progress(sc.committed, per_part * args.partitions, 60, lambda: not sc.child.poll(),
                  "latency")
    time.sleep(0.5)
    lat = reader.stop()
    servers = m.stop()
    metrics = sc.metrics()
    batches = sc.batches()
    counts = statement_counts(env, batches)
    sc.child.stop()
    res["sidecar_file"] = percentiles(lat, 1000)
    res["sidecar_file"]["cpu_s"] = round(sc.child.cpu, 2)
    res["sidecar_file"]["batches"] = batches
    res["sidecar_file"].update(counts)
    res["sidecar_file"]["checkpoint_avg_ms"] = hist_avg_ms(metrics, "sidecar_checkpoint_seconds")
    res["sidecar_file"]["sink_write_avg_ms"] = hist_avg_ms(metrics, "sidecar_sink_write_seconds")
    res["sidecar_file"]["broker_cpu_per_s"] = sc_broker
    res["postgres_cpu_s"] = round(servers["postgres"], 2)
    res["broker_cpu_s"] = round(servers["broker"], 2)
    for k in ("kcat", "sidecar_file"):
        if res[k].get("broker_cpu_per_s", 0) > MOCK_BUSY:
            log("warning: the mock broker used %.2f of a CPU while %s's records were produced: "
                "its fetches scan a partition's message sets from the first, so a long run "
                "measures the broker (--latency-seconds)" % (res[k]["broker_cpu_per_s"], k))
    return res


# ---- PostgreSQL round trips -----------------------------------------------------------------


class RoundTripProxy(threading.Thread):
    """
    A TCP proxy in front of PostgreSQL that counts round trips per connection:
    a round trip is a burst of client bytes sent after the server had answered
    (the client waited for the server in between).  Connections are named by
    the application_name of their startup packet.
    """

    APP = re.compile(rb"application_name\x00([^\x00]*)\x00")

    def __init__(self, upstream_port):
        super().__init__(daemon=True)
        self.upstream = upstream_port
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.lsock, selectors.EVENT_READ, None)
        self.lock = threading.Lock()
        self.conns = []  # dicts: app, trips, last, head

    def snapshot(self):
        """{application_name prefix: round trips} over all connections so far."""
        with self.lock:
            out = {}
            for c in self.conns:
                out[c["app"]] = out.get(c["app"], 0) + c["trips"]
            return out

    def run(self):
        while True:
            for key, _ in self.sel.select():
                if key.data is None:
                    client, _ = self.lsock.accept()
                    server = socket.create_connection(("127.0.0.1", self.upstream))
                    for s in (client, server):
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    st = {"app": "?", "trips": 0, "last": None, "head": b""}
                    with self.lock:
                        self.conns.append(st)
                    self.sel.register(client, selectors.EVENT_READ, (st, client, server, "c"))
                    self.sel.register(server, selectors.EVENT_READ, (st, server, client, "s"))
                    continue
                st, src, dst, side = key.data
                try:
                    data = src.recv(1 << 16)
                except OSError:
                    data = b""
                if not data:
                    for s in (src, dst):
                        try:
                            self.sel.unregister(s)
                        except (KeyError, ValueError):
                            pass
                        s.close()
                    continue
                if side == "c":
                    with self.lock:
                        if st["last"] != "c":
                            st["trips"] += 1
                        st["last"] = "c"
                        if st["app"] == "?" and len(st["head"]) < 4096:
                            st["head"] += data
                            m = self.APP.search(st["head"])
                            if m:
                                st["app"] = m.group(1).decode(errors="replace")
                else:
                    st["last"] = "s"
                dst.sendall(data)


def app_group(app):
    """'kafka-sidecar/<pipeline>/worker-3' -> 'worker'."""
    tail = app.rsplit("/", 1)[-1]
    return re.sub(r"-\d+$", "", tail)


def phase_roundtrips(env, args, quick):
    proxy = RoundTripProxy(env.pg_port)
    proxy.start()
    dsn = "host=127.0.0.1 port=%d user=postgres dbname=postgres" % proxy.port
    per_part = 10000 if quick else 50000
    total = per_part * args.partitions
    env.produce("rt", per_part)
    rx = Receiver(env)
    out = os.path.join(env.dir, "out-rt")
    fresh_table(env, "bench.rt_rows")
    sinks = [
        ("file", {"type": "file", "path": out + "/{topic}/{partition}.jsonl", "fsync": "batch"}),
        ("postgres", {"type": "postgres", "table": "bench.rt_rows", "mode": "insert"}),
        ("http", {"type": "http", "url": rx.url}),
    ]
    res = {"records": total, "method": "proxy between the sidecar and PostgreSQL; a round trip "
           "= a client burst after a server answer; counted from the first to the last commit"}
    for label, sink in sinks:
        name = "bench-rt-" + label
        env.reset_statements()
        sc = Sidecar(env, name, "rt", sink, dsn=dsn).start()
        snap0 = b0 = None

        def progress():
            return sc.committed()

        t_first, _, _ = wait_progress(progress, 1, 120, lambda: not sc.child.poll(), name)
        snap0, b0 = proxy.snapshot(), sc.batches()
        wait_progress(progress, total, args.timeout, lambda: not sc.child.poll(), name)
        snap1, b1 = proxy.snapshot(), sc.batches()
        stmts = env.sql("SELECT calls, query FROM pg_stat_statements WHERE query !~* "
                        "'pg_stat_statements|sidecar.checkpoints WHERE pipeline = \\$1$' "
                        "ORDER BY calls DESC LIMIT 12") if env.has_pgss else []
        sc.child.stop()
        batches = max(b1 - b0, 1)
        groups = {}
        for app, trips in snap1.items():
            if name not in app:
                continue
            g = app_group(app)
            groups[g] = groups.get(g, 0) + trips - snap0.get(app, 0)
        all_batches = sc.batches()
        res[label] = {
            "batches": batches,
            "records_per_batch": round(total / max(all_batches, 1)),
            "round_trips_per_batch": {g: round(v / batches, 2) for g, v in sorted(groups.items())},
            "statements_per_batch": [
                {"calls_per_batch": round(calls / max(all_batches, 1), 2),
                 "query": re.sub(r"\s+", " ", q)[:100]}
                for calls, q in stmts if calls / max(all_batches, 1) >= 0.05],
        }
    rx.child.stop()
    shutil.rmtree(out, ignore_errors=True)
    return res


# ---- recovery after SIGKILL ------------------------------------------------------------------


def phase_recovery(env, args, quick):
    rate = 4000
    seconds = 30 if quick else 45
    per_part = rate * seconds // args.partitions
    out = os.path.join(env.dir, "out-recovery")
    sink = {"type": "file", "path": out + "/{topic}/{partition}.jsonl", "fsync": "batch"}
    a = Sidecar(env, "bench-recovery", "rec", sink, instance="bench-a").start()
    b = Sidecar(env, "bench-recovery", "rec", sink, instance="bench-b").start()
    producer = env.produce("rec", per_part, rate=rate, wait=False)
    wait_owned(env, "bench-recovery", args.partitions, owners=2)
    time.sleep(5)  # steady state: both instances delivering
    owned = env.sql("SELECT partition, committed_offset FROM sidecar.partition_status WHERE "
                    "pipeline = 'bench-recovery' AND owner = 'bench-a' AND lease_live")
    t_kill = time.time()
    a.child.stop(signal.SIGKILL)
    resumed = {}
    before = {p: off or 0 for p, off in owned}
    deadline = t_kill + 120
    while len(resumed) < len(before) and time.time() < deadline:
        rows = env.sql("SELECT partition, committed_offset, owner FROM sidecar.partition_status "
                       "WHERE pipeline = 'bench-recovery'")
        now = time.time()
        for p, off, owner in rows:
            if p in before and p not in resumed and owner == "bench-b" and (off or 0) > before[p]:
                resumed[p] = now - t_kill
        time.sleep(0.05)
    # Where the time went: the group noticing the dead member and rebalancing (until the
    # survivor's first new lease), then the sidecar's own takeover (lease -> first commit).
    lease = env.sql1("SELECT extract(epoch FROM min(at)) FROM sidecar.events WHERE pipeline = "
                     "'bench-recovery' AND kind = 'lease' AND owner = 'bench-b' AND at > "
                     "to_timestamp(%s)", (t_kill,))
    producer.wait()
    total = per_part * args.partitions
    wait_progress(b.committed, total, 120, lambda: not b.child.poll(), "recovery drain")
    b.child.stop()
    # Exactly once, in order, despite the kill.
    bad = 0
    for f in glob.glob(out + "/rec/*.jsonl"):
        with open(f, "rb") as fh:
            for i, line in enumerate(fh):
                m = re.search(rb'"offset":(\d+)', line)
                if not m or int(m.group(1)) != i:
                    bad += 1
                    break
    lines = count_lines(glob.glob(out + "/rec/*.jsonl"))
    times = sorted(resumed.values())
    log_b = open(b.log_path, errors="replace").read()
    return {
        "instances": 2,
        "partitions_moved": len(before),
        "partitions_resumed": len(resumed),
        "first_resumed_s": round(times[0], 2) if times else None,
        "median_resumed_s": round(statistics.median(times), 2) if times else None,
        "all_resumed_s": round(times[-1], 2) if len(times) == len(before) else None,
        "kill_to_lease_s": round(float(lease) - t_kill, 2) if lease else None,
        "lease_to_resumed_s": (round(times[-1] - (float(lease) - t_kill), 2)
                               if lease and len(times) == len(before) else None),
        "session_timeout_ms": 10000,
        "lease_ttl_ms": 10000,
        "replays": log_b.count("replaying pending batch"),
        "records": total,
        "records_in_files": lines,
        "files_out_of_order": bad,
        "exactly_once": lines == total and bad == 0,
    }


# ---- the scale curve -------------------------------------------------------------------------

def pg_counters(env):
    """
    Transactions committed, statements run (pg_stat_statements only, else None) and WAL
    bytes written so far.
    """
    xact = int(env.sql1("SELECT sum(xact_commit) FROM pg_stat_database"))
    stmts = None
    if env.has_pgss:
        stmts = int(env.sql1("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE "
                             "query !~* 'pg_stat_statements|pg_stat_database'"))
    wal = int(env.sql1("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
    return xact, stmts, wal


def scale_point(env, args, partitions, pipelines, instances, run_id):
    """
    One point of the curve: `pipelines` pipelines (each its own topic, the partitions split
    evenly) in each of `instances` instances, draining `--scale-records` records.  Throughput
    from the first lease to the last commit; CPU summed over the instances; RSS the largest.
    """
    per_topic = max(partitions // pipelines, 1)
    partitions = per_topic * pipelines
    per_part = max(args.scale_records // partitions, 1)
    records = per_part * partitions
    topics = ["s%d_%d" % (run_id, i) for i in range(pipelines)]
    if env.mock:
        env.mock.stop(signal.SIGTERM, 10)
    env.start_mock(["%s:%d" % (t, per_topic) for t in topics])
    t0 = time.time()
    producers = [env.produce(t, per_part, wait=False) for t in topics]
    for pr in producers:
        pr.wait()
        if pr.status != 0:
            raise RuntimeError("kafka-produce failed (see %s)" % env.dir)
    log("scale: %d partitions, %d pipeline(s), %d instance(s): %d records produced in %.1fs" %
        (partitions, pipelines, instances, records, time.time() - t0))
    names = ["scale-%d-%d" % (run_id, i) for i in range(pipelines)]
    out = os.path.join(env.dir, "out-scale-%d" % run_id)
    extra_pipelines = []
    for i in range(1, pipelines):
        extra_pipelines.append({"name": names[i], "topics": [topics[i]], "start_from": "earliest",
                                "sink": scale_sink(env, args, out, names[i])})
    env.checkpoint()
    env.reset_statements()
    m = Meter(env)
    x0, s0, w0 = pg_counters(env)
    scs = []
    for k in range(instances):
        sc = Sidecar(env, names[0], topics[0], scale_sink(env, args, out, names[0]),
                     instance="scale-%d" % k)
        if extra_pipelines:
            with open(sc.conf_path) as f:
                conf = json.load(f)
            conf["pipelines"] += [dict(p, **env.args.pipeline) for p in extra_pipelines]
            with open(sc.conf_path, "w") as f:
                json.dump(conf, f, indent=2)
        scs.append(sc.start())

    def committed():
        return int(env.sql1("SELECT coalesce(sum(committed_offset), 0) FROM sidecar.checkpoints "
                            "WHERE pipeline = ANY(%s)", (names,)))

    _, _, t_done = wait_progress(committed, records, args.timeout,
                                 lambda: all(not sc.child.poll() for sc in scs), "scale")
    x1, s1, w1 = pg_counters(env)
    t_lease = float(env.sql1("SELECT extract(epoch FROM min(at)) FROM sidecar.events WHERE "
                             "pipeline = ANY(%s) AND kind = 'lease'", (names,)))
    t_all_leased = float(env.sql1(
        "SELECT extract(epoch FROM max(f)) FROM (SELECT min(at) AS f FROM sidecar.events WHERE "
        "pipeline = ANY(%s) AND kind = 'lease' GROUP BY pipeline, topic, partition) x", (names,)))
    batches = int(env.sql1("SELECT count(*) FROM sidecar.events WHERE pipeline = ANY(%s) AND "
                           "kind = 'commit'", (names,)))
    conns = int(env.sql1("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                         "'kafka-sidecar/%%'"))
    for sc in scs:
        sc.child.stop(signal.SIGTERM, 60)
    servers = m.stop()
    shutil.rmtree(out, ignore_errors=True)
    span = max(t_done - t_lease, 1e-6)
    cpu = sum(sc.child.cpu for sc in scs)
    r = {
        "partitions": partitions, "pipelines": pipelines, "instances": instances,
        # the sidecar's default for the file and postgres sinks: one per CPU, at most 4
        "workers_per_pipeline": env.args.pipeline.get(
            "workers", min(4, len(os.sched_getaffinity(0)))),
        "records": records, "records_per_partition": per_part,
        "seconds": round(span, 3), "records_per_s": round(records / span),
        "assign_s": round(t_all_leased - t_lease, 3),
        "sidecar_cpu_s": round(cpu, 2), "cpu_us_per_record": round(cpu * 1e6 / records, 2),
        "peak_rss_mib": round(max(sc.child.maxrss_mib for sc in scs), 1),
        "rss_mib_per_instance": [round(sc.child.maxrss_mib, 1) for sc in scs],
        "postgres_cpu_s": round(servers["postgres"], 2),
        "broker_cpu_s": round(servers["broker"], 2),
        "batches": batches, "records_per_batch": round(records / max(batches, 1)),
        # (pg_stat_database lags by up to a second: for short runs batches/s is the figure)
        "pg_transactions": x1 - x0,
        "batches_per_s": round(batches / span),
        "wal_bytes": w1 - w0,
        "wal_bytes_per_batch": round((w1 - w0) / max(batches, 1)),
        "postgres_cpu_ms_per_batch": round(servers["postgres"] * 1000 / max(batches, 1), 3),
        "connections": conns,
    }
    if s0 is not None:
        r["pg_statements"] = s1 - s0
        r["pg_statements_per_s"] = round((s1 - s0) / span)
    log("  %d records/s, %.2f us CPU/record, %.1f MiB peak RSS, %s statements/s, assigned in "
        "%.1fs" % (r["records_per_s"], r["cpu_us_per_record"], r["peak_rss_mib"],
                   r.get("pg_statements_per_s", "-"), r["assign_s"]))
    return r


def scale_sink(env, args, out, name):
    if args.scale_sink == "file":
        return {"type": "file", "path": out + "/" + name + "/{topic}/{partition}.jsonl",
                "fsync": "batch"}
    table = "bench.scale_" + re.sub(r"[^a-z0-9_]", "_", name)
    fresh_table(env, table)
    return {"type": "postgres", "table": table, "mode": "insert"}


def scale_grid(args):
    """(partitions, pipelines, instances) points: the partition sweep, then the others."""
    parts = [int(x) for x in args.scale_partitions.split(",")]
    pipes = [int(x) for x in args.scale_pipelines.split(",")]
    insts = [int(x) for x in args.scale_instances.split(",")]
    grid = [(p, 1, 1) for p in parts]
    mid = [p for p in parts if 256 <= p <= 1024] or parts[:1]
    for p in mid:
        grid += [(p, n, 1) for n in pipes if n != 1]
        grid += [(p, 1, i) for i in insts if i != 1]
    return grid


def fit_linear(points):
    """Least squares cpu = a * records + b * partitions over the partition sweep."""
    xs = [(p["records"], p["partitions"], p["sidecar_cpu_s"]) for p in points]
    if len(xs) < 2:
        return None
    srr = sum(r * r for r, _, _ in xs)
    spp = sum(q * q for _, q, _ in xs)
    srp = sum(r * q for r, q, _ in xs)
    src = sum(r * c for r, _, c in xs)
    spc = sum(q * c for _, q, c in xs)
    det = srr * spp - srp * srp
    if abs(det) < 1e-9:
        return None
    a = (src * spp - spc * srp) / det
    b = (spc * srr - src * srp) / det
    return {"cpu_us_per_record": round(a * 1e6, 3), "cpu_ms_per_partition": round(b * 1e3, 3),
            "residuals_s": [round(c - a * r - b * q, 2) for r, q, c in xs]}


def run_scale(env, args):
    res = {"meta": {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git_rev(), "cpus": os.cpu_count(), "postgresql": env.pg_version,
        "postgresql_settings": env.pg_settings, "sink": args.scale_sink,
        "records": args.scale_records, "memory_limit_mib": args.memory_mib,
        "machine": machine_costs(env)}, "points": []}
    for i, (p, n, k) in enumerate(scale_grid(args)):
        try:
            res["points"].append(scale_point(env, args, p, n, k, i))
        except RuntimeError as e:
            log("scale: %d partitions, %d pipelines, %d instances: %s" % (p, n, k, e))
            res["points"].append({"partitions": p, "pipelines": n, "instances": k,
                                  "error": str(e)})
    sweep = [q for q in res["points"] if "error" not in q and q["pipelines"] == 1 and
             q["instances"] == 1]
    res["fit"] = fit_linear(sweep)
    print("\n%10s %9s %9s %10s %10s %8s %9s %10s %9s %9s" % (
        "partitions", "pipelines", "instances", "records/s", "us CPU/rec", "RSS MiB",
        "stmts/s", "batches/s", "rec/batch", "WAL/batch"))
    for q in res["points"]:
        if "error" in q:
            print("%10d %9d %9d  %s" % (q["partitions"], q["pipelines"], q["instances"],
                                       q["error"]))
            continue
        print("%10d %9d %9d %10d %10.2f %8.1f %9s %10d %9d %9d" % (
            q["partitions"], q["pipelines"], q["instances"], q["records_per_s"],
            q["cpu_us_per_record"], q["peak_rss_mib"], q.get("pg_statements_per_s", "-"),
            q["batches_per_s"], q["records_per_batch"], q["wal_bytes_per_batch"]))
    if res["fit"]:
        print("\nsidecar CPU = %.3f us x records + %.3f ms x partitions (residuals %s s)" % (
            res["fit"]["cpu_us_per_record"], res["fit"]["cpu_ms_per_partition"],
            res["fit"]["residuals_s"]))
    return res


# ---- report ---------------------------------------------------------------------------------


def median_row(rows):
    """The run with the median records/s (all its figures come from that run)."""
    rows = sorted(rows, key=lambda r: r["records_per_s"])
    return dict(rows[len(rows) // 2], runs=[r["records_per_s"] for r in rows])


def ratio(a, b):
    return round(a / b, 2) if a and b else None


def reference(tp, key, best):
    """The stricter of the two kcat runs for key (best: max or min), and its name."""
    runs = [k for k in ("kcat", "kcat_tuned") if k in tp]
    if not runs:
        return None, None
    name = best(runs, key=lambda k: tp[k][key])
    return tp[name][key], name


# Paired ratios: a / b of the same run (phases of one run follow each other within minutes),
# their median over the runs.  On a shared machine this is steadier than a ratio of medians.
PAIRS = [
    ("file", "kcat", "records_per_s"), ("file", "kcat_tuned", "records_per_s"),
    ("http", "kcat", "records_per_s"), ("http", "kcat_tuned", "records_per_s"),
    ("postgres", "copy", "records_per_s"), ("postgres", "copy", "postgres_cpu_s"),
    ("postgres_copy", "copy", "records_per_s"), ("postgres_copy", "copy", "postgres_cpu_s"),
    ("postgres_pipeline", "copy", "records_per_s"),
    ("postgres_pipeline", "copy", "postgres_cpu_s"),
    ("postgres", "naive", "records_per_s"), ("copy", "naive", "records_per_s"),
    ("file", "kcat", "cpu_s_per_million"), ("file", "kcat_tuned", "cpu_s_per_million"),
    ("file", "file_ref", "records_per_s"), ("postgres", "postgres_ref", "records_per_s"),
    ("http", "http_ref", "records_per_s"), ("postgres", "postgres_ref", "postgres_cpu_s"),
]


def paired_ratios(runs):
    out = {}
    for a, b, key in PAIRS:
        if a not in runs or b not in runs:
            continue
        vals = [ratio(x[key], y[key]) for x, y in zip(runs[a], runs[b])]
        vals = [v for v in vals if v is not None]
        if vals:
            out["%s/%s %s" % (a, b, key)] = {"median": round(statistics.median(vals), 2),
                                             "runs": vals}
    return out


def build_targets(tp, ratios, lat, args):
    t = []

    def add(name, value, target, ok, note=None):
        t.append({"target": name, "value": value, "goal": target,
                  "met": bool(ok) if value is not None else None, "note": note})

    def paired(key):
        r = ratios.get(key)
        return r["median"] if r else None

    # Against the stronger reference of the two kcat runs: the faster, and the leaner CPU.
    ref, which = reference(tp, "records_per_s", max)
    if "file" in tp and ref:
        v = ratio(tp["file"]["records_per_s"], ref)
        add("file sink / reference consumer throughput", v, ">= 0.9", v and v >= 0.9, which)
    ref, which = reference(tp, "cpu_s_per_million", min)
    if "file" in tp and ref:
        v = ratio(tp["file"]["cpu_s_per_million"], ref)
        add("file sink / reference CPU per million records", v, "<= 1.5", v and v <= 1.5, which)
    note = "median of paired runs; PostgreSQL %s" % args.pg_config + (
        ", %.1f ms each way" % args.pg_delay_ms if args.pg_delay_ms else "")
    v = paired("postgres/copy records_per_s")
    if v is not None:
        add("postgres sink / \\copy throughput", v, ">= 1.2", v >= 1.2, note)
    v = paired("postgres/copy postgres_cpu_s")
    if v is not None:
        add("postgres sink / \\copy PostgreSQL CPU per row", v, "<= 1.1", v <= 1.1, note)
    v = paired("postgres/naive records_per_s")
    if v is not None:
        add("postgres sink / naive consumer throughput", v, ">= 3", v >= 3)
    for sink in ("file", "postgres", "http"):
        v = paired("%s/%s_ref records_per_s" % (sink, sink))
        if v is not None:
            add("%s sink / before (--sidecar-ref) throughput" % sink, v, ">= 0.9", v >= 0.9,
                "median of paired runs")
    for label, limit in (("file", 2), ("http", 2), ("postgres", 1)):
        if label in tp and tp[label].get("transactions_per_batch") is not None:
            v = tp[label].get("transactions_per_batch")
            add("PostgreSQL transactions per batch, %s" % label, v, "<= %d" % limit,
                v <= limit + 0.05, "pg_stat_statements, backlog drain")
    if lat and lat.get("runs_p99_ms"):
        runs = lat["runs_p99_ms"]
        worst = max(ratio(s_, k_) or 0 for s_, k_ in zip(runs["sidecar_file"], runs["kcat"]))
        ok = sum(1 for s_, k_ in zip(runs["sidecar_file"], runs["kcat"]) if s_ <= 1.5 * k_)
        add("p99 latency at %d records/s / kcat's, worst run" % args.rate, round(worst, 2),
            "<= 1.5", ok == len(runs["kcat"]), "%d of %d runs within" % (ok, len(runs["kcat"])))
    rss = [tp[k]["peak_rss_mib"] for k in ("file", "postgres", "http") if k in tp]
    if rss:
        limit = args.memory_mib or 64
        add("sidecar peak RSS draining the backlog (MiB)", max(rss), "<= %d" % limit,
            max(rss) <= limit, "memory.limit_mib %d" % limit)
    return t


def print_report(res):
    tp = res["throughput"]
    cols = [("records/s", "records_per_s", "%d"), ("MB/s", "mb_per_s", "%.1f"),
            ("CPU s", "cpu_s", "%.2f"), ("CPU s/M", "cpu_s_per_million", "%.2f"),
            ("RSS MiB", "peak_rss_mib", "%.0f"), ("PG CPU s", "postgres_cpu_s", "%.2f"),
            ("broker CPU", "broker_cpu_s", "%.2f"), ("tx/batch", "transactions_per_batch", "%.2f")]
    print()
    print("%-18s" % "" + "".join("%11s" % c[0] for c in cols) + "   ratio")
    refs = {"file": "kcat", "postgres": "copy", "http": "kcat", "naive": "copy",
            "kcat_tuned": "kcat", "postgres_copy": "copy", "postgres_pipeline": "copy",
            "file_ref": "kcat", "http_ref": "kcat", "postgres_ref": "copy"}
    for name in PHASES:
        if name not in tp:
            continue
        r = tp[name]
        line = "%-18s" % name
        for _, key, fmt in cols:
            v = r.get(key)
            line += "%11s" % (fmt % v if v is not None else "-")
        ref = refs.get(name)
        if ref and ref in tp:
            line += "   %.2fx %s" % (tp[name]["records_per_s"] / tp[ref]["records_per_s"],
                                    ref if ref != "copy" else "\\copy")
        if name in ("file", "http") and "kcat_tuned" in tp:
            line += ", %.2fx kcat_tuned" % (tp[name]["records_per_s"] /
                                           tp["kcat_tuned"]["records_per_s"])
        print(line)
    roles = [(n, tp[n]["postgres_cpu_s_by_role"]) for n in PHASES
             if n in tp and tp[n].get("postgres_cpu_s_by_role") and tp[n]["postgres_cpu_s"] >= 0.5]
    if roles:
        print("\nPostgreSQL CPU s by process (the median run's window):")
        for n, r in roles:
            print("  %-16s %s" % (n, ", ".join("%s %.2f" % kv for kv in
                                               sorted(r.items(), key=lambda kv: -kv[1]))))
            f = tp[n].get("postgres_minor_faults_by_role") or {}
            if f.get("backend"):
                print("  %-16s backends' minor page faults: %d" % ("", f["backend"]))
    print("\nratios (median of the runs' paired ratios, every run's in brackets):")
    for k, v in res["ratios"].items():
        print("  %-48s %5s  %s" % (k, v["median"], v["runs"]))
    if res.get("latency"):
        lat = res["latency"]
        print("\nend-to-end latency at %d records/s (batch.max_wait_ms %d, %s):" %
              (lat["rate"], lat["max_wait_ms"], json.dumps(lat["consumer_properties"])))
        for k in ("kcat", "sidecar_file"):
            if k in lat:
                print("  %-14s %s" % (k, json.dumps(lat[k])))
        if len(lat.get("runs_p99_ms", {}).get("sidecar_file", [])) > 1:
            print("  p99 of every run (the median one is shown): %s" %
                  json.dumps(lat["runs_p99_ms"]))
    if res.get("round_trips"):
        print("\nPostgreSQL wire round trips per batch (proxy; worker connections, the lease "
              "connection apart):")
        for k in ("file", "postgres", "http"):
            if k in res["round_trips"]:
                r = res["round_trips"][k]
                print("  %-9s %s  (%d records/batch)" % (k, json.dumps(r["round_trips_per_batch"]),
                                                        r["records_per_batch"]))
    if res.get("recovery"):
        print("\nrecovery after SIGKILL (2 instances): %s" % json.dumps(res["recovery"]))
    print("\ntargets:")
    for t in res["targets"]:
        mark = {True: "met", False: "NOT met", None: "-"}[t["met"]]
        print("  %-52s %8s   goal %-7s %-8s %s" % (t["target"], t["value"], t["goal"], mark,
                                                  t.get("note") or ""))
    print()


def machine_costs(env):
    """The machine's page-fault and fdatasync costs (bench-machine-probe), in the work
    directory: targets 1 and 4 move with them from one machine to the next (docs/benchmarks.md,
    "The machine's costs")."""
    out = subprocess.run([env.bin["probe"], env.dir], capture_output=True, text=True)
    if out.returncode != 0:
        log("machine probe failed: %s" % out.stderr.strip())
        return None
    costs = json.loads(out.stdout)
    log("this machine: a page fault %.1f us (a shared page %.1f us), a 4 KiB append + fdatasync "
        "%.2f ms (p99 %.2f ms)" % (costs["page_fault_us"], costs["shared_page_fault_us"],
                                   costs["fdatasync_ms_p50"], costs["fdatasync_ms_p99"]))
    return costs


def git_rev():
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build-bench"))
    ap.add_argument("--records", type=int, default=1000000,
                    help="records in the data set (spread over the partitions)")
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--json", help="write the results here (default bench/results/<time>.json)")
    ap.add_argument("--only", help="comma-separated phases: " + ",".join(PHASES) +
                    ",latency,roundtrips,recovery")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the throughput phases N times (interleaved); report the median run")
    ap.add_argument("--rate", type=int, default=20000, help="produce rate of the latency run")
    # librdkafka 2.0.2's mock broker finds a fetch's offset by walking the partition's message
    # sets from the first (rd_kafka_mock_msgset_find()), and at 20,000 records/s the producer
    # adds ~200 a second to each partition: its CPU grows with the run, 0.13 of a CPU after
    # 1 s, 0.6 after 8 s, all of one after 16 s, and a 20 s run's latencies were the broker's
    # (docs/benchmarks.md#latency-run-length).
    ap.add_argument("--latency-seconds", type=int, default=8,
                    help="seconds of producing in each latency run (default 8; the mock "
                    "broker slows down as a run goes on)")
    ap.add_argument("--quick", action="store_true", help="short latency/round-trip/recovery runs")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per phase at most")
    ap.add_argument("--workdir", default="/tmp")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--wrap", help="command prefix for the sidecar (profiling), e.g. "
                    "'perf record -g -o /tmp/perf.data --'")
    ap.add_argument("--batch", action="append", default=[], metavar="KEY=VALUE",
                    help="batch setting for every sidecar run (experiments)")
    ap.add_argument("--kafka-prop", action="append", default=[], metavar="KEY=VALUE",
                    help="librdkafka property for every sidecar run (experiments)")
    ap.add_argument("--timeline", action="store_true",
                    help="print each throughput run's commits per 50 ms (diagnosis)")
    ap.add_argument("--log-level", default="info",
                    help="the sidecar's log level (its log is in the work directory, see --keep)")
    ap.add_argument("--pipeline", action="append", default=[], metavar="KEY=JSON",
                    help="pipeline setting for every sidecar run (experiments), e.g. "
                    "workers=8")
    ap.add_argument("--pg-config", choices=["tuned", "defaults"], default="tuned",
                    help="tuned: the settings in PG_SETTINGS and a CHECKPOINT between phases; "
                    "defaults: the server as initdb makes it (fsync on, shared_buffers 128MB, "
                    "max_wal_size 1GB), checkpointing on its own, no pg_stat_statements")
    ap.add_argument("--pg-delay-ms", type=float, default=0,
                    help="the measured clients (sidecar, psql \\copy, naive) reach PostgreSQL "
                    "through bench-delay-proxy, which delays each direction by this much")
    ap.add_argument("--sidecar-ref", metavar="BUILD_DIR|BINARY",
                    help="another sidecar build for the file_ref, postgres_ref and http_ref "
                    "phases (e.g. the code before a change, built elsewhere)")
    ap.add_argument("--sidecar-env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment variable for every sidecar run (experiments), e.g. "
                    "MALLOC_ARENA_MAX=2")
    ap.add_argument("--scale", action="store_true",
                    help="the scale curve instead of the phases: throughput, CPU per record, "
                    "peak RSS and PostgreSQL statements/s over --scale-partitions (1 pipeline, "
                    "1 instance), then --scale-pipelines and --scale-instances at 256..1024 "
                    "partitions")
    ap.add_argument("--scale-partitions", default="16,256,1024,4096")
    ap.add_argument("--scale-pipelines", default="1,8")
    ap.add_argument("--scale-instances", default="1,2,4")
    ap.add_argument("--scale-records", type=int, default=1000000)
    ap.add_argument("--scale-sink", choices=["file", "postgres"], default="file")
    ap.add_argument("--plots-dir", help="where the SVG charts go (default bench/results/)")
    ap.add_argument("--memory-mib", type=int,
                    help="memory.limit_mib for the sidecar under test (default: its default)")
    ap.add_argument("--ref-memory-mib", type=int,
                    help="memory.limit_mib for the --sidecar-ref build (default: unset, for "
                    "builds from before the budget, which do not know the key)")
    args = ap.parse_args()
    args.batch = {k: int(v) for k, v in (x.split("=", 1) for x in args.batch)}
    args.kafka_props = dict(x.split("=", 1) for x in args.kafka_prop)
    args.pipeline = {k: json.loads(v) for k, v in (x.split("=", 1) for x in args.pipeline)}
    args.sidecar_env = dict(x.split("=", 1) for x in args.sidecar_env)
    only = set(args.only.split(",")) if args.only else None

    def wanted(p):
        return p in only if only is not None else p in DEFAULT_PHASES or p in (
            "latency", "roundtrips", "recovery")

    per_part = args.records // args.partitions
    records = per_part * args.partitions
    env = Env(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    log("work directory %s" % env.dir)
    env.start_pg()
    if args.scale:
        env.start_mock(["migrate:1"])
        subprocess.run([env.bin["sidecar"], "migrate", "-c",
                        Sidecar(env, "migrate", "migrate", {"type": "stdout"}).conf_path],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env.sql("CREATE SCHEMA IF NOT EXISTS bench")
        res = run_scale(env, args)
        path = args.json or os.path.join(ROOT, "bench", "results",
                                         "scale-" + time.strftime("%Y%m%d-%H%M%S") + ".json")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(res, f, indent=2)
        log("results written to %s" % path)
        plots(res, args)
        return
    lat_topics = [t % i for i in range(args.repeat) for t in ("lat%d", "latref%d")]
    env.start_mock(["%s:%d" % (t, args.partitions)
                    for t in ["bench"] + lat_topics + ["rt", "rec"]])
    log("PostgreSQL %s on port %d; mock Kafka at %s" % (env.pg_version, env.pg_port,
                                                         env.bootstrap))
    t0 = time.time()
    env.produce("bench", per_part)
    log("produced %d records (%d partitions, lz4) in %.1fs" % (records, args.partitions,
                                                               time.time() - t0))
    subprocess.run([env.bin["sidecar"], "migrate", "-c",
                    Sidecar(env, "migrate", "bench", {"type": "stdout"}).conf_path],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env.sql("CREATE SCHEMA IF NOT EXISTS bench")
    # Key + value bytes of the data set (what MB/s counts): from the generator's format.
    sample = subprocess.run(["kcat", "-C", "-b", env.bootstrap, "-t", "bench", "-p", "0", "-o",
                             "beginning", "-c", "1000", "-e", "-q", "-f", "%K %S\\n"],
                            capture_output=True, text=True).stdout.split()
    avg = sum(int(x) for x in sample) / max(len(sample) / 2, 1)
    ds = {"topic": "bench", "records": records, "payload_bytes": int(avg * records)}

    res = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git": git_rev(),
            "cpus": os.cpu_count(),
            "records": records,
            "partitions": args.partitions,
            "avg_key_value_bytes": round(avg, 1),
            "compression": "lz4",
            "brokers": 1,
            "postgresql": env.pg_version,
            "postgresql_settings": env.pg_settings,
            "repeat": args.repeat,
            "sidecar_config": "defaults (batch, workers, librdkafka) unless noted",
            "memory_limit_mib": args.memory_mib,
            "ref_memory_limit_mib": args.ref_memory_mib,
            "sidecar_ref": args.sidecar_ref,
            "machine": machine_costs(env),
        },
        "throughput": {},
        "runs": {},
    }
    order = [p for p in PHASES if wanted(p)]
    if any(p.endswith("_ref") for p in order) and not args.sidecar_ref:
        sys.exit("bench: the _ref phases need --sidecar-ref")
    if "copy" in order and "kcat" not in order:
        log("kcat once, for the \\copy input")
        phase_kcat(env, ds, 0)  # \copy loads kcat's dump
    for run in range(args.repeat):
        for name in order:
            log("run %d/%d: %s" % (run + 1, args.repeat, name))
            r = PHASES[name](env, ds, run)
            res["runs"].setdefault(name, []).append(r)
            log("  %d records/s, %.2f CPU s, %.1f MiB peak RSS" % (
                r["records_per_s"], r["cpu_s"] or 0, r["peak_rss_mib"] or 0))
    for name, rows in res["runs"].items():
        res["throughput"][name] = median_row(rows)
    tp = res["throughput"]
    res["ratios"] = paired_ratios(res["runs"])
    if wanted("latency"):
        # Repeated like the throughput phases: the run with the median sidecar p99 counts,
        # every run's p99 is kept (a loaded 2-core machine makes single runs vary widely).
        runs = []
        for run in range(args.repeat):
            log("latency at %d records/s, run %d/%d" % (args.rate, run + 1, args.repeat))
            runs.append(phase_latency(env, args, args.quick, run))
        runs.sort(key=lambda r: r["sidecar_file"]["p99_ms"])
        res["latency"] = dict(runs[len(runs) // 2])
        res["latency"]["runs_p99_ms"] = {
            k: [r[k]["p99_ms"] for r in runs] for k in ("kcat", "sidecar_file")}
        res["latency"]["runs"] = [{k: r[k] for k in ("kcat", "sidecar_file")} for r in runs]
    if wanted("roundtrips"):
        log("PostgreSQL round trips per batch")
        res["round_trips"] = phase_roundtrips(env, args, args.quick)
    if wanted("recovery"):
        log("recovery after SIGKILL")
        res["recovery"] = phase_recovery(env, args, args.quick)
    res["targets"] = build_targets(tp, res["ratios"], res.get("latency"), args)
    print_report(res)
    path = args.json or os.path.join(ROOT, "bench", "results", time.strftime("%Y%m%d-%H%M%S") +
                                     ".json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=2)
    log("results written to %s" % path)
    plots(res, args)


def plots(res, args):
    """SVG charts next to the results (bench/results/ unless --plots-dir says otherwise)."""
    import plot  # bench/plot.py
    out = args.plots_dir or os.path.join(ROOT, "bench", "results")
    for p in plot.write_plots(res, out):
        log("chart written to %s" % p)


if __name__ == "__main__":
    main()
