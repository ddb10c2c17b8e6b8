#!/usr/bin/env python3
"""The drift suite: every breaking change to the contract must stop impl/ compiling.

Each mutation is applied to a copy of spec/compositions.yaml; generated/ is
regenerated into a temporary copy of the workspace (never the working tree) and
`cargo check -p compositions-jobs` runs there, with one target directory shared by
every case and every run so that only what changed is rebuilt.

A breaking mutation passes when the check fails with its first error in impl/.
The unmutated spec and a backward-compatible change (an added optional field) must
compile, so the guard is not a tripwire on every edit.
"""

import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PATH = "/api/patients/composition/job/{asyncJobId}"
# Copied into the scratch workspace (everything the crates read at build time);
# generated/ is made there from the spec.
WORKSPACE = ["Cargo.toml", "Cargo.lock", "impl", "tests", "bench", "codegen", "spec", "docs/site"]


def operation(spec):
    return spec["paths"][PATH]["get"]


def schema(spec, name):
    return spec["components"]["schemas"][name]


def rename_operation_id(spec):
    operation(spec)["operationId"] = "getAsyncJobState"


def add_required_job_property(spec):
    job = schema(spec, "Job")
    job["properties"]["priority"] = {"type": "integer", "format": "int32"}
    job["required"].append("priority")


def change_job_id_type(spec):
    operation(spec)["parameters"][0]["schema"] = {"type": "integer", "format": "int64"}


def add_response_code(spec):
    responses = operation(spec)["responses"]
    assert "409" not in responses, "pick a response code the spec does not have"
    responses["409"] = {
        "x-response-id": "Conflict",
        "description": "Conflict.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
    }


def add_status_value(spec):
    schema(spec, "JobStatus")["enum"].append("CANCELLED")


def remove_links(spec):
    job = schema(spec, "Job")
    del job["properties"]["links"]
    job["required"].remove("links")


def rename_error_property(spec):
    error = schema(spec, "JobError")
    error["properties"]["text"] = error["properties"].pop("message")
    error["required"] = ["text" if name == "message" else name for name in error["required"]]


def add_optional_job_property(spec):
    schema(spec, "Job")["properties"]["progress"] = {"type": "integer", "format": "int32"}


def unchanged(spec):
    pass


# (name, mutation, whether it must break the build)
CASES = [
    ("unmutated spec", unchanged, False),
    ("1. rename the operationId", rename_operation_id, True),
    ("2. add a required property to Job", add_required_job_property, True),
    ("3. change the type of asyncJobId", change_job_id_type, True),
    ("4. add a response code (409)", add_response_code, True),
    ("5. add a status value (CANCELLED)", add_status_value, True),
    ("6. remove the links property", remove_links, True),
    ("7. rename JobError.message", rename_error_property, True),
    ("compatible: add an optional Job field", add_optional_job_property, False),
]

ERROR = re.compile(r"^(?P<file>[^\s:]+):\d+:\d+: error")


def run_case(work, pristine, mutate, env):
    spec = copy.deepcopy(pristine)
    mutate(spec)
    (work / "spec" / "compositions.yaml").write_text(
        yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=1000)
    )
    subprocess.run([work / "codegen" / "generate.sh", work / "generated"], check=True, env=env)
    check = subprocess.run(
        ["cargo", "check", "--quiet", "-p", "compositions-jobs", "--message-format", "short"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    errors = [line for line in check.stderr.splitlines() if ERROR.match(line)]
    return check.returncode == 0, errors, check.stderr


def main():
    pristine = yaml.safe_load((ROOT / "spec" / "compositions.yaml").read_text())
    env = dict(os.environ)
    env["CARGO_TARGET_DIR"] = str(ROOT / "target" / "drift")
    env["OPENAPI_GENERATOR"] = str(ROOT / ".venv" / "bin" / "openapi-generator-cli")
    failures = 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="drift-") as scratch:
        work = Path(scratch)
        for item in WORKSPACE:
            source = ROOT / item
            if source.is_dir():
                shutil.copytree(source, work / item, ignore=shutil.ignore_patterns("target", ".hypothesis"))
            else:
                shutil.copy2(source, work / item)
        for name, mutate, must_break in CASES:
            compiled, errors, stderr = run_case(work, pristine, mutate, env)
            first = errors[0] if errors else ""
            if must_break:
                in_impl = first.startswith("impl/")
                ok = not compiled and in_impl
                result = "caught" if ok else ("COMPILES" if compiled else "error outside impl/")
            else:
                ok = compiled
                result = "compiles" if ok else "BROKEN"
                if not ok:
                    print(stderr, file=sys.stderr)
            failures += not ok
            rows.append((name, result, first))
            print(f"  {name}: {result}", file=sys.stderr, flush=True)

    width = max(len(name) for name, _, _ in rows)
    print(f"\n{'mutation':<{width}}  {'result':<20}  first error")
    print(f"{'-' * width}  {'-' * 20}  {'-' * 11}")
    for name, result, first in rows:
        print(f"{name:<{width}}  {result:<20}  {first}")
    breaking = [result for (_, result, _), (_, _, must_break) in zip(rows, CASES) if must_break]
    print(f"\n{breaking.count('caught')} of {len(breaking)} breaking mutations caught")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
