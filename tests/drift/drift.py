#!/usr/bin/env python3
"""The drift suite: every breaking change to the contract must stop impl/ compiling,
and a changed status code must change everything the service sends for it.

Each mutation is applied to a copy of spec/compositions.yaml; generated/ is
regenerated into a temporary copy of the workspace (never the working tree) and
`cargo check -p compositions-jobs` runs there, with one target directory shared by
every case and every run so that only what changed is rebuilt.

A breaking mutation passes when the check fails with its first error in impl/.
The unmutated spec and a backward-compatible change (an added optional field) must
compile, so the guard is not a tripwire on every edit. A new code for an existing
response compiles, and then the service must send that code, as HTTP status and
as `meta.code`, from every place that answers with that response (the handler,
the router, the layers before it): `tests/suite/errors.rs`
`every_answer_states_the_status_the_spec_gives_it` runs in the scratch workspace.
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


def recode(response_id, code):
    """The response `response_id` under `code` instead of its own."""

    def mutate(spec):
        responses = operation(spec)["responses"]
        old = next(c for c, r in responses.items() if r.get("x-response-id") == response_id)
        assert str(code) not in responses, "pick a code the spec does not have"
        responses[str(code)] = responses.pop(old)
        # The example's meta.code follows, or schemathesis-style checks would differ.
        for media in responses[str(code)].get("content", {}).values():
            example = media.get("example")
            if isinstance(example, dict) and "meta" in example:
                example["meta"]["code"] = code

    return mutate


BREAKS, COMPILES, CONSISTENT = "breaks", "compiles", "consistent"

# (name, mutation, what must happen)
CASES = [
    ("unmutated spec", unchanged, COMPILES),
    ("1. rename the operationId", rename_operation_id, BREAKS),
    ("2. add a required property to Job", add_required_job_property, BREAKS),
    ("3. change the type of asyncJobId", change_job_id_type, BREAKS),
    ("4. add a response code (409)", add_response_code, BREAKS),
    ("5. add a status value (CANCELLED)", add_status_value, BREAKS),
    ("6. remove the links property", remove_links, BREAKS),
    ("7. rename JobError.message", rename_error_property, BREAKS),
    ("8. TaskNotFound: 404 becomes 410", recode("TaskNotFound", 410), CONSISTENT),
    ("9. InvalidRequestFormat: 400 becomes 422", recode("InvalidRequestFormat", 422), CONSISTENT),
    ("10. ServiceUnavailable: 503 becomes 502", recode("ServiceUnavailable", 502), CONSISTENT),
    ("compatible: add an optional Job field", add_optional_job_property, COMPILES),
]

CONSISTENCY_TEST = ["--test", "suite", "errors::every_answer_states_the_status_the_spec_gives_it"]

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


def consistent(work, env):
    """Whether every answer still states the code the (mutated) spec gives it."""
    test = subprocess.run(
        ["cargo", "test", "--quiet", "-p", "compositions-tests", *CONSISTENCY_TEST],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    return test.returncode == 0, test.stdout + test.stderr


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
        for name, mutate, expected in CASES:
            compiled, errors, stderr = run_case(work, pristine, mutate, env)
            first = errors[0] if errors else ""
            if expected == BREAKS:
                in_impl = first.startswith("impl/")
                ok = not compiled and in_impl
                result = "caught" if ok else ("COMPILES" if compiled else "error outside impl/")
            elif expected == COMPILES or not compiled:
                ok = compiled
                result = "compiles" if ok else "BROKEN"
                if not ok:
                    print(stderr, file=sys.stderr)
            else:
                ok, output = consistent(work, env)
                result = "consistent" if ok else "INCONSISTENT"
                if not ok:
                    print(output, file=sys.stderr)
            failures += not ok
            rows.append((name, result, first))
            print(f"  {name}: {result}", file=sys.stderr, flush=True)

    width = max(len(name) for name, _, _ in rows)
    print(f"\n{'mutation':<{width}}  {'result':<20}  first error")
    print(f"{'-' * width}  {'-' * 20}  {'-' * 11}")
    for name, result, first in rows:
        print(f"{name:<{width}}  {result:<20}  {first}")
    breaking = [result for (_, result, _), (_, _, expected) in zip(rows, CASES) if expected == BREAKS]
    recoded = [result for (_, result, _), (_, _, expected) in zip(rows, CASES) if expected == CONSISTENT]
    print(f"\n{breaking.count('caught')} of {len(breaking)} breaking mutations caught; "
          f"{recoded.count('consistent')} of {len(recoded)} changed codes sent consistently")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
