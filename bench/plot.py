#!/usr/bin/python3
"""plot.py - SVG charts of a benchmark result, for people to compare at a glance.

bench.py calls it after every run; it can also redraw from a result file:

    python3 bench/plot.py bench/results/20261204-153000.json [OUT_DIR]
    python3 bench/plot.py bench/results/scale-20261204-160000.json [OUT_DIR]

It writes into OUT_DIR (default bench/results/):

    ratios.svg    the run's paired ratios against their targets (bars, one per ratio)
    latency.svg   end-to-end latency percentiles of kcat and the sidecar, every run
    scale.svg     the scale curve: records/s, CPU per record, peak RSS and PostgreSQL
                  statements/s over the number of partitions (pipelines and instances
                  as separate series)

Plain SVG written by hand (no plotting library): a few dozen lines per chart, no
package to install, and the files diff well in git.
"""
import json
import math
import os
import sys

W, H = 760, 420
FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"'
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"]


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Svg:
    def __init__(self, w=W, h=H):
        self.w, self.h, self.parts = w, h, []

    def add(self, s):
        self.parts.append(s)

    def text(self, x, y, s, size=12, anchor="start", color="#222", bold=False, rotate=None):
        rot = ' transform="rotate(%d %.1f %.1f)"' % (rotate, x, y) if rotate else ""
        self.add('<text x="%.1f" y="%.1f" font-size="%d" text-anchor="%s" fill="%s"%s %s%s>'
                 '%s</text>' % (x, y, size, anchor, color, ' font-weight="bold"' if bold else "",
                                FONT, rot, esc(s)))

    def line(self, x1, y1, x2, y2, color="#888", width=1, dash=None):
        d = ' stroke-dasharray="%s"' % dash if dash else ""
        self.add('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="%s"%s/>'
                 % (x1, y1, x2, y2, color, width, d))

    def rect(self, x, y, w, h, color, opacity=1.0):
        self.add('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" '
                 'fill-opacity="%.2f"/>' % (x, y, max(w, 0), max(h, 0), color, opacity))

    def polyline(self, pts, color, width=2, marker=True):
        if not pts:
            return
        self.add('<polyline fill="none" stroke="%s" stroke-width="%s" points="%s"/>' % (
            color, width, " ".join("%.1f,%.1f" % p for p in pts)))
        if marker:
            for x, y in pts:
                self.add('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (x, y, color))

    def save(self, path):
        with open(path, "w") as f:
            f.write('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
                    'viewBox="0 0 %d %d">\n<rect width="100%%" height="100%%" fill="white"/>\n'
                    % (self.w, self.h, self.w, self.h))
            f.write("\n".join(self.parts))
            f.write("\n</svg>\n")


def nice_ticks(lo, hi, n=5):
    if hi <= lo:
        hi = lo + 1
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    t = math.floor(lo / step) * step
    out = []
    while t <= hi + step * 1e-9:
        out.append(round(t, 10))
        t += step
    return out


def fmt(v):
    if v == 0:
        return "0"
    if abs(v) >= 1e6:
        return "%gM" % round(v / 1e6, 2)
    if abs(v) >= 1e3:
        return "%gk" % round(v / 1e3, 2)
    return "%g" % round(v, 3)


class Axes:
    """A plot area inside svg at (x, y, w, h) with linear or log scales."""

    def __init__(self, svg, x, y, w, h, xr, yr, xlog=False, ylog=False):
        self.s, self.x, self.y, self.w, self.h = svg, x, y, w, h
        self.xr, self.yr, self.xlog, self.ylog = xr, yr, xlog, ylog

    def _t(self, v, r, log):
        lo, hi = r
        if log:
            v, lo, hi = math.log10(max(v, 1e-12)), math.log10(lo), math.log10(hi)
        return (v - lo) / ((hi - lo) or 1)

    def px(self, v):
        return self.x + self._t(v, self.xr, self.xlog) * self.w

    def py(self, v):
        return self.y + self.h - self._t(v, self.yr, self.ylog) * self.h

    def frame(self, title, xlabel, ylabel, xticks=None, yticks=None):
        s = self.s
        s.text(self.x + self.w / 2, self.y - 10, title, 13, "middle", bold=True)
        s.line(self.x, self.y + self.h, self.x + self.w, self.y + self.h, "#444")
        s.line(self.x, self.y, self.x, self.y + self.h, "#444")
        for t in yticks or nice_ticks(*self.yr):
            if self.yr[0] <= t <= self.yr[1]:
                y = self.py(t)
                s.line(self.x, y, self.x + self.w, y, "#e4e4e4")
                s.text(self.x - 5, y + 4, fmt(t), 10, "end")
        for t in xticks or nice_ticks(*self.xr):
            if self.xr[0] <= t <= self.xr[1]:
                x = self.px(t)
                s.line(x, self.y + self.h, x, self.y + self.h + 4, "#444")
                s.text(x, self.y + self.h + 16, fmt(t), 10, "middle")
        s.text(self.x + self.w / 2, self.y + self.h + 32, xlabel, 11, "middle")
        s.text(self.x - 42, self.y + self.h / 2, ylabel, 11, "middle", rotate=-90)


def legend(svg, x, y, names):
    for i, n in enumerate(names):
        c = COLORS[i % len(COLORS)]
        svg.rect(x, y + i * 16 - 9, 10, 10, c)
        svg.text(x + 15, y + i * 16, n, 11)


# ---- charts ------------------------------------------------------------------------------


def machine_note(meta):
    """One line on the machine's costs (bench-machine-probe), which targets 1 and 4 move with;
    empty for results written before the probe."""
    m = meta.get("machine")
    if not m:
        return ""
    return "this machine: a page fault %.1f µs, a 4 KiB fdatasync %.2f ms" % (
        m["page_fault_us"], m["fdatasync_ms_p50"])


def ratios_chart(res, path):
    """One bar per paired ratio that has a goal, with the goal as a dashed line."""
    rows = [t for t in res.get("targets", []) if t.get("value") is not None and
            t.get("goal", "")[:2] in (">=", "<=") and "MiB" not in t["target"] and
            "per batch" not in t["target"]]
    rss = [t for t in res.get("targets", []) if "MiB" in t["target"]]
    if not rows and not rss:
        return False
    meta = res.get("meta", {})
    note = machine_note(meta)
    note_h = 14 if note else 0  # the note's line, between the title and the bars
    svg = Svg(W, 90 + note_h + 34 * (len(rows) + len(rss)))
    pg = meta.get("postgresql_settings", {})
    svg.text(W / 2, 22, "Targets (%s, PostgreSQL %s%s; median of paired runs)" % (
        meta.get("date", "")[:10], pg.get("config", "tuned"),
        ", %s ms each way" % pg["client_delay_ms_each_way"]
        if pg.get("client_delay_ms_each_way") else ""), 13, "middle", bold=True)
    if note:
        svg.text(W / 2, 40, note, 11, "middle", color="#555")
    top, left, width = 45 + note_h, 330, 380
    goals = [float(t["goal"][2:]) for t in rows] + [1]
    # The axis reaches 2.5 x the largest goal; longer bars are cut (the label says the value).
    vmax = min(max([t["value"] for t in rows] + goals) * 1.1, max(goals) * 2.5)
    width -= 120
    ax = Axes(svg, left, top, width, 34 * len(rows), (0, vmax), (0, 1))
    for i, t in enumerate(rows):
        y = top + i * 34
        goal = float(t["goal"][2:].strip())
        color = "#2ca02c" if t["met"] else "#d62728"
        end = min(ax.px(t["value"]), left + width)
        svg.rect(left, y + 6, end - left, 18, color, 0.8)
        svg.line(ax.px(goal), y + 2, ax.px(goal), y + 28, "#222", 2, "4,3")
        svg.text(left - 8, y + 19, t["target"][:52], 11, "end")
        svg.text(end + 4, y + 19, "%s (goal %s)" % (t["value"], t["goal"]), 11)
    y = top + 34 * len(rows)
    for t in rss:
        limit = float(t["goal"][2:].strip())
        scale = width / max(limit * 1.6, t["value"] * 1.1)
        color = "#2ca02c" if t["met"] else "#d62728"
        svg.rect(left, y + 6, t["value"] * scale, 18, color, 0.8)
        svg.line(left + limit * scale, y + 2, left + limit * scale, y + 28, "#222", 2, "4,3")
        svg.text(left - 8, y + 19, t["target"][:52], 11, "end")
        svg.text(left + t["value"] * scale + 4, y + 19, "%s MiB (limit %d)" % (t["value"], limit),
                 11)
        y += 34
    svg.text(left, y + 24, "bars: measured (green met, red not); dashed: the goal", 10,
             color="#555")
    svg.save(path)
    return True


def latency_chart(res, path):
    lat = res.get("latency")
    if not lat or not lat.get("runs"):
        return False
    svg = Svg()
    runs = lat["runs"]
    series = []
    for i, r in enumerate(runs):
        for name in ("kcat", "sidecar_file"):
            q = r.get(name, {}).get("quantiles")
            if q:
                series.append(("%s, run %d" % (name.replace("_file", ""), i + 1), q))
    if not series:
        return False
    ymax = max(max(q) for _, q in series) * 1.05
    ax = Axes(svg, 70, 45, 500, 320, (0, 100), (0, ymax))
    ax.frame("End-to-end latency at %d records/s, max_wait_ms %d" % (lat["rate"],
                                                                     lat["max_wait_ms"]),
             "percentile of records", "latency (ms)", xticks=[0, 25, 50, 75, 90, 99])
    names = []
    for i, (name, q) in enumerate(series):
        pct = [i + 1 for i in range(len(q) - 1)] + [99.9]
        color = COLORS[(0 if name.startswith("kcat") else 1) + 2 * (i // 2) % len(COLORS)]
        dash = "5,3" if name.startswith("kcat") else None
        pts = [(ax.px(p), ax.py(v)) for p, v in zip(pct, q)]
        svg.add('<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>' % (
            color, ' stroke-dasharray="%s"' % dash if dash else "",
            " ".join("%.1f,%.1f" % p for p in pts)))
        names.append((name, color, dash))
    for i, (n, c, dash) in enumerate(names):
        svg.line(590, 60 + i * 16 - 4, 610, 60 + i * 16 - 4, c, 2, dash)
        svg.text(615, 60 + i * 16, n, 11)
    note = machine_note(res.get("meta", {}))
    if note:
        svg.text(70, H - 8, note, 11, color="#555")
    svg.save(path)
    return True


def scale_chart(res, path):
    pts = [p for p in res.get("points", []) if "error" not in p]
    if not pts:
        return False
    panels = [("records/s", "records_per_s", False), ("CPU µs per record", "cpu_us_per_record",
                                                     False),
              ("peak RSS (MiB)", "peak_rss_mib", False),
              ("PostgreSQL statements/s", "pg_statements_per_s", False)]
    svg = Svg(W, 2 * 260 + 70)
    meta = res.get("meta", {})
    svg.text(W / 2, 20, "Scale curve (%s sink, %s records, %s)" % (
        meta.get("sink", "file"), fmt(meta.get("records", 0)), meta.get("date", "")[:10]), 13,
        "middle", bold=True)
    groups = {}
    for p in pts:
        key = "%d pipeline%s, %d instance%s" % (p["pipelines"], "s" if p["pipelines"] > 1 else "",
                                                p["instances"], "s" if p["instances"] > 1 else "")
        groups.setdefault(key, []).append(p)
    xs = sorted({p["partitions"] for p in pts})
    xr = (min(xs) / 1.5, max(xs) * 1.5)
    for k, (title, key, _) in enumerate(panels):
        vals = [p.get(key) for p in pts if p.get(key) is not None]
        if not vals:
            continue
        x0 = 80 + (k % 2) * 360
        y0 = 55 + (k // 2) * 260
        ax = Axes(svg, x0, y0, 260, 180, xr, (0, max(vals) * 1.15), xlog=True)
        ax.frame(title, "partitions", "", xticks=xs)
        for i, (g, gp) in enumerate(sorted(groups.items())):
            gp = sorted((p for p in gp if p.get(key) is not None), key=lambda p: p["partitions"])
            svg.polyline([(ax.px(p["partitions"]), ax.py(p[key])) for p in gp],
                         COLORS[i % len(COLORS)], 2, True)
    legend(svg, 80, 2 * 260 + 45, [])
    for i, g in enumerate(sorted(groups)):
        c = COLORS[i % len(COLORS)]
        x = 80 + (i % 3) * 230
        y = 2 * 260 + 40 + (i // 3) * 16
        svg.rect(x, y - 9, 10, 10, c)
        svg.text(x + 15, y, g, 11)
    svg.save(path)
    return True


def write_plots(res, out_dir):
    """Draws what res holds; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    done = []
    for name, fn in (("ratios.svg", ratios_chart), ("latency.svg", latency_chart),
                     ("scale.svg", scale_chart)):
        path = os.path.join(out_dir, name)
        if fn(res, path):
            done.append(path)
    return done


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        res = json.load(f)
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results")
    for p in write_plots(res, out):
        print(p)


if __name__ == "__main__":
    main()
