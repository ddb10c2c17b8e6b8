#!/usr/bin/env python3
"""Fails when a module of impl/src uses one above it: the layers point one way.

The modules, lowest first. Each may use the modules before it and none after
(so there is no cycle either). A file belongs to the top-level module whose file
or folder it is in; `lib.rs` and `main.rs` are above everything.
"""

import re
import sys
from pathlib import Path

LAYERS = [
    # Leaves: no module of the crate below them.
    "chain",
    "logging",
    "responses",
    "bounded",
    "tls",
    "metrics",
    # Configuration, then the domain and what stores it.
    "config",
    "jobs",
    "store",
    # Who calls, and what a poll answers.
    "auth",
    "polling",
    # The edges: HTTP, the operators' listener, the crate root and the binary.
    "http",
    "admin",
    "lib",
    "main",
]

SRC = Path(__file__).resolve().parents[1] / "impl" / "src"
# `crate::x`, `super::super::x` is rare enough to be refused outright.
USE = re.compile(r"\bcrate::(\w+)")
UP = re.compile(r"\bsuper::super\b")


def module_of(path):
    relative = path.relative_to(SRC)
    return relative.parts[0].removesuffix(".rs")


def main():
    rank = {name: i for i, name in enumerate(LAYERS)}
    problems = []
    for path in sorted(SRC.rglob("*.rs")):
        own = module_of(path)
        if own not in rank:
            problems.append(f"{path.relative_to(SRC)}: module {own} is not in scripts/check-layers.py")
            continue
        text = path.read_text()
        # Doc comments may name anything; only code counts.
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
        if UP.search(code):
            problems.append(f"{path.relative_to(SRC)}: super::super reaches out of its module")
        for used in sorted(set(USE.findall(code))):
            if used == own or used not in rank:
                continue
            if rank[used] > rank[own]:
                problems.append(f"{path.relative_to(SRC)}: {own} uses {used}, which is above it")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        sys.exit(f"{len(problems)} uses against the layers (lowest first: {', '.join(LAYERS)})")
    print(f"the layers point one way: {' < '.join(LAYERS)}")


if __name__ == "__main__":
    main()
