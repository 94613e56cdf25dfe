# The commands people type. `make run` for the demo, `make test` for everything CI checks.
CARGO ?= cargo

.PHONY: run test lint build bench fuzz soak mutants

run:
	$(CARGO) build --workspace --bins --locked
	./target/debug/hotline demo

build:
	$(CARGO) build --workspace --all-targets --locked

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	RUSTDOCFLAGS=-Dwarnings $(CARGO) doc --workspace --no-deps --document-private-items --locked

test: lint
	$(CARGO) build --workspace --bins --locked
	$(CARGO) test --workspace --locked

bench:
	$(CARGO) build --release --workspace --bins --locked
	$(CARGO) bench -p hotline-proto --bench engine --locked
	./target/release/hotline-bench baseline --rate 1000 --duration 15 --floor both --json target/bench-baseline-1k.json
	./target/release/hotline-bench baseline --rate 10000 --duration 15 --floor both --json target/bench-baseline-10k.json
	./target/release/hotline-bench flood --duration 10 --json target/bench-flood.json
	./target/release/hotline-bench scale --rate 1000 --duration 6 --max-pairs 1000 --json target/bench-scale.json

soak: build
	HOTLINE_SOAK=1 $(CARGO) test -p hotline-e2e --locked --test kill_rounds --test faults -- --nocapture

# Every fuzz target for FUZZ_SECONDS each (needs `cargo install cargo-fuzz`).
FUZZ_SECONDS ?= 60
fuzz:
	for t in decode_frame open_envelope engine_frames; do \
	  (cd crates/proto/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -s none $$t -- -max_total_time=$(FUZZ_SECONDS)) || exit 1; \
	done
	cd crates/client/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -s none control_request -- -max_total_time=$(FUZZ_SECONDS)

# Mutation testing (cargo-mutants): hotline-proto against its own tests, and the node's audit
# module against the client crate's tests. Slow (hours on 2 cores for all of it); not part of
# `make test`. Results and every survivor are recorded in TESTING.md. MUTANTS_ARGS narrows a run,
# e.g. MUTANTS_ARGS='--file crates/proto/src/envelope.rs'.
MUTANTS_ARGS ?=
mutants:
	command -v cargo-mutants >/dev/null 2>&1 || $(CARGO) install --locked cargo-mutants
	$(CARGO) mutants --jobs 1 --package hotline-proto $(MUTANTS_ARGS)
	$(CARGO) mutants --jobs 1 --file crates/client/src/audit.rs --test-package hotline-client -- --lib
