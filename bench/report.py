#!/usr/bin/env python3
"""Turns bench/run.sh's measurements into the markdown table of make bench.

Usage: report.py RESULTS.jsonl COMMIT SECONDS ROUNDS

For R and A-D each round is one wrk run; a figure is the median over the rounds, and
each ratio compares the service with the baseline measured alternately with it.

G-J present a token the service has never seen on every request. A service round
in which any token was presented twice (the Lua script handed one out again, or
the service's token cache answered one) measured the cache, not verification: the
scenario is then reported as invalid ("tokens reused"), without figures.
"""

import json
import os
import platform
import statistics
import sys
from datetime import datetime, timezone

NAMES = {
    "R": "R. The generated router alone: constant answer, no auth, no store",
    "A": "A. SQLite, one PENDING job, one token",
    "AL": "AL. As A, with the defaults: the access log on (a JSON line per request)",
    "B": "B. As A, 1,000 rotating tokens",
    "C": "C. PostgreSQL, as A",
    "C0": "C0. As C, read cache off: every poll is a query",
    "D": "D. 10,000 jobs, all statuses, 5% 404, 1% 401",
    "G": "G. As A, a new valid RS256 token per request (kid test-rsa)",
    "H": "H. As A, a new valid EdDSA token per request (kid test-ed)",
    "I": "I. As A, a new RS256 token per request with a wrong signature (full RSA verification, 401)",
    "J": "J. As A, a new garbage token per request (JWT-shaped, does not decode, 401)",
}
# The cold authentication paths: each expects one status, and no token twice.
COLD = {"G": "200", "H": "200", "I": "401", "J": "401"}
TARGETS = {
    "R": "none: the floor under A (the issue cites about 1.6×)",
    "A": "CPU ≤ 2.0×, req/s ≥ 0.50×, p99 ≤ 2× baseline p99, no errors",
    "AL": "as A; the line ≤ 0.25× of bare hyper's request",
    "B": "CPU ≤ 4×",
    "C": "CPU ≤ 2.5×, req/s ≥ 0.35×",
    "C0": "none: shows what the cache spares",
    "D": "CPU ≤ 2.5×, every answer correct",
    "G": "CPU ≤ 4×",
    "H": "CPU ≤ 4×",
    "I": "CPU ≤ 4×",
    "J": "CPU ≤ 2×",
    "E": "≤ 150 MiB",
    "F": "RSS ≤ 256 MiB; wake p50/p99 ≤ 10 ms in-process, ≤ 50 ms NOTIFY, ≤ 250 ms SQLite",
    "L": "CPU ≤ 2.5× per poll; every answer correct",
    "LP": "CPU ≤ 2.5× per poll; PostgreSQL ≤ 5 µs per poll; every answer correct",
    "S": "other client faster in ~50% of pairs, median difference ~0",
}
# How many CPU µs per poll each target allows: the service against bare hyper,
# PostgreSQL (all processes of the private instance) absolute.
LOAD_CPU_RATIO = 2.5
LOAD_POSTGRES_US = 5.0


def figures(rounds):
    """Medians over rounds: req/s, CPU µs per request, p50 and p99 (µs)."""
    def per_round(r):
        w = r["wrk"]
        seconds = w["duration_us"] / 1e6
        cpu_us = r["cpu_ticks"] / r["clk_tck"] * 1e6
        return {
            "rps": w["requests"] / seconds,
            "cpu": cpu_us / max(w["requests"], 1),
            "pg_cpu": r["postgres_ticks"] / r["clk_tck"] * 1e6 / max(w["requests"], 1),
            "p50": w["p50_us"],
            "p99": w["p99_us"],
        }
    each = [per_round(r) for r in rounds]
    return {key: statistics.median(e[key] for e in each) for key in each[0]}


def statuses(rounds):
    total = {}
    errors = mismatches = 0
    for r in rounds:
        for status, count in r["wrk"]["statuses"].items():
            total[status] = total.get(status, 0) + count
        errors += r["wrk"]["socket_errors"]
        mismatches += r["wrk"]["mismatches"]
    text = ", ".join(f"{count} × {status}" for status, count in sorted(total.items()))
    if errors:
        text += f", {errors} socket errors"
    return text, mismatches


def reuse(rounds):
    """Why service rounds of G-J are invalid, or None: tokens handed out again by
    the Lua script, tokens the service answered from its cache."""
    handed = sum(r["wrk"].get("reused", 0) for r in rounds)
    hits = sum(r.get("token_cache_hits", 0) for r in rounds)
    bad = sum(1 for r in rounds if r["wrk"].get("reused", 0) or r.get("token_cache_hits", 0))
    if not bad:
        return None
    return (f"invalid: tokens reused in {bad} of {len(rounds)} rounds ({handed:,} handed out again, "
            f"{hits:,} answered from the token cache; raise BENCH_COLD_RATE or BENCH_COLD_GARBAGE_RATE)")


def ms(us):
    return f"{us / 1000:.2f} ms"


def main():
    path, commit, seconds, rounds = sys.argv[1:5]
    lines = [json.loads(line) for line in open(path) if line.strip()]
    cpus = os.cpu_count()
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"Measured {now} on {platform.node() or 'this machine'}: {cpus} cores ({model}), "
          f"Linux {platform.release()}, commit `{commit}`. wrk: 1 thread, 64 connections, "
          f"{rounds} alternating rounds of {seconds} s after a warm-up; medians.\n")
    print("| scenario | req/s (× baseline) | CPU µs/request (× baseline) | p50 | p99 (× baseline) | answers | peak RSS | target |")
    print("|---|---|---|---|---|---|---|---|")
    for scenario in ["R", "A", "AL", "B", "C", "C0", "D", "G", "H", "I", "J"]:
        service = [l for l in lines if l.get("scenario") == scenario and l.get("target") == "service"]
        baseline = [l for l in lines if l.get("scenario") == scenario and l.get("target") == "baseline"]
        if not service:
            continue
        s, b = figures(service), figures(baseline)
        answers, mismatches = statuses(service)
        if scenario == "D":
            answers += f"; {mismatches} not as expected"
        invalid = None
        if scenario in COLD:
            answers += f"; {mismatches} not as expected ({COLD[scenario]})"
            invalid = reuse(service)
            tokens = service[0].get("tokens", 0)
            answers += f"; {tokens:,} new tokens a round, " + ("some reused" if invalid else "none reused")
            warm = sum(l.get("warmup_reused", 0) for l in service)
            if warm:
                answers += f" (the warm-ups reused {warm:,}, not measured)"
        cpu = f"{s['cpu']:.1f} ({s['cpu'] / b['cpu']:.2f}×)"
        if scenario.startswith("C"):
            cpu += f"; PostgreSQL: {s['pg_cpu']:.1f}"
        rps = f"{s['rps']:,.0f} ({s['rps'] / b['rps']:.2f}×)"
        p50, p99 = ms(s["p50"]), f"{ms(s['p99'])} ({s['p99'] / b['p99']:.2f}×)"
        if invalid:
            rps, cpu, p50, p99 = f"**{invalid}**", "—", "—", "—"
        rss = max(l["peak_rss_kib"] for l in service) / 1024
        print(f"| {NAMES[scenario]} | {rps} | {cpu} | {p50} "
              f"| {p99} | {answers} | {rss:.0f} MiB | {TARGETS[scenario]} |")
        print(f"| baseline (bare hyper) | {b['rps']:,.0f} | {b['cpu']:.1f} | {ms(b['p50'])} | {ms(b['p99'])} "
              f"| {statuses(baseline)[0]} | {max(l['peak_rss_kib'] for l in baseline) / 1024:.0f} MiB | |")
    access_line(lines)
    for line in lines:
        if line.get("scenario") == "E":
            print(f"| E. {line['connections']:,} idle keep-alive connections | | | | | | "
                  f"{line['rss_kib'] / 1024:.0f} MiB (before: {line['rss_before_kib'] / 1024:.0f} MiB; "
                  f"baseline with the same connections: {line['baseline_rss_kib'] / 1024:.0f} MiB) | {TARGETS['E']} |")
    for line in lines:
        if line.get("scenario") == "F":
            fields = dict(item.split("=") for item in line["result"].split())
            rss = f"{int(fields['rss_kib']) / 1024:.0f} MiB" if "another" in line["case"] else "(with its clients)"
            print(f"| F. {fields['waiters']} waiters on 1,000 jobs; {line['case']} | | | "
                  f"wake p50 {fields['wake_p50_ms']} ms | wake p99 {fields['wake_p99_ms']} ms "
                  f"| {fields['errors']} errors | {rss} | {TARGETS['F']} |")
    verification(lines)
    load(lines)
    side_channel(lines)


def per_poll(line):
    """A load round's figures per poll answered in its window."""
    r = line["result"]
    polls = max(r["polls"], 1)
    tick_us = 1e6 / line["clk_tck"]
    return {
        "rate": r["polls"] / r["seconds"],
        "cpu": r["cpu_ticks"] * tick_us / polls,
        "pg": r["postgres_ticks"] * tick_us / polls,
        "pg_producer": r["postgres_producer_ticks"] * tick_us / polls,
        # Builds before the split counted the service's connections with the background.
        "pg_service": r.get("postgres_service_ticks", r["postgres_ticks"] - r["postgres_producer_ticks"]) * tick_us / polls,
        "reads": r["database_reads"] / max(r["server_polls"], 1),
    }


def load(lines):
    """L and LP: the realistic load, against bare hyper under the same pattern."""
    rows = []
    for scenario, store in [("L", "SQLite"), ("LP", "PostgreSQL (private instance)")]:
        service = [l for l in lines if l.get("scenario") == scenario and l.get("target") == "service"]
        baseline = [l for l in lines if l.get("scenario") == scenario and l.get("target") == "baseline"]
        if not service:
            continue
        broken = [l for l in service if l["result"] is None]
        if broken:
            rows.append(f"| {scenario}. {store} | **the load generator failed (exit {broken[0]['exit']})** "
                        "| | | | | | | | FAIL |")
            continue
        s = {k: statistics.median(per_poll(l)[k] for l in service) for k in per_poll(service[0])}
        b = {k: statistics.median(per_poll(l)[k] for l in baseline) for k in ("rate", "cpu")}
        r = service[-1]["result"]
        ratio = s["cpu"] / b["cpu"]
        wrong = sum(l["result"]["wrong"] + l["result"]["errors"] for l in service)
        checks = [f"CPU {ratio:.2f}× ≤ {LOAD_CPU_RATIO}×: " + ("pass" if ratio <= LOAD_CPU_RATIO else "**FAIL**")]
        pg = "—"
        if scenario == "LP":
            # The producer's own connections do the writes, which cost the same
            # with or without a service polling; what polling costs PostgreSQL is
            # the rest: the service's connections, and the background processes
            # (WAL writer, checkpointer, autovacuum), counted against it in full.
            polling = s["pg"] - s["pg_producer"]
            pg = (f"{polling:.1f}: the service's connections {s['pg_service']:.1f}, the background "
                  f"{polling - s['pg_service']:.1f} (and the producer's own {s['pg_producer']:.1f})")
            checks.append(f"PostgreSQL {polling:.1f} µs ≤ {LOAD_POSTGRES_US:g} µs: "
                          + ("pass" if polling <= LOAD_POSTGRES_US else "**FAIL**"))
        checks.append("answers: " + ("all correct" if not wrong else f"**{wrong} wrong: FAIL**"))
        kinds = {}
        for l in service:
            for kind, count in l["result"]["wrong_kinds"].items():
                kinds[kind] = kinds.get(kind, 0) + count
        statuses = ", ".join(f"{c:,} × {k}" for k, c in sorted(r["statuses"].items()))
        if kinds:
            statuses += "; wrong: " + ", ".join(f"{c} × {k}" for k, c in kinds.items())
        # The service's own count of cache hits where it has one, as a share of
        # all reads (hits and database reads: a long poll reads again on each
        # wake-up); else what the database reads per poll imply.
        hits = [l["result"].get("cache_hits") for l in service]
        if all(h is not None for h in hits):
            hit = statistics.median(h / max(h + l["result"]["database_reads"], 1) for h, l in zip(hits, service))
        else:
            hit = max(0.0, 1 - s["reads"])
        rows.append(
            f"| {scenario}. {store}: {r['clients']:,} clients, {r['jobs']:,} jobs, {r['long_polls']:,} long polls "
            f"answered | {s['rate']:,.0f} ({b['rate']:,.0f}) | {s['cpu']:.1f} ({ratio:.2f}× bare hyper's {b['cpu']:.1f}) "
            f"| {pg} | {s['reads']:.2f} reads a poll (hit rate {hit:.0%}) "
            f"| {r['wake_p50_us'] / 1000:.1f} / {r['wake_p99_us'] / 1000:.1f} ms ({r['wakes']:,}) "
            f"| {r['p50_us'] / 1000:.2f} / {r['p99_us'] / 1000:.2f} ms | {statuses} "
            f"| {r['peak_rss_kib'] / 1024:.0f} MiB | {'; '.join(checks)} |")
    if not rows:
        return
    print("\n| realistic load (bench-tool load) | polls/s (bare hyper) | service CPU µs/poll "
          "| PostgreSQL CPU µs/poll | read cache | long-poll wake p50 / p99 (n) | short poll p50 / p99 "
          "| answers | peak RSS | targets |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def access_line(lines):
    """What one access line costs: AL's CPU per request less A's, each as a
    multiple of its own baseline, so that the two runs' noise does not add up."""
    def ratio(scenario):
        service = [l for l in lines if l.get("scenario") == scenario and l.get("target") == "service"]
        baseline = [l for l in lines if l.get("scenario") == scenario and l.get("target") == "baseline"]
        if not service or not baseline:
            return None, None
        return figures(service)["cpu"] / figures(baseline)["cpu"], figures(baseline)["cpu"]
    (a, _), (al, base) = ratio("A"), ratio("AL")
    if a is None or al is None:
        return
    cost = al - a
    print(f"| the access line alone (AL less A) | | {cost * base:.1f} ({cost:.2f}×) | | | | | ≤ 0.25× |")


def side_channel(lines):
    """S: another client's job against an unknown id, both 404, in pairs."""
    for line in lines:
        if line.get("scenario") != "S":
            continue
        r = line["result"]
        if r is None:
            print(f"\n**S. the probe failed (exit {line['exit']})**")
            continue
        share = r["other_faster"] / r["pairs"]
        print(f"\n| S. 404 for another client's cached job vs. an unknown id | pairs | other faster "
              f"| median difference (p25, p75) | medians (other, unknown) | target |")
        print("|---|---|---|---|---|---|")
        print(f"| SQLite, the owner polling every 100 ms | {r['pairs']:,} | {r['other_faster']:,} ({share:.0%}) "
              f"| {r['median_difference_us']:+.1f} µs ({r['p25_difference_us']:+.1f}, {r['p75_difference_us']:+.1f}) "
              f"| {r['other_median_us']:.1f} / {r['unknown_median_us']:.1f} µs | {TARGETS['S']} |")


def verification(lines):
    """Scenario V: one verification on one core, against bare hyper's request."""
    v = next((l["result"] for l in lines if l.get("scenario") == "V"), None)
    if v is None:
        return
    base = statistics.median(figures([l])["cpu"] for l in lines if l.get("target") == "baseline" and "wrk" in l)
    print("\n| V. one verification, one core, no network | RS256 | EdDSA |")
    print("|---|---|---|")
    for what, key in [("the signature check alone (aws-lc-rs)", "signature_us"),
                      ("the whole verifier, caches off", "verifier_us")]:
        rs, ed = v[f"RS256_{key}"], v[f"EdDSA_{key}"]
        print(f"| {what} | {rs:.1f} µs ({rs / base:.2f}× bare hyper's request) "
              f"| {ed:.1f} µs ({ed / base:.2f}×) |")


if __name__ == "__main__":
    main()
