# The project's vocabulary. `make run` and `make test` are the two commands a new user needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8080

.PHONY: run serve serve-events test test-network lint format bench clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

## Classify the five default photos (or: make run PHOTOS="url1 url2").
run: $(VENV)/.installed
	$(PY) main.py $(PHOTOS)

## The HTTP API on $(PORT) (functions-framework, gunicorn).
serve: $(VENV)/.installed
	$(VENV)/bin/functions-framework --target classify_http --port $(PORT)

## The CloudEvent target on $(PORT).
serve-events: $(VENV)/.installed
	$(VENV)/bin/functions-framework --target classify_event --signature-type cloudevent --port $(PORT)

## The offline test suite (generated model and photos on 127.0.0.1).
test: $(VENV)/.installed-test
	$(PY) -m pytest

## The real model and the default photos, over the internet (opt in).
test-network: $(VENV)/.installed-test
	$(PY) -m pytest -m network

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
