# Developer entry points. The stack runs on 127.0.0.1 only and needs root.
POLICIES ?= examples/policies.yaml
VENV := .venv/bin

.PHONY: setup images up down status test test-unit test-e2e test-faults test-cluster test-bench test-containers lint demo bench clean distclean

setup:
	scripts/setup.sh

# The consentd and Asterisk 22 images (podman, Debian bases from mmdebstrap, no
# registry). Skipped when their inputs are unchanged: a second run takes seconds.
images: setup
	scripts/images.sh

# stack.sh runs setup.sh itself when the Asterisk root or the venv is missing.
# Already up: Asterisk and PostgreSQL stay, consentd restarts with $(POLICIES).
up:
	scripts/stack.sh up $(POLICIES)

down:
	scripts/stack.sh down

status:
	scripts/stack.sh status

# Lint first (seconds), the images, then every unit and end-to-end test against
# the real stack, and last the container suite (tests/containers: Asterisk and
# consentd from the images, after the chroot stack is down).
# CONSENTD_REQUIRE_E2E=1 fails the run if an e2e or container test is skipped
# or none ran; pytest's own exit 5 (nothing collected) fails make as well.
test: setup lint images
	CONSENTD_REQUIRE_E2E=1 $(VENV)/python -m pytest tests -p no:cacheprovider

# Quicker subsets while working. Only `make test` is the whole truth.
test-unit: setup
	$(VENV)/python -m pytest tests/unit -p no:cacheprovider

test-e2e: setup
	$(VENV)/python -m pytest tests/e2e -m "not bench" -p no:cacheprovider

test-faults: setup
	$(VENV)/python -m pytest tests/faults -p no:cacheprovider -s

# Kamailio in front of two Asterisk nodes with a consentd each (scripts/cluster.sh),
# beside the dev stack; in make test after the e2e and fault tests.
test-cluster: setup
	CONSENTD_REQUIRE_E2E=1 $(VENV)/python -m pytest tests/cluster -p no:cacheprovider

test-containers: images
	CONSENTD_REQUIRE_CONTAINERS=1 $(VENV)/python -m pytest tests/containers -p no:cacheprovider

test-bench: setup
	$(VENV)/python -m pytest tests/e2e -m bench -p no:cacheprovider -s

lint: setup
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy

# KEEP=1 leaves the stack up afterwards and prints the dashboard's address.
demo: setup
	$(VENV)/python scripts/demo.py $(if $(KEEP),--keep)

# Rising call rates through the floor, the dialplan baseline and consentd, side
# by side; results in bench/results/. QUICK=1: three short steps (< 3 min).
# STEPS=20:jitter,200:none runs only those steps (RUNS=3: each three times, judged
# on medians); KEEP=1 leaves the stack up; KEEP_WAVS=DIR keeps the measured
# recordings there (one folder per step, run and path) instead of deleting them.
bench: setup
	$(VENV)/python -m bench.run $(if $(QUICK),--quick) $(if $(STEPS),--steps $(STEPS)) $(if $(RUNS),--runs $(RUNS)) $(if $(KEEP),--keep) $(if $(KEEP_WAVS),--keep-wavs $(KEEP_WAVS))

# Stops the stack and removes run-time state (database, logs, journal).
clean: down
	rm -rf .state .pytest_cache .mypy_cache .ruff_cache

# Also removes the Asterisk root, the generated sounds and the venv.
distclean: clean
	rm -rf --one-file-system .cache .venv
