#!/usr/bin/env python3
"""Checks the Grafana dashboard and the Prometheus alerting rules of this
directory without Grafana or Prometheus running.

  check_observability.py check   every check below; exit 1 on a problem
  check_observability.py names   the sidecar metric names the dashboard, the
                                 rules and the rules' tests use, one a line
                                 (tests/integration/check_observability.c
                                 scrapes a running sidecar and requires each)

The checks:
  - grafana-dashboard.json: valid JSON with a uid, a title and a schema
    version; unique panel ids; panels on the 24-column grid without
    overlapping; every query panel reads the `datasource` variable and every
    target has an expression and a unique refId; the variables the queries
    use are defined;
  - every dashboard expression is valid PromQL: with Grafana's variables
    replaced by sample values they are loaded into `promtool check rules` as
    recording rules (Prometheus' own parser);
  - `promtool check rules alerts.yml`, `promtool test rules
    alerts_test.yml` and `promtool check config prometheus.yml` (the compose
    example's Prometheus);
  - the only metric that is not the sidecar's is Prometheus' own `up`, and
    only the labels the sidecar exports (pipeline, topic, partition, le)
    or Prometheus adds (job, instance) are used.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
DASHBOARD = os.path.join(HERE, "grafana-dashboard.json")
RULES = os.path.join(HERE, "alerts.yml")
RULES_TEST = os.path.join(HERE, "alerts_test.yml")
PROMETHEUS_CONFIG = os.path.join(HERE, "prometheus.yml")
PROMETHEUS_METRICS = {"up"}  # synthesised by Prometheus for every target
LABELS = {"pipeline", "topic", "partition", "le", "job", "instance"}
# Sample values for Grafana's variables, so that the expressions parse.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h",
                "$job": ".*", "$instance": ".*", "$pipeline": ".*"}

problems = []


def problem(where, msg):
    problems.append("%s: %s" % (os.path.relpath(where, os.getcwd()), msg))


def dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def dashboard_panels(d):
    for p in d.get("panels", []):
        yield p
        for sub in p.get("panels", []):
            yield sub


def dashboard_exprs(d):
    """(where, expr, is_grafana_function) for every query of the dashboard."""
    for p in dashboard_panels(d):
        for t in p.get("targets", []):
            yield "panel %r" % p.get("title"), t.get("expr", ""), False
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query", "") if isinstance(q, dict) else q or ""
            yield "variable %r" % v.get("name"), q, True


def rule_exprs():
    with open(RULES) as f:
        for g in yaml.safe_load(f)["groups"]:
            for r in g["rules"]:
                yield "alert %s" % r.get("alert", r.get("record")), r["expr"]


def test_series():
    with open(RULES_TEST) as f:
        for t in yaml.safe_load(f)["tests"]:
            for s in t.get("input_series", []):
                yield "test %r" % t.get("name"), s["series"]


def metric_names(expr):
    """Metric names in a PromQL expression (or a Grafana label_values() query)."""
    # Strings hold label values, not names.
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    names = set(re.findall(r"\b(sidecar_[a-zA-Z0-9_:]*)", bare))
    names |= {m for m in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", bare)}
    return names


def label_names(expr):
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    labels = set()
    for inner in re.findall(r"\{([^}]*)\}", bare):
        labels |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", inner))
    for inner in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", bare):
        labels |= {x.strip() for x in inner.split(",") if x.strip()}
    return labels


def used_names():
    d = dashboard()
    uses = [(DASHBOARD, w, e) for w, e, _ in dashboard_exprs(d)]
    uses += [(RULES, w, e) for w, e in rule_exprs()]
    uses += [(RULES_TEST, w, s) for w, s in test_series()]
    names = set()
    for path, where, expr in uses:
        for n in metric_names(expr):
            if n.startswith("sidecar_"):
                names.add(n)
            elif n not in PROMETHEUS_METRICS:
                problem(path, "%s uses %r, which is neither a sidecar metric nor Prometheus' own" % (where, n))
        if path != RULES_TEST:
            for lab in label_names(expr) - LABELS:
                problem(path, "%s uses the label %r, which no sidecar metric has" % (where, lab))
    return names


def check_dashboard():
    d = dashboard()
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if key not in d:
            problem(DASHBOARD, "no %r" % key)
    variables = {v.get("name") for v in d.get("templating", {}).get("list", [])}
    if "datasource" not in variables:
        problem(DASHBOARD, "no `datasource` variable (an import must be able to pick its Prometheus)")
    ids, cells = set(), {}
    for p in dashboard_panels(d):
        title = p.get("title")
        if p.get("id") in ids:
            problem(DASHBOARD, "panel %r: duplicate id %s" % (title, p.get("id")))
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")) or g["x"] + g["w"] > 24:
            problem(DASHBOARD, "panel %r: gridPos %s is not on the 24-column grid" % (title, g))
            continue
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    problem(DASHBOARD, "panel %r overlaps panel %r" % (title, cells[(x, y)]))
                    break
                cells[(x, y)] = title
            else:
                continue
            break
        if p.get("type") == "row":
            continue
        if not p.get("description"):
            problem(DASHBOARD, "panel %r: no description" % title)
        targets = p.get("targets", [])
        if not targets:
            problem(DASHBOARD, "panel %r: no query" % title)
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            problem(DASHBOARD, "panel %r: refIds %s are not unique" % (title, refs))
        for ds in [p.get("datasource")] + [t.get("datasource") for t in targets]:
            if ds != {"type": "prometheus", "uid": "${datasource}"}:
                problem(DASHBOARD, "panel %r: datasource %s is not the `datasource` variable" % (title, ds))
        for t in targets:
            if not t.get("expr"):
                problem(DASHBOARD, "panel %r: a target without an expression" % title)
    for where, expr, _ in dashboard_exprs(d):
        for var in re.findall(r"\$\{?(\w+)", expr):
            if var not in variables and not var.startswith("__"):
                problem(DASHBOARD, "%s: $%s is not a dashboard variable" % (where, var))


def promtool(*args):
    try:
        r = subprocess.run(["promtool"] + list(args), capture_output=True, text=True)
    except FileNotFoundError:
        problem(RULES, "promtool is missing (Debian package prometheus; run .ci/install-deps)")
        return None
    return r


def check_promql():
    d = dashboard()
    rules = []
    for where, expr, grafana_fn in dashboard_exprs(d):
        if grafana_fn:
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", expr.strip())
            if not m:
                problem(DASHBOARD, "%s: %r is not label_values(SELECTOR, LABEL)" % (where, expr))
                continue
            expr = m.group(1)
        for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
            expr = expr.replace(var, value)
        rules.append({"record": "dashboard:query:%d" % len(rules), "expr": expr, "labels": {"where": where}})
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    try:
        r = promtool("check", "rules", f.name)
        if r is not None and r.returncode != 0:
            problem(DASHBOARD, "an expression is not valid PromQL:\n" + r.stdout + r.stderr)
    finally:
        os.unlink(f.name)
    for args, path in ((("check", "rules", RULES), RULES), (("test", "rules", RULES_TEST), RULES_TEST),
                       (("check", "config", PROMETHEUS_CONFIG), PROMETHEUS_CONFIG)):
        r = promtool(*args)
        if r is not None and r.returncode != 0:
            problem(path, "promtool %s failed:\n%s%s" % (" ".join(args[:2]), r.stdout, r.stderr))
        elif r is not None:
            print("ok: promtool %s %s" % (" ".join(args[:2]), os.path.relpath(path)))


def main(argv):
    if argv[1:] == ["names"]:
        names = used_names()
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return 1
        print("\n".join(sorted(names)))
        return 0
    if argv[1:] != ["check"]:
        print(__doc__, file=sys.stderr)
        return 2
    names = used_names()
    check_dashboard()
    check_promql()
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    print("ok: the dashboard (%d panels) and the rules use %d sidecar metrics, all well-formed"
          % (sum(1 for p in dashboard_panels(dashboard()) if p.get("type") != "row"), len(names)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
