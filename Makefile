# Tertulia: the two commands are `make up` and `make test`. See README.md.
.PHONY: up start stop test lint tools fmt proto-check proto-baseline bench

## up: install what is missing, start NATS, PostgreSQL and every service; Ctrl-C stops all.
up:
	@scripts/stack.sh up

## start: the same in the background; addresses go to .run/stack.env.
start:
	@scripts/stack.sh start

## stop: stop what `make start` started.
stop:
	@scripts/stack.sh stop

## test: the whole suite (unit and integration) against real PostgreSQL and NATS.
test:
	@scripts/test.sh

## bench: short load runs of every scenario against release builds and the baseline relay;
## regenerates docs/BENCHMARKS.md. `make bench BENCH=--long` for the full sizes.
bench:
	@scripts/bench.sh $(BENCH)

## lint: formatting, clippy with warnings as errors, buf lint, the breaking-change gate, and
## the web client's type check.
lint: tools
	cargo fmt --all -- --check
	cargo clippy -j2 --all-targets -- -D warnings
	cd proto && ../.tools/venv/bin/buf lint
	scripts/web.sh check
	@$(MAKE) --no-print-directory proto-check

## proto-check: fail on any incompatible change to a released package (buf breaking against
## the committed baseline, proto/baseline/released.binpb).
proto-check: tools
	cd proto && ../.tools/venv/bin/buf breaking --against baseline/released.binpb

## proto-baseline: record the current packages as released (run when a version ships).
proto-baseline: tools
	cd proto && ../.tools/venv/bin/buf build --exclude-source-info -o baseline/released.binpb

## tools: install pinned tools and make sure PostgreSQL runs.
tools:
	@scripts/tools.sh

fmt:
	cargo fmt --all
