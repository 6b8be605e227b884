# The two commands: `make demo` (curate the embedded demo corpus) and `make test`.
# Both create or refresh .venv (pip and apt) first.
VENV := .venv
STAMP := $(VENV)/.emoforge-installed

.PHONY: setup demo test test-slow lint

$(STAMP): pyproject.toml requirements-nodeps.txt scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/emoforge demo --out out/demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# The slow tests (CI runs them after `make test`); exit code 5 means none were selected.
test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "slow and not gpu" || [ $$? -eq 5 ]

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline training catalog jobs tests
