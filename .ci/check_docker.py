#!/usr/bin/env python3
"""Static checks of the Docker and Kubernetes files (run by .ci/check-docker).

There is no Docker engine in CI, so nothing here builds or runs an image.
What it checks instead:

  docker/Dockerfile      the build stage runs the scripts CI runs
                         (.ci/install-deps --build, .ci/build) with options
                         CMakeLists.txt declares; multi-stage bookworm ->
                         bookworm-slim; runtime packages; non-root USER;
                         HEALTHCHECK on /healthz; STOPSIGNAL SIGTERM; exec-form
                         ENTRYPOINT and CMD; sql/ and the config copied in; OCI
                         labels; COPY sources exist and pass .dockerignore
  docker/compose.yaml    (the output of `docker-compose config`) KRaft
                         settings, health checks and depends_on conditions,
                         secrets, config mount, stop_grace_period longer than
                         shutdown_timeout_ms
  docker/k8s/sidecar.yaml native sidecar (initContainers, restartPolicy
                         Always), probes on /healthz and /readyz of the admin
                         port, terminationGracePeriodSeconds longer than
                         shutdown_timeout_ms, ConfigMap equal to
                         conf/docker.json, DSN and admin token from Secrets,
                         instance_id from the Pod name, non-root, read-only root

Modes (see .ci/check-docker):
  check_docker.py check --compose-config FILE [--sidecar BIN] [--staging DIR]
  check_docker.py build-commands TMPDIR   the build stage's RUN commands, one
                                          per line, /build and /staging moved
                                          under TMPDIR, to run from the repo root
  check_docker.py runtime-packages        the runtime stage's apt packages
  check_docker.py runtime-copies          "SRC DEST" of COPY --from=build
"""

import base64
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

import yaml

# CHECK_DOCKER_ROOT: a copy of the repository (the checker's own test mutates one).
ROOT = os.environ.get("CHECK_DOCKER_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = "docker/Dockerfile"
COMPOSE = "docker/compose.yaml"
K8S = "docker/k8s/sidecar.yaml"
CONFIG = "conf/docker.json"
ENTRYPOINT = "docker/entrypoint.sh"

BUILD_SCRIPT_ARGS = ["-DSIDECAR_FAILPOINTS=OFF", "-DSIDECAR_TESTS=OFF", "-DCMAKE_BUILD_TYPE=Release"]
RUNTIME_PACKAGES = {"librdkafka1", "libpq5", "libjansson4", "libcurl4", "libmicrohttpd12", "libdeflate0",
                    "libavro23", "ca-certificates"}
CONFIG_IN_IMAGE = "/etc/sidecar/sidecar.json"
SQL_IN_IMAGE = "/usr/share/kafka-sidecar/sql/"
OCI_LABELS = ["title", "description", "version", "revision", "created", "source"]

errors = []


def err(where, msg):
    errors.append("%s: %s" % (where, msg))


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


# ---- config --------------------------------------------------------------------------------

def expand(value, env):
    """The sidecar's ${VAR} / ${VAR:-default} / $$ expansion (${file:...} is left as is)."""
    if not isinstance(value, str):
        return value

    def one(m):
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(3)
        if name.startswith("file:"):
            return m.group(0)
        v = env.get(name)
        if v:
            return v
        if default is not None:
            return default
        raise KeyError(name)

    return re.sub(r"\$\$|\$\{([^}:]+(?::/[^}]*)?)(:-([^}]*))?\}", one, value)


def effective_config(env, sidecar=None, where=CONFIG):
    """conf/docker.json as the sidecar sees it in env: from `sidecar check-config`
    when the binary is given (exact), else from the expansion above."""
    raw = json.loads(read(CONFIG))
    if sidecar:
        with tempfile.TemporaryDirectory() as d:
            text = read(CONFIG)
            for path in sorted(set(re.findall(r"\$\{file:(/[^}]*)\}", text))):
                local = os.path.join(d, path.strip("/").replace("/", "_"))
                with open(local, "w") as f:
                    f.write("host=db user=u password=p dbname=d\n")
                text = text.replace("${file:%s}" % path, "${file:%s}" % local)
            cfg = os.path.join(d, "sidecar.json")
            with open(cfg, "w") as f:
                f.write(text)
            clean = {k: v for k, v in os.environ.items()
                     if k in ("PATH", "LANG", "LC_ALL") or k.startswith("ASAN") or k.startswith("UBSAN")}
            p = subprocess.run([sidecar, "check-config", "-c", cfg], env=dict(clean, **env),
                               capture_output=True, text=True)
            if p.returncode != 0:
                err(where, "sidecar check-config rejects %s in this environment:\n%s" % (CONFIG, p.stderr))
                return None
            return json.loads(p.stdout)

    def walk(v):
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return expand(v, env)

    try:
        cfg = walk(raw)
    except KeyError as e:
        err(where, "%s uses ${%s}, which this environment does not set" % (CONFIG, e.args[0]))
        return None
    cfg.setdefault("shutdown_timeout_ms", 8000)
    cfg.setdefault("admin", {}).setdefault("listen", "127.0.0.1:9644")
    cfg["shutdown_timeout_ms"] = int(cfg["shutdown_timeout_ms"])
    return cfg


def host_port(listen):
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def config_env_vars():
    """Names of the variables conf/docker.json reads (with or without a default)."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}", read(CONFIG)))


def seconds(duration):
    """compose durations: 10s, 1m30s, 500ms, 1h."""
    if isinstance(duration, (int, float)):
        return float(duration)
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration):
        if m.start() != pos:
            raise ValueError(duration)
        total += float(m.group(1)) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[m.group(2)]
        pos = m.end()
    if pos != len(duration) or pos == 0:
        raise ValueError(duration)
    return total


# ---- Dockerfile ----------------------------------------------------------------------------

def dockerfile_instructions(text):
    """[(lineno, INSTRUCTION, args)] with continuations joined and comments dropped."""
    out, buf, start = [], "", 0
    for n, line in enumerate(text.split("\n"), 1):
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = n
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        word, _, rest = buf.partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    return out


def stages(instrs):
    """[{from, name, instrs}] per FROM."""
    result = []
    for n, word, args in instrs:
        if word == "FROM":
            m = re.match(r"^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", args, re.I)
            result.append({"line": n, "from": m.group(1) if m else args, "name": m and m.group(2),
                           "instrs": []})
        elif result:
            result[-1]["instrs"].append((n, word, args))
    return result


def exec_form(args):
    try:
        v = json.loads(args)
    except ValueError:
        return None
    return v if isinstance(v, list) and all(isinstance(x, str) for x in v) else None


def shell_commands(run_args):
    """The simple commands of a RUN line: split at && / ; / ||."""
    return [c.strip() for c in re.split(r"&&|\|\||;", run_args) if c.strip()]


def dockerignore_allows(path, patterns):
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    allowed = True
    for neg, pat in patterns:
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            allowed = neg
    return allowed


def parse_dockerignore():
    path = os.path.join(ROOT, ".dockerignore")
    if not os.path.exists(path):
        return []
    pats = []
    for line in read(".dockerignore").split("\n"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pats.append((neg, line.lstrip("!").strip("/")))
    return pats


def check_dockerfile():
    W = DOCKERFILE
    instrs = dockerfile_instructions(read(W))
    st = stages(instrs)
    if len(st) != 2:
        err(W, "expected two stages (build, runtime), found %d" % len(st))
        return
    build, runtime = st
    if build["from"] != "debian:bookworm" or not build["name"]:
        err(W, "line %d: the build stage must be `FROM debian:bookworm AS <name>`" % build["line"])
    if runtime["from"] != "debian:bookworm-slim":
        err(W, "line %d: the runtime stage must be `FROM debian:bookworm-slim`" % runtime["line"])

    # -- build stage: the CI scripts, nothing else installs or compiles
    runs = [(n, a) for n, w, a in build["instrs"] if w == "RUN"]
    cmds = [(n, c) for n, a in runs for c in shell_commands(a)]
    if not any(c == ".ci/install-deps --build" for _, c in cmds):
        err(W, "the build stage must run `.ci/install-deps --build` (the package list CI uses)")
    builds = [(n, shlex.split(c)) for n, c in cmds if c.startswith(".ci/build ")]
    if len(builds) != 1:
        err(W, "the build stage must run `.ci/build DIR OPTIONS` exactly once")
    else:
        n, argv = builds[0]
        for a in BUILD_SCRIPT_ARGS:
            if a not in argv[2:]:
                err(W, "line %d: .ci/build must get %s" % (n, a))
        options = set(re.findall(r"option\(\s*(\w+)", read("CMakeLists.txt")))
        for a in argv[2:]:
            m = re.match(r"^-D([A-Za-z_0-9]+)(?::\w+)?=", a)
            if not m:
                err(W, "line %d: unexpected .ci/build argument %r" % (n, a))
            elif not m.group(1).startswith("CMAKE_") and m.group(1) not in options:
                err(W, "line %d: %s is not an option() in CMakeLists.txt" % (n, m.group(1)))
    if not any(re.match(r"^(DESTDIR=\S+\s+)?cmake --install ", c) for _, c in cmds):
        err(W, "the build stage must install with `cmake --install` into a staging directory")
    for n, c in cmds:
        if re.search(r"\b(apt-get|apt|dpkg)\b", c) or re.match(r"^(cmake|make|gcc|cc)\b(?! --install)", c):
            err(W, "line %d: %r: the build stage installs and compiles only through .ci/install-deps and "
                   ".ci/build, so it cannot drift from CI" % (n, c))
    copied = [a.split()[0] for _, w, a in build["instrs"] if w == "COPY" and not a.startswith("--")]
    for need in (".ci/install-deps", ".ci/build", "CMakeLists.txt", "sidecar/", "sql/"):
        if need not in copied:
            err(W, "the build stage must COPY %s" % need)

    # -- every COPY from the context exists and survives .dockerignore
    ignore = parse_dockerignore()
    for n, w, a in instrs:
        if w in ("COPY", "ADD") and "--from=" not in a:
            form = exec_form(a)
            words = form if form else [x for x in a.split() if not x.startswith("--")]
            for src in words[:-1]:
                if not os.path.exists(os.path.join(ROOT, src)):
                    err(W, "line %d: COPY source %s does not exist" % (n, src))
                elif not dockerignore_allows(src, ignore):
                    err(W, "line %d: COPY source %s is excluded by .dockerignore" % (n, src))
    if not ignore:
        err(".dockerignore", "missing: the build context is the repository root (build directories, .git)")

    # -- runtime stage
    rt = runtime["instrs"]
    words = [w for _, w, _ in rt]
    pkgs = runtime_packages(rt)
    if not RUNTIME_PACKAGES <= pkgs:
        err(W, "the runtime stage must install %s" % " ".join(sorted(RUNTIME_PACKAGES - pkgs)))
    if pkgs - RUNTIME_PACKAGES - {"curl"}:
        err(W, "unexpected runtime packages: %s" % " ".join(sorted(pkgs - RUNTIME_PACKAGES - {"curl"})))
    rt_runs = " ".join(a for _, w, a in rt if w == "RUN")
    if "--no-install-recommends" not in rt_runs or "rm -rf /var/lib/apt/lists" not in rt_runs:
        err(W, "the runtime apt-get install needs --no-install-recommends and must remove /var/lib/apt/lists")
    if any(re.search(r"\b(gcc|cmake|-dev)\b", a) for _, w, a in rt if w == "RUN"):
        err(W, "the runtime stage must not install build tools")

    users = [a for _, w, a in rt if w == "USER"]
    if not users:
        err(W, "the runtime stage needs a USER")
    else:
        uid = users[-1].split(":")[0]
        if uid in ("0", "root") or not uid.isdigit():
            err(W, "USER %s: use a numeric non-root uid (Kubernetes runAsNonRoot can only verify a number)"
                % users[-1])
        elif not re.search(r"useradd\b[^&;]*--uid %s\b" % uid, rt_runs):
            err(W, "USER %s: no useradd --uid %s in the runtime stage" % (users[-1], uid))

    hc = [a for _, w, a in rt if w == "HEALTHCHECK"]
    if not hc or "/healthz" not in hc[-1]:
        err(W, "the runtime stage needs a HEALTHCHECK on /healthz")
    else:
        m = re.search(r"http://(127\.0\.0\.1|localhost):(\d+)/healthz", hc[-1])
        if not m:
            err(W, "HEALTHCHECK must ask http://127.0.0.1:PORT/healthz")
        else:
            port = host_port(effective_config({})["admin"]["listen"])[1]
            if int(m.group(2)) != port:
                err(W, "HEALTHCHECK port %s is not the admin port %d of %s" % (m.group(2), port, CONFIG))
            if "curl" in hc[-1] and "curl" not in pkgs:
                err(W, "HEALTHCHECK uses curl, which the runtime stage does not install")
    if [a for _, w, a in rt if w == "STOPSIGNAL"] != ["SIGTERM"]:
        err(W, "the runtime stage needs `STOPSIGNAL SIGTERM`")
    if "9644" not in " ".join(a for _, w, a in rt if w == "EXPOSE"):
        err(W, "EXPOSE 9644 (the admin port)")

    ep = [a for _, w, a in rt if w == "ENTRYPOINT"]
    cmd = [a for _, w, a in rt if w == "CMD"]
    ep_argv = exec_form(ep[-1]) if ep else None
    cmd_argv = exec_form(cmd[-1]) if cmd else None
    if not ep_argv:
        err(W, "ENTRYPOINT must be in exec form (a JSON array), so the sidecar is PID 1 and gets SIGTERM")
    if cmd_argv != ["run", "-c", CONFIG_IN_IMAGE]:
        err(W, 'CMD must be ["run", "-c", "%s"] (exec form)' % CONFIG_IN_IMAGE)
    copies = {}
    for _, w, a in rt:
        if w == "COPY":
            parts = [x for x in a.split() if not x.startswith("--")]
            copies[parts[-1]] = (parts[0], "--from=" in a)
    if ep_argv:
        target = ep_argv[0]
        if ep_argv != ["sidecar"]:
            if copies.get(target, (None,))[0] != ENTRYPOINT:
                err(W, "ENTRYPOINT %s is neither sidecar nor %s copied to that path" % (target, ENTRYPOINT))
            else:
                script = read(ENTRYPOINT)
                last = [line.strip() for line in script.split("\n") if line.strip() and not line.strip().startswith("#")][-1]
                if last != 'exec sidecar "$@"':
                    err(ENTRYPOINT, 'must end with `exec sidecar "$@"` (the sidecar replaces the shell as PID 1)')
    if copies.get(CONFIG_IN_IMAGE, (None,))[0] != CONFIG:
        err(W, "COPY %s %s (the default config)" % (CONFIG, CONFIG_IN_IMAGE))
    if SQL_IN_IMAGE not in copies or not copies[SQL_IN_IMAGE][0].rstrip("/").endswith("kafka-sidecar/sql"):
        err(W, "the sql/ migrations must be copied to %s" % SQL_IN_IMAGE)
    if "/usr/bin/sidecar" not in copies and "/usr/local/bin/sidecar" not in copies:
        err(W, "the runtime stage must COPY the sidecar binary to /usr/bin or /usr/local/bin")
    env = " ".join(a for _, w, a in rt if w == "ENV")
    if "SIDECAR_CONFIG=%s" % CONFIG_IN_IMAGE not in env:
        err(W, "ENV SIDECAR_CONFIG=%s (the config `sidecar status` etc. use in `docker exec`)" % CONFIG_IN_IMAGE)

    labels = " ".join(a for _, w, a in rt if w == "LABEL")
    for name in OCI_LABELS:
        if "org.opencontainers.image.%s=" % name not in labels:
            err(W, "missing LABEL org.opencontainers.image.%s" % name)
    version = re.search(r"project\([^)]*VERSION\s+([0-9.]+)", read("CMakeLists.txt")).group(1)
    args = dict(re.match(r"^(\w+)(?:=(.*))?$", a).groups() for _, w, a in rt if w == "ARG")
    if args.get("VERSION") != version:
        err(W, "ARG VERSION=%s differs from project(VERSION %s) in CMakeLists.txt" % (args.get("VERSION"), version))


def runtime_packages(rt=None):
    if rt is None:
        rt = stages(dockerfile_instructions(read(DOCKERFILE)))[-1]["instrs"]
    pkgs = set()
    for _, w, a in rt:
        if w != "RUN":
            continue
        for c in shell_commands(a):
            argv = shlex.split(c)
            if argv[:2] == ["apt-get", "install"]:
                pkgs |= {x for x in argv[2:] if not x.startswith("-")}
    return pkgs


def build_commands(tmp):
    build = stages(dockerfile_instructions(read(DOCKERFILE)))[0]
    out = []
    for _, w, a in build["instrs"]:
        if w == "RUN":
            out.append(re.sub(r"(?<![\w./-])/(build|staging)(?=[/\s]|$)", tmp.rstrip("/") + r"/\1", a))
    return out


def runtime_copies():
    rt = stages(dockerfile_instructions(read(DOCKERFILE)))[-1]["instrs"]
    out = []
    for _, w, a in rt:
        if w == "COPY" and "--from=" in a:
            parts = [x for x in a.split() if not x.startswith("--")]
            out.append((parts[0], parts[-1]))
    return out


def check_staging(staging):
    """The runtime stage's COPY --from=build sources exist in what the build stage installed."""
    for src, dest in runtime_copies():
        if not src.startswith("/staging/"):
            err(DOCKERFILE, "COPY --from=build %s: expected a path under /staging" % src)
            continue
        local = os.path.join(staging, src[len("/staging/"):])
        if not os.path.exists(local):
            err(DOCKERFILE, "COPY --from=build %s: `cmake --install` did not produce it" % src)
        elif src.rstrip("/").endswith("/sql"):
            have = sorted(os.listdir(local))
            want = sorted(f for f in os.listdir(os.path.join(ROOT, "sql")) if re.match(r"^\d{3}_.*\.sql$", f))
            if have != want:
                err(DOCKERFILE, "installed sql/ %s differs from the repository's %s" % (have, want))


# ---- compose --------------------------------------------------------------------------------

def port_targets(svc):
    """Container ports a compose service publishes (short "ip:host:container/proto" or long syntax)."""
    out = set()
    for pm in svc.get("ports", []):
        if isinstance(pm, dict):
            out.add(int(pm.get("target", 0)))
        else:
            out.add(int(str(pm).split("/")[0].rsplit(":", 1)[-1]))
    return out


def compose_mounts(svc):
    """[{source, target, read_only}] of a compose service (short "src:dst[:ro]" or long syntax)."""
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, dict):
            out.append({"source": v.get("source", ""), "target": v.get("target"), "read_only": bool(v.get("read_only"))})
        else:
            parts = str(v).split(":")
            mode = parts[2] if len(parts) > 2 else ""
            out.append({"source": parts[0], "target": parts[1] if len(parts) > 1 else parts[0],
                        "read_only": "ro" in mode.split(",")})
    return out


def check_compose(config_path, sidecar_bin):
    W = COMPOSE
    with open(config_path) as f:
        c = yaml.safe_load(f)
    svcs = c.get("services", {})
    for name in ("kafka", "postgres", "producer", "app", "sidecar"):
        if name not in svcs:
            err(W, "missing service %s" % name)
    if errors:
        return

    # Kafka in KRaft mode, one node
    k = svcs["kafka"]
    kenv = {key: str(v) for key, v in (k.get("environment") or {}).items()}
    if not k.get("image", "").startswith("apache/kafka:"):
        err(W, "kafka: use the official apache/kafka image")
    if set(kenv.get("KAFKA_PROCESS_ROLES", "").split(",")) != {"broker", "controller"}:
        err(W, "kafka: KAFKA_PROCESS_ROLES must be broker,controller (one KRaft node)")
    node = kenv.get("KAFKA_NODE_ID")
    voters = kenv.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "")
    if not node or not voters.startswith(node + "@"):
        err(W, "kafka: KAFKA_CONTROLLER_QUORUM_VOTERS must name KAFKA_NODE_ID (%s@host:port)" % node)
    listeners = dict(x.split("://", 1) for x in kenv.get("KAFKA_LISTENERS", "").split(",") if "://" in x)
    advertised = dict(x.split("://", 1) for x in kenv.get("KAFKA_ADVERTISED_LISTENERS", "").split(",") if "://" in x)
    protomap = dict(x.split(":", 1) for x in kenv.get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "").split(",") if ":" in x)
    ctl = kenv.get("KAFKA_CONTROLLER_LISTENER_NAMES", "")
    if ctl not in listeners:
        err(W, "kafka: the controller listener %r is not in KAFKA_LISTENERS" % ctl)
    elif voters.rsplit(":", 1)[-1] != listeners[ctl].rsplit(":", 1)[-1]:
        err(W, "kafka: the quorum voter port differs from the %s listener's" % ctl)
    for name in set(listeners) | set(advertised):
        if name not in protomap:
            err(W, "kafka: listener %s is not in KAFKA_LISTENER_SECURITY_PROTOCOL_MAP" % name)
    if ctl in advertised:
        err(W, "kafka: the controller listener must not be advertised")
    if kenv.get("KAFKA_INTER_BROKER_LISTENER_NAME") not in advertised:
        err(W, "kafka: KAFKA_INTER_BROKER_LISTENER_NAME must be an advertised listener")
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        if kenv.get(key) != "1":
            err(W, "kafka: %s must be 1 on a single node" % key)
    try:
        if len(base64.urlsafe_b64decode(kenv.get("CLUSTER_ID", "") + "==")) != 16 or len(kenv["CLUSTER_ID"]) != 22:
            raise ValueError
    except (ValueError, KeyError):
        err(W, "kafka: CLUSTER_ID must be a base64 UUID (22 characters, kafka-storage.sh random-uuid)")

    # health checks behind every service_healthy
    for name, s in svcs.items():
        for dep, cond in (s.get("depends_on") or {}).items():
            condition = cond.get("condition") if isinstance(cond, dict) else None
            if condition == "service_healthy" and not (svcs.get(dep, {}).get("healthcheck") or {}).get("test"):
                err(W, "%s waits for %s to be healthy, which has no healthcheck" % (name, dep))
    if "pg_isready" not in " ".join(svcs["postgres"].get("healthcheck", {}).get("test", [])):
        err(W, "postgres: the healthcheck should use pg_isready")
    if not svcs["postgres"].get("image", "").startswith("postgres:"):
        err(W, "postgres: use the official postgres image")

    # the producer: topic, partitions
    p = svcs["producer"]
    penv = {key: str(v) for key, v in (p.get("environment") or {}).items()}
    if (p.get("depends_on") or {}).get("kafka", {}).get("condition") != "service_healthy":
        err(W, "producer: depends_on kafka: condition: service_healthy")
    base_cfg = json.loads(read(CONFIG))
    topics = base_cfg["pipelines"][0]["topics"]
    if penv.get("TOPIC", "orders") not in topics:
        err(W, "producer: TOPIC %s is not consumed by %s (%s)" % (penv.get("TOPIC"), CONFIG, topics))
    if penv.get("PARTITIONS") != "4":
        err(W, "producer: the demo topic has 4 partitions (PARTITIONS=4)")
    if not any(v["source"].endswith("/docker/produce-orders.sh") for v in compose_mounts(p)):
        err(W, "producer: mount docker/produce-orders.sh")

    # the sidecar
    s = svcs["sidecar"]
    senv = {key: "" if v is None else str(v) for key, v in (s.get("environment") or {}).items()}
    b = s.get("build") or {}
    if os.path.realpath(b.get("context", "")) != os.path.realpath(ROOT) or b.get("dockerfile") != DOCKERFILE:
        err(W, "sidecar: build context must be the repository root and dockerfile %s" % DOCKERFILE)
    if senv.get("SIDECAR_MIGRATE") != "1":
        err(W, "sidecar: SIDECAR_MIGRATE=1 (the schema is created on start)")
    if s.get("hostname") or s.get("container_name"):
        err(W, "sidecar: no hostname/container_name: instance_id is $HOSTNAME and must be unique per container")
    want = {"postgres": "service_healthy", "kafka": "service_healthy", "app": "service_healthy",
            "producer": "service_completed_successfully"}
    deps = {d: (v or {}).get("condition") for d, v in (s.get("depends_on") or {}).items()}
    for d, cond in want.items():
        if deps.get(d) != cond:
            err(W, "sidecar: depends_on %s: condition: %s" % (d, cond))
    mounts = compose_mounts(s)
    if not any(v.get("target") == CONFIG_IN_IMAGE and os.path.realpath(v.get("source", "")) ==
               os.path.realpath(os.path.join(ROOT, CONFIG)) and v.get("read_only") for v in mounts):
        err(W, "sidecar: mount ../%s at %s read-only" % (CONFIG, CONFIG_IN_IMAGE))
    secrets = [x["source"] if isinstance(x, dict) else x for x in s.get("secrets", [])]
    for path in re.findall(r"\$\{file:/run/secrets/([^}]+)\}", read(CONFIG)):
        if path not in secrets:
            err(W, "sidecar: %s reads /run/secrets/%s: add the secret %s" % (CONFIG, path, path))
    for name, sec in (c.get("secrets") or {}).items():
        f = sec.get("file")
        if not f or not os.path.isfile(f):
            err(W, "secret %s: file %s does not exist" % (name, f))
    cfg = effective_config(dict(senv, HOSTNAME="0123456789ab"), sidecar_bin, W + " (sidecar)")
    if cfg:
        shutdown = cfg["shutdown_timeout_ms"] / 1000.0
        try:
            grace = seconds(s.get("stop_grace_period", "10s"))
        except ValueError:
            grace = 0
            err(W, "sidecar: cannot read stop_grace_period %r" % s.get("stop_grace_period"))
        if grace <= shutdown:
            err(W, "sidecar: stop_grace_period %gs must be longer than shutdown_timeout_ms %gs" % (grace, shutdown))
        else:
            print("ok: compose: shutdown_timeout_ms %gs < stop_grace_period %gs" % (shutdown, grace))
        host, port = host_port(cfg["admin"]["listen"])
        if host not in ("0.0.0.0", "::"):
            err(W, "sidecar: admin.listen %s: a published port needs 0.0.0.0 in the container" % cfg["admin"]["listen"])
        for target in port_targets(s):
            if target != port:
                err(W, "sidecar: published port %s is not the admin port %d" % (target, port))
        url = cfg["pipelines"][0]["sink"]["url"]
        m = re.match(r"^http://([^:/]+):(\d+)/", url)
        app_ports = port_targets(svcs["app"])
        if not m or m.group(1) != "app" or (app_ports and int(m.group(2)) not in app_ports):
            err(W, "sidecar: the sink url %s does not point at the app service" % url)
        boot = cfg["kafka"]["bootstrap.servers"]
        if boot not in advertised.values():
            err(W, "sidecar: kafka bootstrap %s is not an advertised Kafka listener %s" % (boot, sorted(advertised.values())))
    # the demo DSN and the postgres password agree
    pgenv = svcs["postgres"].get("environment") or {}
    dsn_file = (c.get("secrets") or {}).get("pg_dsn", {}).get("file")
    pw_file = (c.get("secrets") or {}).get("pg_password", {}).get("file")
    if dsn_file and pw_file and os.path.isfile(dsn_file) and os.path.isfile(pw_file):
        dsn = dict(x.split("=", 1) for x in open(dsn_file).read().split() if "=" in x)
        pw = open(pw_file).read().rstrip("\n")
        if dsn.get("password") != pw or dsn.get("user") != pgenv.get("POSTGRES_USER") or \
                dsn.get("dbname") != pgenv.get("POSTGRES_DB") or dsn.get("host") != "postgres":
            err(W, "secrets: pg_dsn does not match the postgres service (host postgres, user, dbname, password)")
    if (pgenv.get("POSTGRES_PASSWORD_FILE") or "") != "/run/secrets/pg_password":
        err(W, "postgres: POSTGRES_PASSWORD_FILE=/run/secrets/pg_password (from the pg_password secret)")


def check_compose_files():
    """Every bind mount's source exists (compose would create a missing one as an
    empty directory, and the service would start without its file); the
    observability profile's services are there and optional."""
    W = COMPOSE
    with open(os.path.join(ROOT, W)) as f:
        raw = yaml.safe_load(f).get("services", {})
    for name, svc in raw.items():
        for m in compose_mounts(svc):
            if m["source"].startswith((".", "/")):
                src = os.path.normpath(os.path.join(ROOT, os.path.dirname(W), m["source"]))
                if not os.path.exists(src):
                    err(W, "%s: the mounted %s does not exist" % (name, m["source"]))
    for name in ("prometheus", "grafana"):
        if name not in raw:
            err(W, "missing the %s service of the observability profile" % name)
        elif "observability" not in (raw[name].get("profiles") or []):
            err(W, "%s: belongs to the optional profile observability" % name)


def check_apt_layers():
    """apt leaves nothing behind in any layer: every RUN that installs packages
    also runs `apt-get clean` and removes the package lists; the build stage's
    .ci/install-deps cleans its cache itself."""
    for path in (DOCKERFILE, "docker/example-app/Dockerfile"):
        for n, w, a in dockerfile_instructions(read(path)):
            if w == "RUN" and re.search(r"\bapt-get\s+install\b", a):
                if "apt-get clean" not in a or "rm -rf /var/lib/apt/lists" not in a:
                    err(path, "line %d: an apt-get install layer must end with `apt-get clean` and "
                              "`rm -rf /var/lib/apt/lists/*`" % n)
    if "apt-get clean" not in read(".ci/install-deps"):
        err(".ci/install-deps", "must run `apt-get clean` after installing (the image's build stage runs it)")


# ---- Kubernetes ----------------------------------------------------------------------------

def container_env(container, pod_name="orders-app-5d8f7c9b4-x2k7p"):
    """The container's environment as far as a manifest tells: fieldRef metadata.name
    becomes a pod name, secretKeyRef a placeholder."""
    env, sources = {}, {}
    for e in container.get("env", []):
        vf = e.get("valueFrom") or {}
        if "value" in e:
            env[e["name"]] = str(e["value"])
            sources[e["name"]] = "value"
        elif (vf.get("fieldRef") or {}).get("fieldPath") == "metadata.name":
            env[e["name"]] = pod_name
            sources[e["name"]] = "pod-name"
        elif "secretKeyRef" in vf:
            env[e["name"]] = "secret-from-" + vf["secretKeyRef"].get("name", "?")
            sources[e["name"]] = "secret"
        else:
            sources[e["name"]] = "other"
    return env, sources


# Fields of core/v1 objects this manifest may use: a typo (e.g. "resouces") is
# not caught by YAML and would be silently ignored by a lenient apply.
POD_FIELDS = {"containers", "initContainers", "volumes", "securityContext", "terminationGracePeriodSeconds",
              "serviceAccountName", "affinity", "nodeSelector", "tolerations", "topologySpreadConstraints",
              "priorityClassName", "imagePullSecrets", "automountServiceAccountToken", "enableServiceLinks"}
CONTAINER_FIELDS = {"name", "image", "imagePullPolicy", "command", "args", "workingDir", "env", "envFrom",
                    "ports", "livenessProbe", "readinessProbe", "startupProbe", "resources", "securityContext",
                    "volumeMounts", "restartPolicy", "lifecycle", "terminationMessagePolicy"}
PROBE_FIELDS = {"httpGet", "exec", "tcpSocket", "grpc", "initialDelaySeconds", "periodSeconds", "timeoutSeconds",
                "failureThreshold", "successThreshold", "terminationGracePeriodSeconds"}
CSC_FIELDS = {"runAsNonRoot", "runAsUser", "runAsGroup", "allowPrivilegeEscalation", "readOnlyRootFilesystem",
              "capabilities", "seccompProfile", "privileged"}


def check_k8s_fields(spec):
    def unknown(where, obj, allowed):
        for k in obj:
            if k not in allowed:
                err(K8S, "%s: unknown field %r" % (where, k))

    unknown("spec.template.spec", spec, POD_FIELDS)
    for kind in ("initContainers", "containers"):
        for c in spec.get(kind, []):
            where = "%s[%s]" % (kind, c.get("name"))
            unknown(where, c, CONTAINER_FIELDS)
            unknown(where + ".securityContext", c.get("securityContext", {}), CSC_FIELDS)
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                unknown("%s.%s" % (where, probe), c.get(probe, {}), PROBE_FIELDS)
            if kind == "containers" and "restartPolicy" in c:
                err(K8S, "%s: restartPolicy belongs to init containers (native sidecars)" % where)


def check_k8s(sidecar_bin):
    W = K8S
    docs = [d for d in yaml.safe_load_all(read(W)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    deps = by_kind.get("Deployment", [])
    if len(deps) != 1:
        err(W, "expected one Deployment")
        return
    dep = deps[0]
    spec = dep["spec"]["template"]["spec"]
    check_k8s_fields(spec)
    labels = dep["spec"]["template"]["metadata"].get("labels", {})
    if any(labels.get(k) != v for k, v in dep["spec"]["selector"]["matchLabels"].items()):
        err(W, "the Deployment's selector does not match its Pod labels")

    sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    if len(sidecars) != 1:
        err(W, "the sidecar must be a native sidecar: one initContainers entry with restartPolicy: Always")
        return
    sc = sidecars[0]
    apps = spec.get("containers", [])
    if not apps:
        err(W, "the Pod needs the app in containers")
        return
    if sc.get("args", ["run", "-c", CONFIG_IN_IMAGE]) != ["run", "-c", CONFIG_IN_IMAGE] or sc.get("command"):
        err(W, "sidecar: args must be the image's CMD (run -c %s) and command unset" % CONFIG_IN_IMAGE)

    env, sources = container_env(sc)
    vars_used = config_env_vars()
    # instance_id from the Pod name (left out of the config, it is $HOSTNAME)
    instance_id = json.loads(read(CONFIG)).get("instance_id", "${HOSTNAME}")
    m = re.match(r"^\$\{([A-Za-z_]\w*)", instance_id)
    if not m or sources.get(m.group(1)) != "pod-name":
        err(W, "sidecar: instance_id (%s) must come from the Pod name (env %s from fieldRef metadata.name)"
            % (instance_id, m and m.group(1)))
    if sources.get("SIDECAR_ADMIN_TOKEN") != "secret" and "SIDECAR_ADMIN_TOKEN" in vars_used:
        err(W, "sidecar: SIDECAR_ADMIN_TOKEN must come from a Secret (secretKeyRef)")
    for name, src in sources.items():
        if src == "value" and re.search(r"(PASSWORD|TOKEN|DSN|SECRET)", name):
            err(W, "sidecar: %s is a plain value; take it from a Secret" % name)
    for e in sc.get("env", []):
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref and not any(s["metadata"]["name"] == ref["name"] and ref["key"] in
                           (s.get("stringData") or {}) | (s.get("data") or {}) for s in by_kind.get("Secret", [])):
            err(W, "sidecar: env %s refers to Secret %s key %s, which this file does not define"
                % (e["name"], ref["name"], ref["key"]))

    # mounts: ConfigMap at the config's directory, equal to conf/docker.json; DSN from a Secret
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in sc.get("volumeMounts", [])}
    cfg_dir = os.path.dirname(CONFIG_IN_IMAGE)
    mnt = mounts.get(cfg_dir)
    cm_name = mnt and (volumes.get(mnt["name"], {}).get("configMap") or {}).get("name")
    cms = [d for d in by_kind.get("ConfigMap", []) if d["metadata"]["name"] == cm_name]
    if not cms:
        err(W, "sidecar: mount the ConfigMap with sidecar.json at %s" % cfg_dir)
    else:
        data = cms[0].get("data", {}).get(os.path.basename(CONFIG_IN_IMAGE))
        try:
            if json.loads(data or "null") != json.loads(read(CONFIG)):
                err(W, "ConfigMap %s: sidecar.json differs from %s (keep them equal)" % (cm_name, CONFIG))
        except ValueError as e:
            err(W, "ConfigMap %s: sidecar.json is not JSON: %s" % (cm_name, e))
    for path in re.findall(r"\$\{file:(/[^}]+)\}", read(CONFIG)):
        d, base = os.path.dirname(path), os.path.basename(path)
        mnt = mounts.get(d)
        sec = mnt and (volumes.get(mnt["name"], {}).get("secret") or {})
        if not sec:
            err(W, "sidecar: %s reads %s: mount a Secret at %s" % (CONFIG, path, d))
            continue
        items = {i["path"]: i["key"] for i in sec.get("items", [])}
        secret = [s for s in by_kind.get("Secret", []) if s["metadata"]["name"] == sec.get("secretName")]
        keys = set((secret[0].get("stringData") or {}) | (secret[0].get("data") or {})) if secret else set()
        key = items.get(base, base if not items else None)
        if not secret or key not in keys:
            err(W, "sidecar: %s must be key %s of Secret %s, defined in this file" % (path, key, sec.get("secretName")))

    # shutdown, admin port, probes, app url
    cfg = effective_config(env, sidecar_bin, W + " (sidecar)")
    if cfg:
        shutdown = cfg["shutdown_timeout_ms"] / 1000.0
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace < shutdown + 2:
            err(W, "terminationGracePeriodSeconds %s must exceed shutdown_timeout_ms (%gs) with room for "
                   "the app's own shutdown" % (grace, shutdown))
        else:
            print("ok: k8s: shutdown_timeout_ms %gs < terminationGracePeriodSeconds %ss" % (shutdown, grace))
        host, port = host_port(cfg["admin"]["listen"])
        if host not in ("0.0.0.0", "::"):
            err(W, "sidecar: admin.listen %s: kubelet httpGet probes need 0.0.0.0" % cfg["admin"]["listen"])
        ports = {p.get("name"): p["containerPort"] for p in sc.get("ports", [])}
        if port not in ports.values():
            err(W, "sidecar: declare the admin port %d in ports" % port)

        def probe_port(pp):
            return ports.get(pp) if isinstance(pp, str) else pp

        live = sc.get("livenessProbe", {}).get("httpGet", {})
        if live.get("path") != "/healthz" or probe_port(live.get("port")) != port:
            err(W, "sidecar: livenessProbe must be httpGet /healthz on the admin port %d" % port)
        ready = sc.get("readinessProbe", {})
        token = bool(cfg["admin"].get("token"))  # check-config prints a set token masked
        if "httpGet" in ready:
            g = ready["httpGet"]
            if g.get("path") != "/readyz" or probe_port(g.get("port")) != port:
                err(W, "sidecar: readinessProbe must ask /readyz on the admin port %d" % port)
            if token and not any(h.get("name", "").lower() == "authorization" for h in g.get("httpHeaders", [])):
                err(W, "sidecar: /readyz needs the admin token; an httpGet probe without it always gets 401")
        elif "exec" in ready:
            text = " ".join(ready["exec"].get("command", []))
            if "http://127.0.0.1:%d/readyz" % port not in text:
                err(W, "sidecar: the readiness exec probe must ask http://127.0.0.1:%d/readyz" % port)
            if token and "SIDECAR_ADMIN_TOKEN" not in text:
                err(W, "sidecar: the readiness probe must send the admin token")
        else:
            err(W, "sidecar: readinessProbe on /readyz missing")
        url = cfg["pipelines"][0]["sink"]["url"]
        app_ports = {p["containerPort"] for a in apps for p in a.get("ports", [])}
        m = re.match(r"^http://(127\.0\.0\.1|localhost):(\d+)/", url)
        if not m or int(m.group(2)) not in app_ports:
            err(W, "sidecar: the sink url %s must point at the app container in the Pod (127.0.0.1:%s)"
                % (url, sorted(app_ports)))

    # non-root, read-only root file system
    pod_sc = spec.get("securityContext", {})
    for c in [sc] + apps:
        csc = c.get("securityContext", {})
        if not (csc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))):
            err(W, "%s: runAsNonRoot: true" % c["name"])
        if not csc.get("readOnlyRootFilesystem"):
            err(W, "%s: readOnlyRootFilesystem: true" % c["name"])
        if csc.get("allowPrivilegeEscalation") is not False:
            err(W, "%s: allowPrivilegeEscalation: false" % c["name"])
        if str(csc.get("runAsUser", pod_sc.get("runAsUser", ""))) in ("0",):
            err(W, "%s: runs as root" % c["name"])
    uid = [a for _, w, a in stages(dockerfile_instructions(read(DOCKERFILE)))[-1]["instrs"] if w == "USER"]
    if uid and str(sc.get("securityContext", {}).get("runAsUser", uid[-1].split(":")[0])) != uid[-1].split(":")[0]:
        err(W, "sidecar: runAsUser differs from the image's USER %s" % uid[-1])


# ---- main -----------------------------------------------------------------------------------

def main(argv):
    if len(argv) >= 1 and argv[0] == "build-commands":
        print("\n".join(build_commands(argv[1])))
        return 0
    if argv[:1] == ["runtime-packages"]:
        print("\n".join(sorted(runtime_packages())))
        return 0
    if argv[:1] == ["runtime-copies"]:
        print("\n".join("%s %s" % x for x in runtime_copies()))
        return 0
    if argv[:1] != ["check"]:
        print(__doc__, file=sys.stderr)
        return 2
    opts = dict(zip(argv[1::2], argv[2::2]))
    sidecar = opts.get("--sidecar")
    check_dockerfile()
    check_apt_layers()
    check_compose_files()
    if "--staging" in opts:
        check_staging(opts["--staging"])
    if "--compose-config" in opts:
        check_compose(opts["--compose-config"], sidecar)
    check_k8s(sidecar)
    for e in errors:
        print("check-docker: " + e, file=sys.stderr)
    if errors:
        return 1
    print("check-docker: %s, %s, %s, %s: all invariants hold%s" % (
        DOCKERFILE, COMPOSE if "--compose-config" in opts else "(no compose config)", K8S, CONFIG,
        " (configs validated by %s check-config)" % sidecar if sidecar else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
