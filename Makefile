# The two commands of the README: `make test` and `make demo`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test venv demo clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Two workers (the CI host has two cores; compiling dominates the suite), a test file per worker so a
# module's fixtures are built once, handed out in collection order (tests/conftest.py orders the
# files longest first, by measured time; xdist's default reorder by test count would start the
# one-test demo last).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests

# The standing experiment (README "Quick start"): dataset -> trunk pretraining -> stages 0-3 ->
# parallel inference in five settings -> experiments/demo/report.md. Resumes where it stopped.
demo: $(STAMP)
	$(PY) launch/demo.py --config=configs/demo.py

clean:
	rm -rf $(VENV) .pytest_cache
