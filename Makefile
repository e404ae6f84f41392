# The README's two commands: `make serve` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 8765

.PHONY: setup model serve fleet test lint check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build on disk, never a CUDA download.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# The C++ kernels (quantized matmul, paged attention) compile into the venv on the first setup (about a minute);
# after that this only checks they are current.
setup: $(STAMP)
	$(PY) -m server.engine.kernels
	# The fleet's store and the store tests run a real redis-server (Debian's package).
	command -v redis-server >/dev/null || (apt-get update && apt-get install -y redis-server)
	# The playground's browser tests: Debian's chromium driven by Playwright (never a download).
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	# The C# client's tests build with Mono (Debian's mono-mcs) and run on its runtime.
	command -v mcs >/dev/null || (apt-get update && apt-get install -y mono-mcs mono-runtime)
	# The IRC bridge's tests run a real IRC server on loopback (Debian's ngircd).
	command -v ngircd >/dev/null || test -x /usr/sbin/ngircd || (apt-get update && apt-get install -y ngircd)

model: setup
	$(VENV)/bin/banterbox pull

serve: model
	$(VENV)/bin/banterbox serve --host $(HOST) --port $(PORT)

# A local fleet: redis-server (AOF, fsync always; data in a temporary folder) and two replicas
# sharing it, until Ctrl-C. REDIS_PORT=0 picks a free port.
REDIS_PORT ?= 0
FLEET_PORTS ?= 8771 8772
fleet: model
	@set -e; data=$$(mktemp -d); port=$(REDIS_PORT); \
	if [ "$$port" = 0 ]; then port=$$($(PY) -c 'from bench.procs import free_port; print(free_port())'); fi; \
	redis-server --port $$port --bind 127.0.0.1 --dir $$data --save "" --appendonly yes \
		--appendfsync always --logfile $$data/redis.log & pids=$$!; \
	trap 'kill $$pids 2>/dev/null; wait; rm -rf $$data' EXIT INT TERM; \
	echo "redis on 127.0.0.1:$$port (data in $$data)"; \
	for p in $(FLEET_PORTS); do \
		$(VENV)/bin/banterbox serve --host $(HOST) --port $$p --store redis://127.0.0.1:$$port/0 & \
		pids="$$pids $$!"; \
	done; wait

test: model
	$(PY) -m pytest -q

# Every rule CI enforces: lint, format, types (strict), import contracts; then the tests.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

check: lint
	$(MAKE) test

bench: model
	$(PY) -m bench engine --sequences 1,8,16,32,64 --prompt-tokens 64 --new-tokens 64 \
		--json bench/results/engine.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
