# maas: the two front-door commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: setup build release run test fleet lint fmt bench clean

## Install system packages and libtorch (.venv); idempotent.
setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --workspace --bins

release: setup
	$(CARGO) build --release --workspace --bins

## Train the demo model if needed, start PostgreSQL, backend and gateway, print a curl.
run: release
	@scripts/with-services.sh --data .data/run env MAAS_PROFILE=release scripts/run.sh

## The whole suite against a real PostgreSQL and Redis (started privately when needed).
test: build
	@scripts/with-services.sh $(CARGO) test --workspace

## The fleet fault test (gateway/tests/fleet.rs, also in `make test` at 300 requests/s for
## 20 s) at a larger size: three gateways behind haproxy, one killed and restarted, one
## backend killed; `make fleet FLEET_RPS=1000 FLEET_SECONDS=120` sets another size.
FLEET_RPS ?= 450
FLEET_SECONDS ?= 60
fleet: build
	@MAAS_FLEET_RPS=$(FLEET_RPS) MAAS_FLEET_SECONDS=$(FLEET_SECONDS) scripts/with-services.sh \
		$(CARGO) test -p maas-gateway --test fleet -- --nocapture

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	rm -rf target .data

## Benchmarks side by side in one run; rewrites BENCHMARKS.md.
bench:
	@bench/run.sh
