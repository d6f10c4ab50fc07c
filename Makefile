# Developer entry points. The stack runs on 127.0.0.1 only and needs root.
POLICIES ?= examples/policies.yaml
VENV := .venv/bin

.PHONY: setup up down status test lint demo bench clean distclean

setup:
	scripts/setup.sh

# stack.sh runs setup.sh itself when the Asterisk root or the venv is missing.
# Already up: Asterisk and PostgreSQL stay, consentd restarts with $(POLICIES).
up:
	scripts/stack.sh up $(POLICIES)

down:
	scripts/stack.sh down

status:
	scripts/stack.sh status

test: setup
	$(VENV)/python -m pytest tests

lint:
	$(VENV)/ruff check .
	$(VENV)/mypy

demo:
	scripts/demo.sh

bench:
	@echo "bench: not written yet (SIPp load test against the stack)"; exit 1

# Stops the stack and removes run-time state (database, logs, journal).
clean: down
	rm -rf .state .pytest_cache .mypy_cache .ruff_cache

# Also removes the Asterisk root, the generated sounds and the venv.
distclean: clean
	rm -rf --one-file-system .cache .venv
