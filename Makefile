# The commands people type. `make run` for the demo, `make test` for everything CI checks.
CARGO ?= cargo

.PHONY: run test lint build bench fuzz soak

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
	$(CARGO) bench -p hotline-proto --locked

soak: build
	HOTLINE_SOAK=1 $(CARGO) test -p hotline-e2e --locked --test kill_rounds -- --nocapture

fuzz:
	cd crates/proto/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -s none decode_frame -- -max_total_time=60
