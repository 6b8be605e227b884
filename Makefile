# The two commands: `make demo` (curate the embedded demo corpus) and `make test`.
# Both create or refresh .venv (pip and apt) first.
VENV := .venv
STAMP := $(VENV)/.emoforge-installed

.PHONY: setup demo test test-slow lint gpu-check gpu-wheels

$(STAMP): pyproject.toml requirements-nodeps.txt scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/emoforge demo --out out/demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# The slow tests (CI runs them after `make test`); exit code 5 means none were selected.
# A module that starts its own Ray cluster runs in a pytest process of its own: a process holds
# one Ray connection, and Ray reads its auth mode once per process.
OWN_CLUSTER := tests/pipeline/run/test_cluster.py tests/pipeline/run/test_faults.py
test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "slow and not gpu and not own_cluster" || [ $$? -eq 5 ]
	for module in $(OWN_CLUSTER); do \
		$(VENV)/bin/python -m pytest -q -m "slow and not gpu" $$module || exit 1; \
	done

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline training catalog jobs tests

# The device check (scripts/gpu_check.sh): on a machine with one NVIDIA GPU, with the Python there
# (no venv: the lent machines have torch but no registry); JSON in out/gpu_check/.
gpu-check:
	bash scripts/gpu_check.sh out/gpu_check

# The wheels gpu_check.sh installs offline where diffusers is absent (needs a registry here).
gpu-wheels:
	python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 -d scripts/gpu_wheels \
		diffusers==0.42.1 importlib_metadata==10.2.0
