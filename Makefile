# Developer entry points. The service itself is operated with the Procfile and `cio-relay`.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: install run sample sample-mparticle test lint bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

# Start the relay on the embedded default: no Redis, no mParticle (dry run), one process.
run: install
	RELAY_SETTINGS=$${RELAY_SETTINGS:-examples/try-it.toml} \
	CIO_WEBHOOK_SIGNING_KEYS=$${CIO_WEBHOOK_SIGNING_KEYS:-try-it-signing-key} \
	MPARTICLE_WEBHOOK_AUTHORIZATION=$${MPARTICLE_WEBHOOK_AUTHORIZATION:-try-it-authorization} \
	WEB_CONCURRENCY=1 $(BIN)/gunicorn --bind 127.0.0.1:$${PORT:-8000} wsgi:app

# Send one signed sample webhook to the relay started by `make run`.
sample: install
	$(BIN)/python examples/send_event.py

# Send one batch as mParticle's Webhook output would, to the relay started by `make run`.
sample-mparticle: install
	$(BIN)/python examples/send_mparticle_batch.py

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: install
	$(BIN)/python bench/run.py
