# The README's two commands: `make run` and `make test`. Both install what they need first.
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(HOME)/.cargo/bin:$(PATH)

MODULE := target/wasm32-wasip1/release/immutable_tags.wasm
# The features rustc's wasm32-wasip1 target emits (V8 in Envoy supports them all).
WASM_OPT := wasm-opt -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int --enable-mutable-globals
WASM_TEST_ENV := CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner

.PHONY: run test deps build fmt unit clippy wasm-test e2e image bench mutants sim fuzz

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE ?= 127.0.0.1:5000/immutable-tags:$(VERSION)
TLS_VERIFY ?= true

## run: registry on :5001, Envoy + filter on :5000 (admin :9901), policy envoy/policy.json
run: build
	python tests/stack.py run

## test: every test: unit (native and wasm32), clippy, end-to-end through real Envoy
test: build fmt unit clippy wasm-test e2e

deps:
	@bash scripts/deps.sh

build: deps
	cargo build --release --target wasm32-wasip1 --lib
	@# In place (cargo links a fresh copy on every build), so envoy/envoy.yaml and the tests load it.
	$(WASM_OPT) $(MODULE) -o $(MODULE).opt && mv $(MODULE).opt $(MODULE)
	@ls -l $(MODULE)

## fmt: the formatting check (rustfmt.toml); `cargo fmt` applies it.
fmt:
	cargo fmt --check

unit:
	cargo test --all-targets

clippy:
	cargo clippy --all-targets -- -D warnings
	cargo clippy --release --target wasm32-wasip1 --lib -- -D warnings
	@# Module docs link their modules: a stale reference fails here (the wasi-only glue's
	@# children are named in plain text, they do not exist in a native doc build).
	RUSTDOCFLAGS="-D rustdoc::broken_intra_doc_links -D warnings" cargo doc --no-deps --document-private-items

wasm-test: deps
	$(WASM_TEST_ENV) cargo test --target wasm32-unknown-unknown --lib

## e2e also writes results/compat.json and client_errors.json; docs/compatibility.md is rendered
## from them whether or not every test passed (a failed cell shows as FAIL).
e2e: build
	cd tests && python -m pytest -v -p no:cacheprovider; status=$$?; cd .. && python scripts/compat_table.py; exit $$status

## image: the OCI image Istio and Envoy Gateway pull (one layer with plugin.wasm), pushed to
## IMAGE with skopeo; no Docker engine. e.g. make image IMAGE=127.0.0.1:5000/immutable-tags:0.1.0 TLS_VERIFY=false
image: build
	python3 scripts/wasm_image.py --module $(MODULE) --layout target/oci --tag $(VERSION) \
		--push $(IMAGE) --dest-tls-verify=$(TLS_VERIFY)

## bench: the filter's cost, side by side (a few minutes): bench/results.md, bench/ratios.svg;
## new-tag pushes with claims in shared data vs in etcd: bench/etcd_results.md
bench: build
	python bench/bench.py
	python bench/etcd_cost.py

## fuzz: the adversarial end-to-end fuzzer (tests/fuzz_e2e.py) on a long budget, FUZZ_SECONDS
## (default 1800); writes tests/fuzz_results.md (seed, cases, any broken invariant). `make test`
## runs it for 40 s (tests/test_fuzz.py). Replay: FUZZ_SEED=<seed> make fuzz
fuzz: build
	python tests/fuzz_e2e.py --seconds $${FUZZ_SECONDS:-1800} --results tests/fuzz_results.md

## mutants: mutation testing (cargo-mutants) of the pure core and src/filter/ with the native
## unit tests only (about an hour for every file on 2 cores; not part of `make test`). Narrow it
## with MUTANTS_ARGS, e.g. make mutants MUTANTS_ARGS="-f src/filter/push.rs". Writes mutants.out/;
## reviewed results: mutants/results.md. The settings are those of the recorded runs: a test
## run takes about 2 s, so a mutant still running at 60 s loops (and counts as detected).
mutants:
	@bash scripts/deps.sh --mutants
	PROPTEST_CASES=$${PROPTEST_CASES:-32} cargo mutants --test-tool cargo --profile mutants \
		--timeout 60 --build-timeout 300 -j 2 $(MUTANTS_ARGS)

## sim: the claims protocol's deterministic simulation, long (`cargo test` runs 2,000 schedules):
## SIM_SCHEDULES schedules from seed SIM_FIRST (default 100,000 from 0, about 10 minutes). A
## failure prints its seed; replay it with SIM_SEED=<seed> cargo test --lib sim::. Record the
## range run in sim/results.md.
sim:
	SIM_REPORT=1 SIM_FIRST=$${SIM_FIRST:-0} SIM_SCHEDULES=$${SIM_SCHEDULES:-100000} \
		cargo test --lib sim::random -- --nocapture
