#!/usr/bin/env python3
"""Turns bench/scale.sh's measurements into target/bench/scale.md and an SVG plot.

Usage: scale.py SCALE.jsonl COMMIT SVG_PATH  (the markdown goes to stdout)

The plot is written by hand (no plotting library): three panels, sizes on a log
axis, one line per series.
"""

import json
import math
import os
import platform
import sys
from datetime import datetime, timezone

IDLE_TARGET_KIB = 12
WAITER_TARGET_KIB = 16
CPU_RATIO_TARGET = 2.5


def per_poll(line):
    r = line["result"]
    tick_us = 1e6 / line["clk_tck"]
    polls = max(r["polls"], 1)
    # PostgreSQL on polling's behalf: the instance less the producer's own
    # connections, whose writes cost the same with or without a service.
    pg_polling = r["postgres_ticks"] - r.get("postgres_producer_ticks", 0)
    return {"cpu": r["cpu_ticks"] * tick_us / polls, "pg": pg_polling * tick_us / polls,
            "pg_producer": r.get("postgres_producer_ticks", 0) * tick_us / polls,
            "rate": r["polls"] / r["seconds"], "p99_ms": r["p99_us"] / 1000,
            "rss_mib": (r["peak_rss_kib"] or 0) / 1024, "reads": r["database_reads"] / max(r["server_polls"], 1),
            "wrong": r["wrong"] + r["errors"]}


def verdict(ok):
    return "pass" if ok else "**FAIL**"


def main():
    path, commit, svg_path = sys.argv[1:4]
    lines = [json.loads(l) for l in open(path) if l.strip()]
    for l in lines:
        if l["result"] is None:
            print(f"**{l['sweep']} {l['store']} {l['size']:,} ({l['target']}): the step failed; "
                  "see make bench-scale's output.**\n")
    lines = [l for l in lines if l["result"] is not None]
    for l in lines:
        if l["sweep"] == "skipped":
            print(f"**{l['size']:,} connections: not run, {l['result']['reason']}.**\n")
    lines = [l for l in lines if l["sweep"] != "skipped"]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"Measured {now} on {platform.node() or 'this machine'}: {os.cpu_count()} cores ({model}), "
          f"commit `{commit}`. One run a size; each a fresh service process.\n")
    series = {}  # panel -> name -> [(size, value)]

    jobs = [l for l in lines if l["sweep"] == "jobs"]
    base = next((per_poll(l) for l in jobs if l["target"] == "baseline"), None)
    if jobs:
        print("## Jobs in the store (5,000 of them polled by 500 clients at Retry-After)\n")
        print("| store | jobs | polls/s | CPU µs/poll (× bare hyper) "
              "| PostgreSQL µs/poll on polling's behalf (the producer's own) | DB reads/poll "
              "| p99 | peak RSS | answers |")
        print("|---|---|---|---|---|---|---|---|---|")
        for l in jobs:
            if l["target"] != "service":
                continue
            f = per_poll(l)
            ratio = f"{f['cpu'] / base['cpu']:.2f}×" if base else "—"
            pg = f"{f['pg']:.1f} ({f['pg_producer']:.1f})" if l["store"] == "postgres" else "—"
            print(f"| {l['store']} | {l['size']:,} | {f['rate']:,.0f} | {f['cpu']:.1f} ({ratio}) | {pg} "
                  f"| {f['reads']:.2f} | {f['p99_ms']:.2f} ms | {f['rss_mib']:.0f} MiB "
                  f"| {'all correct' if not f['wrong'] else str(f['wrong']) + ' wrong'} |")
            series.setdefault("CPU µs per poll vs jobs in the store", {}).setdefault(
                f"service, {l['store']}", []).append((l["size"], f["cpu"]))
            if l["store"] == "postgres":
                series["CPU µs per poll vs jobs in the store"].setdefault("PostgreSQL, polling's share", []).append(
                    (l["size"], f["pg"]))
        if base:
            print(f"\nBare hyper under the same pattern: {base['cpu']:.1f} µs a poll.\n")

    tokens = [l for l in lines if l["sweep"] == "tokens"]
    if tokens:
        print("## Distinct tokens (one client and one job each, SQLite)\n")
        print("| tokens | polls/s | CPU µs/poll | bare hyper µs/poll | ratio | token cache misses | p99 "
              "| peak RSS | answers |")
        print("|---|---|---|---|---|---|---|---|---|")
        sizes = sorted({l["size"] for l in tokens})
        for size in sizes:
            s = next((l for l in tokens if l["size"] == size and l["target"] == "service"), None)
            b = next((l for l in tokens if l["size"] == size and l["target"] == "baseline"), None)
            if not s or not b:
                continue
            fs, fb = per_poll(s), per_poll(b)
            ratio = fs["cpu"] / fb["cpu"]
            print(f"| {size:,} | {fs['rate']:,.0f} | {fs['cpu']:.1f} | {fb['cpu']:.1f} | {ratio:.2f}× "
                  f"| {s['result']['token_cache_misses']:,.0f} | {fs['p99_ms']:.2f} ms | {fs['rss_mib']:.0f} MiB "
                  f"| {'all correct' if not fs['wrong'] else str(fs['wrong']) + ' wrong'} |")
            series.setdefault("CPU µs per poll vs distinct tokens", {}).setdefault("service", []).append(
                (size, fs["cpu"]))
            series["CPU µs per poll vs distinct tokens"].setdefault("bare hyper", []).append((size, fb["cpu"]))
        print()

    idle = {l["size"]: l["result"] for l in lines if l["sweep"] == "idle"}
    waiters = {l["size"]: l["result"] for l in lines if l["sweep"] == "waiters"}
    if idle or waiters:
        print("## Connections (SQLite; RSS deltas from the fresh process)\n")
        print(f"| connections | idle: RSS | KiB each (≤ {IDLE_TARGET_KIB}) | waiters: RSS "
              f"| KiB each, connection included (≤ {WAITER_TARGET_KIB}) | of which the request "
              "| setup CPU µs each | wake p50 / p99 | errors |")
        print("|---|---|---|---|---|---|---|---|---|")
        tick_us = 1e6 / (lines[0]["clk_tck"] if lines else 100)
        for size in sorted(set(idle) | set(waiters)):
            i, w = idle.get(size), waiters.get(size)
            row = [f"{size:,}"]
            row += ([f"{i['rss_kib'] / 1024:.0f} MiB", f"{i['kib_each']:.1f}: {verdict(i['kib_each'] <= IDLE_TARGET_KIB)}"]
                    if i else ["—", "—"])
            if w:
                row += [f"{w['rss_kib'] / 1024:.0f} MiB",
                        f"{w['kib_each']:.1f}: {verdict(w['kib_each'] <= WAITER_TARGET_KIB)}",
                        f"{w['request_kib_each']:.1f}",
                        f"{w['setup_cpu_ticks'] * tick_us / max(w['waiters'], 1):.1f}",
                        f"{w['wake_p50_us'] / 1000:.1f} / {w['wake_p99_us'] / 1000:.1f} ms", f"{w['errors']}"]
            else:
                row += ["—"] * 6
            print("| " + " | ".join(row) + " |")
            panel = series.setdefault("KiB of RSS per connection", {})
            if i:
                panel.setdefault("idle keep-alive", []).append((size, i["kib_each"]))
            if w:
                panel.setdefault("long-poll waiter", []).append((size, w["kib_each"]))
        print()
    with open(svg_path, "w") as out:
        out.write(svg(series, commit))
    print(f"Plot: {os.path.relpath(svg_path)}.")


COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def svg(panels, commit):
    """Panels side by side, log x, linear y from 0."""
    width, height, pad = 360, 260, 48
    parts = []
    for n, (title, lines) in enumerate(panels.items()):
        x0 = n * width
        xs = [x for points in lines.values() for x, _ in points]
        ys = [y for points in lines.values() for _, y in points]
        if not xs:
            continue
        lo, hi = math.log10(min(xs)), math.log10(max(xs))
        hi = hi if hi > lo else lo + 1
        top = max(ys) * 1.15 or 1

        def px(x):
            return x0 + pad + (math.log10(x) - lo) / (hi - lo) * (width - 2 * pad)

        def py(y):
            return height - pad - y / top * (height - 2 * pad)

        parts.append(f'<text x="{x0 + width / 2}" y="18" text-anchor="middle" font-size="13">{title}</text>')
        parts.append(f'<line x1="{x0 + pad}" y1="{height - pad}" x2="{x0 + width - pad}" y2="{height - pad}" stroke="#000"/>')
        parts.append(f'<line x1="{x0 + pad}" y1="{pad}" x2="{x0 + pad}" y2="{height - pad}" stroke="#000"/>')
        for x in sorted(set(xs)):
            parts.append(f'<text x="{px(x):.1f}" y="{height - pad + 16}" text-anchor="middle" font-size="10">{x:,}</text>')
        for k in range(5):
            y = top * k / 4
            parts.append(f'<text x="{x0 + pad - 4}" y="{py(y) + 3:.1f}" text-anchor="end" font-size="10">{y:.3g}</text>')
        for c, (name, points) in enumerate(lines.items()):
            colour = COLOURS[c % len(COLOURS)]
            coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(points))
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
            for x, y in points:
                parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
            parts.append(f'<text x="{x0 + pad + 6}" y="{pad + 4 + 13 * c}" font-size="10" fill="{colour}">{name}</text>')
    total = width * max(len(panels), 1)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="{height + 16}" '
            f'font-family="sans-serif">\n<rect width="100%" height="100%" fill="#fff"/>\n'
            + "\n".join(parts)
            + f'\n<text x="4" y="{height + 10}" font-size="9" fill="#666">make bench-scale, commit {commit}</text>\n</svg>\n')


if __name__ == "__main__":
    main()
