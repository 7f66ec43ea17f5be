#!/usr/bin/env python3
"""Validates the Kubernetes manifests of docker/k8s/ without a cluster.

  python3 .ci/check_k8s.py [FILE...]       default: docker/k8s/*.yaml
  python3 .ci/check_k8s.py --self-test     breaks a copy on purpose, expects reports

1. Schema: every object of a built-in kind is walked against the Kubernetes
   API's own models (Debian's python3-kubernetes: each model's field names
   and types): an unknown or misspelt field, a value of the wrong type, a
   missing required field is reported with its path.  python3-kubernetes
   22.6 describes Kubernetes 1.22, so the few newer fields a manifest may use
   are listed in NEWER_FIELDS with the version that added them.  Resource
   quantities must parse.  The PodMonitor (a Prometheus Operator CRD) is
   checked against the subset of its schema described in PODMONITOR.
2. Consistency: a PodDisruptionBudget and a PodMonitor select the
   Deployment's Pods; the PodMonitor's port is a named container port and
   its token Secret exists; the prometheus.io/port annotation is the admin
   port; every container's memory limit is at least its request, and the
   sidecar's memory limit leaves SIDECAR_MEMORY_OVERHEAD_MIB above the
   memory budget (memory.limit_mib, default 64 MiB).

No kubeconform in Debian 12; kubectl's validation needs a server.
"""
import copy
import glob
import os
import re
import sys

import yaml

try:
    import kubernetes.client as k8s
except ImportError:
    sys.exit("check_k8s: python3-kubernetes is missing (run .ci/install-deps; use Debian's python3)")

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
KINDS = {
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Secret"): "V1Secret",
    ("v1", "Service"): "V1Service",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("apps/v1", "StatefulSet"): "V1StatefulSet",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
}
# Fields newer than the models (Kubernetes 1.22): model -> {json name: (type, since)}.
NEWER_FIELDS = {
    "V1Container": {"restartPolicy": ("str", "1.28 (native sidecars, on init containers)")},
}
# The part of monitoring.coreos.com/v1 PodMonitor this project uses.
SECRET_KEY = {"name": "str", "key": "str", "optional": "bool"}
PODMONITOR = {
    "apiVersion": "str", "kind": "str", "metadata": "V1ObjectMeta",
    "spec": {
        "selector": "V1LabelSelector",
        "namespaceSelector": {"any": "bool", "matchNames": ["str"]},
        "jobLabel": "str", "podTargetLabels": ["str"], "sampleLimit": "int",
        "podMetricsEndpoints": [{
            "port": "str", "targetPort": "object", "path": "str", "scheme": "str", "interval": "str",
            "scrapeTimeout": "str", "honorLabels": "bool", "params": "dict(str, list[str])",
            "authorization": {"type": "str", "credentials": SECRET_KEY},
            "bearerTokenSecret": SECRET_KEY,
            "relabelings": [{"sourceLabels": ["str"], "separator": "str", "targetLabel": "str",
                             "regex": "str", "modulus": "int", "replacement": "str", "action": "str"}],
            "metricRelabelings": [{"sourceLabels": ["str"], "separator": "str", "targetLabel": "str",
                                   "regex": "str", "modulus": "int", "replacement": "str", "action": "str"}],
        }],
    },
}
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+)?$")
MEMORY_BUDGET_MIB = 64  # memory.limit_mib's default
SIDECAR_MEMORY_OVERHEAD_MIB = 32  # what the budget does not bound (docker/k8s/sidecar.yaml)

problems = []


def problem(path, where, msg):
    problems.append("%s: %s: %s" % (os.path.relpath(path, ROOT), where, msg))


def walk(path, where, value, typ):
    """Checks value against a python3-kubernetes type string or a schema dict/list."""
    if isinstance(typ, dict):
        if not isinstance(value, dict):
            return problem(path, where, "expected an object, got %r" % (value,))
        for k, v in value.items():
            if k not in typ:
                problem(path, where, "unknown field %r" % k)
            else:
                walk(path, "%s.%s" % (where, k), v, typ[k])
        return
    if isinstance(typ, list):
        if not isinstance(value, list):
            return problem(path, where, "expected a list")
        for i, v in enumerate(value):
            walk(path, "%s[%d]" % (where, i), v, typ[0])
        return
    m = re.fullmatch(r"list\[(.+)\]", typ)
    if m:
        if not isinstance(value, list):
            return problem(path, where, "expected a list, got %r" % (value,))
        for i, v in enumerate(value):
            walk(path, "%s[%d]" % (where, i), v, m.group(1))
        return
    m = re.fullmatch(r"dict\(str, (.+)\)", typ)
    if m:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return problem(path, where, "expected a map with string keys, got %r" % (value,))
        for k, v in value.items():
            walk(path, "%s[%s]" % (where, k), v, m.group(1))
        return
    if typ == "str":
        if not isinstance(value, str):
            problem(path, where, "expected a string, got %r (quote it)" % (value,))
    elif typ == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            problem(path, where, "expected an integer, got %r" % (value,))
    elif typ == "bool":
        if not isinstance(value, bool):
            problem(path, where, "expected true or false, got %r" % (value,))
    elif typ in ("object", "datetime", "date"):
        pass  # IntOrString, Quantity, raw JSON
    elif hasattr(k8s, typ):
        model = getattr(k8s, typ)
        if not isinstance(value, dict):
            return problem(path, where, "expected an object (%s), got %r" % (typ, value))
        by_json = {j: a for a, j in model.attribute_map.items()}
        newer = NEWER_FIELDS.get(typ, {})
        for k, v in value.items():
            if k in by_json:
                walk(path, "%s.%s" % (where, k), v, model.openapi_types[by_json[k]])
            elif k in newer:
                walk(path, "%s.%s" % (where, k), v, newer[k][0])
            else:
                problem(path, where, "unknown field %r for %s" % (k, typ))
    else:
        problem(path, where, "no schema for type %s" % typ)


def check_required(path, where, doc, model_name):
    """The models refuse None for required fields: build the object to find them."""
    # Deserialising ignores unknown keys (walk() reports those).
    try:
        k8s.ApiClient()._ApiClient__deserialize(doc, model_name)
    except (ValueError, TypeError) as e:
        problem(path, where, "invalid %s: %s" % (model_name, e))


def quantities(path, where, resources):
    for part in ("requests", "limits"):
        for name, q in (resources.get(part) or {}).items():
            if not QUANTITY.match(str(q)):
                problem(path, "%s.resources.%s.%s" % (where, part, name), "%r is not a quantity" % (q,))


def mib(q):
    m = QUANTITY.match(str(q))
    if not m:
        return None
    n = float(m.group(1))
    unit = m.group(3) or ""
    scale = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3,
             "Ti": 1024 ** 4, "m": 1e-3}
    if unit not in scale:
        return None
    return n * scale[unit] / 1024 ** 2


def selects(selector, labels):
    ml = (selector or {}).get("matchLabels") or {}
    return bool(ml) and all(labels.get(k) == v for k, v in ml.items())


def check_files(files):
    objects = []
    for path in files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for i, d in enumerate(docs):
            where = "%s %s" % (d.get("kind"), (d.get("metadata") or {}).get("name"))
            key = (d.get("apiVersion"), d.get("kind"))
            if key in KINDS:
                walk(path, where, d, KINDS[key])
                check_required(path, where, d, KINDS[key])
            elif key == ("monitoring.coreos.com/v1", "PodMonitor"):
                walk(path, where, d, PODMONITOR)
            else:
                problem(path, "document %d" % (i + 1), "unknown apiVersion/kind %s %s" % key)
            objects.append((path, where, d))
    consistency(objects)


def consistency(objects):
    deps = [(p, w, d) for p, w, d in objects if d.get("kind") in ("Deployment", "StatefulSet")]
    secrets = {(d["metadata"]["name"]): d for _, _, d in objects if d.get("kind") == "Secret"}
    for path, where, d in deps:
        tmpl = d["spec"]["template"]
        labels = tmpl["metadata"].get("labels") or {}
        if not selects(d["spec"].get("selector"), labels):
            problem(path, where, "spec.selector does not select the template's labels")
        spec = tmpl["spec"]
        containers = spec.get("initContainers", []) + spec.get("containers", [])
        ports = {p.get("name"): p.get("containerPort") for c in containers for p in c.get("ports", [])}
        for c in containers:
            cw = "%s container %s" % (where, c.get("name"))
            res = c.get("resources") or {}
            quantities(path, cw, res)
            req = mib((res.get("requests") or {}).get("memory", "0"))
            lim = (res.get("limits") or {}).get("memory")
            if lim is None:
                problem(path, cw, "no memory limit")
            elif req is not None and mib(lim) is not None and mib(lim) < req:
                problem(path, cw, "memory limit %s is below the request" % lim)
            if c.get("name") == "sidecar" and lim is not None:
                need = MEMORY_BUDGET_MIB + SIDECAR_MEMORY_OVERHEAD_MIB
                if mib(lim) is None or mib(lim) < need:
                    problem(path, cw, "memory limit %s: the sidecar needs memory.limit_mib (%d MiB) + %d MiB"
                            % (lim, MEMORY_BUDGET_MIB, SIDECAR_MEMORY_OVERHEAD_MIB))
        ann = tmpl["metadata"].get("annotations") or {}
        if ann.get("prometheus.io/scrape") == "true":
            if ann.get("prometheus.io/port") != str(ports.get("admin")):
                problem(path, where, "prometheus.io/port %r is not the admin port %r"
                        % (ann.get("prometheus.io/port"), ports.get("admin")))
            if ann.get("prometheus.io/path", "/metrics") != "/metrics":
                problem(path, where, "prometheus.io/path must be /metrics")
        for p2, w2, o in objects:
            kind = o.get("kind")
            if kind == "PodDisruptionBudget":
                if not selects(o["spec"].get("selector"), labels):
                    problem(p2, w2, "does not select the Pods of %s" % where)
                if "minAvailable" in o["spec"] and str(o["spec"]["minAvailable"]) == str(d["spec"].get("replicas", 1)):
                    problem(p2, w2, "minAvailable equals replicas: no node could ever be drained")
            if kind == "PodMonitor":
                if not selects(o["spec"].get("selector"), labels):
                    problem(p2, w2, "does not select the Pods of %s" % where)
                for ep in o["spec"].get("podMetricsEndpoints", []):
                    if ep.get("port") not in ports:
                        problem(p2, w2, "port %r is not a named container port of %s" % (ep.get("port"), where))
                    if ep.get("path", "/metrics") != "/metrics":
                        problem(p2, w2, "path must be /metrics")
                    cred = (ep.get("authorization") or {}).get("credentials") or ep.get("bearerTokenSecret")
                    if not cred:
                        problem(p2, w2, "no authorization: /metrics needs the admin token")
                    elif cred.get("name") not in secrets or cred.get("key") not in (
                            (secrets[cred["name"]].get("stringData") or {}) | (secrets[cred["name"]].get("data") or {})):
                        problem(p2, w2, "token Secret %s/%s is not in the manifests" % (cred.get("name"), cred.get("key")))


def self_test(files):
    """Each break must be reported; the unbroken manifests must not be."""
    def docs_of(path):
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if d]

    base = {p: docs_of(p) for p in files}
    dep_file = next(p for p, ds in base.items() if any(d.get("kind") == "Deployment" for d in ds))

    def dep(ds):
        return next(d for d in ds if d.get("kind") == "Deployment")

    def sidecar(ds):
        return next(c for c in dep(ds)["spec"]["template"]["spec"]["initContainers"] if c["name"] == "sidecar")

    breaks = [
        ("misspelt container field", lambda ds: sidecar(ds).__setitem__("resouces", {})),
        ("wrong type", lambda ds: dep(ds)["spec"].__setitem__("replicas", "one")),
        ("unknown pod field", lambda ds: dep(ds)["spec"]["template"]["spec"].__setitem__("terminationGracePeriod", 30)),
        ("missing required field", lambda ds: sidecar(ds).pop("name")),
        ("bad quantity", lambda ds: sidecar(ds)["resources"]["limits"].__setitem__("memory", "96 MB")),
        ("memory below the budget", lambda ds: sidecar(ds)["resources"].update(
            requests={"cpu": "100m", "memory": "64Mi"}, limits={"memory": "64Mi"})),
        ("limit below request", lambda ds: sidecar(ds)["resources"]["requests"].__setitem__("memory", "1Gi")),
        ("scrape port", lambda ds: dep(ds)["spec"]["template"]["metadata"]["annotations"].__setitem__("prometheus.io/port", "9090")),
        ("PDB selector", lambda ds: next(d for d in ds if d.get("kind") == "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].__setitem__("app.kubernetes.io/name", "other")),
    ]
    failures = 0
    global problems
    import tempfile
    for name, brk in breaks:
        docs = copy.deepcopy(base)
        brk(docs[dep_file])
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for p, ds in docs.items():
                q = os.path.join(tmp, os.path.basename(p))
                with open(q, "w") as f:
                    yaml.safe_dump_all(ds, f)
                paths.append(q)
            problems = []
            check_files(paths)
        if not problems:
            print("self-test: %s was not reported" % name, file=sys.stderr)
            failures += 1
        elif os.environ.get("CHECK_K8S_VERBOSE"):
            print("self-test: %s -> %s" % (name, problems[0]))
    problems = []
    check_files(files)
    if problems:
        print("self-test: the manifests themselves fail:\n" + "\n".join(problems), file=sys.stderr)
        failures += 1
    print("ok: check_k8s reports each of %d broken manifests" % len(breaks))
    return 1 if failures else 0


def main(argv):
    args = argv[1:]
    files = [a for a in args if not a.startswith("--")] or sorted(glob.glob(os.path.join(ROOT, "docker/k8s/*.yaml")))
    if "--self-test" in args:
        return self_test(files)
    check_files(files)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    print("ok: %s valid against the Kubernetes API models (python3-kubernetes %s) and consistent"
          % (", ".join(os.path.relpath(f, ROOT) for f in files), k8s.__version__ if hasattr(k8s, "__version__") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
