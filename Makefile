# cryptopipe — the two commands: `make up SOURCE=sim` (run) and `make test` (test).
# SOURCE=live|sim; unset, `make up` keeps the stack's remembered source (live at the first up).
# Settings variables in make's environment or on its command line (BINANCE_WS_URL=..., SYMBOLS=...)
# reach the stack and are remembered (README, Configuration).
SOURCE ?=
PYTEST_ARGS ?=
PY = $(shell scripts/bootstrap.sh)

.PHONY: up down clean status test test-fast bench venv

venv:
	@scripts/bootstrap.sh >/dev/null

up: venv
	@$(PY) -m cryptopipe stack up $(if $(SOURCE),--source $(SOURCE),)

down: venv
	@$(PY) -m cryptopipe stack down

clean: venv
	@$(PY) -m cryptopipe stack clean

# `make status` (table) or `make status JSON=1` (stable JSON for scripts)
status: venv
	@$(PY) -m cryptopipe stack status $(if $(JSON),--json,)

# The whole suite: unit, integration, end-to-end and fault scenarios on the real stack it starts.
test: venv
	@scripts/ensure_chromium.sh >/dev/null
	@$(PY) -m pytest tests $(PYTEST_ARGS)

bench: venv
	@$(PY) -m cryptopipe bench $(BENCH_ARGS)
