# Two commands do all set-up on a fresh machine with Python 3.11 and make:
#   make demo   - create .venv, install, run the main job end to end on MovieLens-100K
#   make test   - create .venv if missing, install, run the whole test suite
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Threads pinned: on the 2-core CI machine thread contention made an embedding forward 20x slower.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO ?= 0
export RAY_USAGE_STATS_ENABLED ?= 0
export TRITON_INTERPRET ?= 1

.PHONY: demo test install sysdeps lock clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(PY) requirements.lock requirements-torchrec.txt pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -r requirements-torchrec.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# System packages the tests use: a real redis-server (store tests) and headless chromium (report test).
sysdeps:
	@bash scripts/sysdeps.sh

demo: install
	$(VENV)/bin/recsys demo

test: install sysdeps
	$(PY) -m pytest -q tests

# Regenerate the lock file from the current environment (run after changing dependencies).
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v -E '^(torchrec|fbgemm-gpu-cpu)==' > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
