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
# module's fixtures are built once.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

demo: $(STAMP)
	@echo "make demo: the demo job arrives with its own issue (training on the tiny default); not built yet." >&2
	@exit 2

clean:
	rm -rf $(VENV) .pytest_cache
