# Each target is one thin command; .ci/run calls the same targets.

VENV   := .venv
PYTHON := $(VENV)/bin/python
CARGO  ?= cargo
# The hand-written crates; lints never apply to generated/.
OURS   := -p compositions-jobs -p compositions-tests -p compositions-bench

# Python tools, pinned, in a project-local venv; a stamp per requirements file.
CODEGEN_TOOLS := $(VENV)/.codegen-tools
TEST_TOOLS    := $(VENV)/.test-tools
# Node tools for the documentation (Redoc, playwright-core), pinned by the lock file.
DOCS_TOOLS    := docs/node_modules/.installed
# Cargo tools, pinned, built from crates.io into a folder per version.
CARGO_DENY_VERSION := 0.20.2
CARGO_DENY    := .tools/cargo-deny-$(CARGO_DENY_VERSION)/bin/cargo-deny

# The PostgreSQL half of the tests runs against the machine's server unless this
# names another one; set it empty to skip that half.
export COMPOSITIONS_TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test

.PHONY: run test prerequisites fmt fmt-check lint unit generate check-generated validate-spec \
        build release contract drift docs check-docs docs-test publish-docs bench bench-scale fuzz tools clean

## run: serve on 127.0.0.1:8080 with SQLite under ./var and a dev signing key
run:
	$(CARGO) run -p compositions-jobs -- serve --dev

## test: everything CI checks
test: prerequisites fmt-check lint unit validate-spec check-generated check-docs docs-test contract drift

## prerequisites: the system tools the suites need (installed when run as root)
prerequisites:
	scripts/prerequisites.sh test

# fuzz/ is a workspace of its own (cargo-fuzz builds it on nightly); it is
# formatted and linted on stable like the rest of our code.
FUZZ   := --manifest-path fuzz/Cargo.toml

fmt:
	$(CARGO) fmt $(OURS)
	$(CARGO) fmt $(FUZZ)

fmt-check:
	$(CARGO) fmt $(OURS) --check
	$(CARGO) fmt $(FUZZ) --check

# The crate's docs are for whoever changes it: private items included, and
# public docs may link to them.
lint: $(CARGO_DENY)
	$(CARGO) clippy $(OURS) --all-targets -- -D warnings
	$(CARGO) clippy $(FUZZ) --all-targets --locked -- -D warnings
	scripts/check-msrv.py
	scripts/check-layers.py
	RUSTDOCFLAGS="-D warnings -A rustdoc::private_intra_doc_links" $(CARGO) doc --no-deps -p compositions-jobs --document-private-items
	$(CARGO_DENY) --locked check licenses bans sources

unit:
	@[ -n "$$COMPOSITIONS_TEST_DATABASE_URL" ] || echo "COMPOSITIONS_TEST_DATABASE_URL is unset: skipping the PostgreSQL tests"
	$(CARGO) test $(OURS)

## generate: regenerate generated/ from spec/ (commit both together)
generate: $(CODEGEN_TOOLS)
	codegen/generate.sh generated

check-generated: $(CODEGEN_TOOLS)
	codegen/check-generated.sh

validate-spec: $(CODEGEN_TOOLS)
	$(VENV)/bin/openapi-generator-cli validate --input-spec spec/compositions.yaml

build:
	$(CARGO) build -p compositions-jobs

release:
	$(CARGO) build --release -p compositions-jobs

## contract: schemathesis against the release binary (>= 1,000 requests, 0 failures)
contract: release $(TEST_TOOLS)
	tests/contract/run.sh

## drift: every breaking spec mutation must stop impl/ compiling
drift: $(CODEGEN_TOOLS) $(TEST_TOOLS)
	$(PYTHON) tests/drift/drift.py

## docs: build docs/site/index.html from spec/ (commit it with the spec)
docs: $(DOCS_TOOLS)
	docs/build.sh docs/site/index.html

check-docs: $(DOCS_TOOLS)
	docs/check.sh

## docs-test: open /docs of the real service in headless Chromium
docs-test: build $(DOCS_TOOLS)
	docs/test.sh

## publish-docs DEST=<dir>: copy the site for a static host
publish-docs:
	docs/publish.sh "$(DEST)"

## fuzz: each cargo-fuzz target for FUZZ_SECONDS (300) on nightly (never in test)
fuzz:
	fuzz/run.sh

## bench: the service against bare hyper in the same run (a few minutes; never in test)
bench:
	bench/run.sh

## bench-scale: CPU, RSS and p99 as jobs, tokens and connections grow (several minutes)
bench-scale:
	bench/scale.sh

tools: $(CODEGEN_TOOLS) $(TEST_TOOLS) $(DOCS_TOOLS) $(CARGO_DENY)

$(PYTHON):
	python3 -m venv $(VENV)

# The generator wheel carries its jar; it runs on Java 17.
$(CODEGEN_TOOLS): codegen/requirements.txt | $(PYTHON)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r $<
	touch $@

$(TEST_TOOLS): tests/requirements.txt | $(PYTHON)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r $<
	touch $@

$(DOCS_TOOLS): docs/package-lock.json
	cd docs && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(CARGO_DENY):
	$(CARGO) install --quiet --locked --root .tools/cargo-deny-$(CARGO_DENY_VERSION) cargo-deny --version $(CARGO_DENY_VERSION)

clean:
	$(CARGO) clean
	rm -rf $(VENV) var docs/node_modules .tools
