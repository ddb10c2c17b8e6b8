# Each target is one thin command; .ci/run calls the same targets.

VENV      := .venv
GENERATOR := $(VENV)/bin/openapi-generator-cli
CARGO     ?= cargo
# The hand-written crates; lints never apply to generated/.
OURS      := -p compositions-jobs -p compositions-tests

.PHONY: run test fmt fmt-check lint unit generate check-generated validate-spec tools clean

## run: start the service on 127.0.0.1:8080 with SQLite under ./var and a dev key
run:
	$(CARGO) run -p compositions-jobs -- serve --dev

## test: everything CI checks
test: fmt-check lint unit validate-spec check-generated

fmt:
	$(CARGO) fmt $(OURS)

fmt-check:
	$(CARGO) fmt $(OURS) --check

lint:
	$(CARGO) clippy $(OURS) --all-targets -- -D warnings

unit:
	$(CARGO) test $(OURS)

## generate: regenerate generated/ from spec/ (commit both together)
generate: $(GENERATOR)
	codegen/generate.sh generated

check-generated: $(GENERATOR)
	codegen/check-generated.sh

validate-spec: $(GENERATOR)
	$(GENERATOR) validate --input-spec spec/compositions.yaml

tools: $(GENERATOR)

# The pinned generator (with its jar) in a project-local venv; needs Java 17.
$(GENERATOR): codegen/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r codegen/requirements.txt
	touch $@

clean:
	$(CARGO) clean
	rm -rf $(VENV) var
