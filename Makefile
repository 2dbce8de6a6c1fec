# Two commands a new user needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-real lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,fast,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/m2l run examples/demo.toml

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Two workers halve the wall time on 2 cores (the slow tests mostly wait on subprocesses and
# loopback servers); tests that share a resource carry @pytest.mark.xdist_group and run on one.
pytest: $(STAMP)
	$(BIN)/pytest -n 2 --dist loadgroup

# Against a real llama.cpp server (llama-cpp-python + SmolLM2-135M-Instruct) on loopback; not
# part of `make test`. The first time it builds llama-cpp-python from its sdist (5-20 minutes on
# 2 cores) into $(REAL_CACHE); M2L_LLAMA_WHEELS=DIR reuses a wheel of the same version instead.
REAL_CACHE ?= .cache/real
test-real: $(STAMP)
	sh tests/real/prepare.sh $(REAL_CACHE)
	M2L_REAL_CACHE=$(abspath $(REAL_CACHE)) $(BIN)/pytest tests/real -s --timeout 1800

bench: $(STAMP)
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache runs  # .cache (test-real) is kept
