#!/usr/bin/env python3
"""Fails when the workspace's `rust-version` is not what its dependency graph needs.

The graph is what `cargo build` and `cargo test` of the workspace's members build
for this machine's target: every member's normal, build and dev dependencies, and
the normal and build dependencies of everything they pull in. The Rust it needs is
the highest `rust-version` any of those packages declares (edition 2024 itself
needs 1.85).

Declared lower than that, the MSRV is a promise the build breaks. Declared higher,
cargo's MSRV-aware resolver holds dependencies back for nothing. Either way, the
fix is to declare what the graph needs (and run `cargo update`).
"""

import json
import subprocess
import sys

EDITION_2024 = (1, 85)


def version(text):
    return tuple(int(part) for part in text.split(".")[:2])


def main():
    host = subprocess.run(
        ["rustc", "--print", "host-tuple"], check=True, capture_output=True, text=True
    ).stdout.strip()
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", host],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    packages = {package["id"]: package for package in metadata["packages"]}
    nodes = {node["id"]: node for node in metadata["resolve"]["nodes"]}
    members = set(metadata["workspace_members"])

    declared = {packages[member]["rust_version"] for member in members}
    if len(declared) != 1 or None in declared:
        sys.exit(f"every member must take rust-version from the workspace; found {declared}")
    declared = declared.pop()

    seen, todo = set(), list(members)
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for dep in nodes[current]["deps"]:
            kinds = {kind["kind"] for kind in dep["dep_kinds"]}
            if current in members or kinds & {None, "build"}:
                todo.append(dep["pkg"])

    needed, by = EDITION_2024, "edition 2024"
    for package_id in sorted(seen - members):
        package = packages[package_id]
        if package["rust_version"] and version(package["rust_version"]) > needed:
            needed = version(package["rust_version"])
            by = f"{package['name']} {package['version']}"
    needed_text = ".".join(map(str, needed))

    if version(declared) != needed:
        sys.exit(
            f"rust-version is {declared} in Cargo.toml, but the graph needs {needed_text} "
            f"({by}): declare {needed_text} and run `cargo update`"
        )
    print(f"rust-version {declared} is what the graph needs ({by})")


if __name__ == "__main__":
    main()
