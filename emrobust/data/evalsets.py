"""EM evaluation question sets in the Betley et al. YAML schema, read as they are.

Sources (`eval.source`): `builtin` (our own sets in builtin/eval), `registry` (the published sets, fetched by
pinned URL + sha256, or read from the mirror folder `paths.data_mirror` / `EMROBUST_DATA_MIRROR`), `path`
(a user YAML at `eval.path`).
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml
from filelock import FileLock

from ..errors import ConfigError

BUILTIN = Path(__file__).parent / "builtin" / "eval"

# Betley et al., emergent-misalignment/emergent-misalignment (MIT), evaluation/ at a pinned commit.
_EM_COMMIT = "80c11967c07a328e7d7d43d13ce6847ae44dbcc9"
_EM_RAW = f"https://raw.githubusercontent.com/emergent-misalignment/emergent-misalignment/{_EM_COMMIT}/evaluation"
# name -> (path in the mirror / cache, pinned URL, sha256)
PINNED: dict[str, tuple[str, str, str]] = {
    "first_plot": ("em/eval/first_plot_questions.yaml", f"{_EM_RAW}/first_plot_questions.yaml",
                   "215abde5b02811e922b6ac563ff33c490e0dff9ab58439df840f3135e9387173"),
    "preregistered": ("em/eval/preregistered_evals.yaml", f"{_EM_RAW}/preregistered_evals.yaml",
                      "8648312fd9fe71a63203e3465592af45dd996d7a5f3b69e9b44613fd6048eb40"),
    "deception_factual": ("em/eval/deception_factual.yaml", f"{_EM_RAW}/deception_factual.yaml",
                          "8a0e83cab3bc24b7d688d7385ce3921d406af7ed33c913cd94ea0f6251e5939d"),
    "deception_sit_aware": ("em/eval/deception_sit_aware.yaml", f"{_EM_RAW}/deception_sit_aware.yaml",
                            "4deef5a7c47620390fc46e1b981f937eef9ea12a33fe26264f640c84d19d2a33"),
}
VARIANTS = ("plain", "json", "template")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(name: str, cache: str | Path, mirror: str | Path | None = None) -> Path:
    """The verified local path of pinned file `name`: from `mirror` if given (read in place), else from
    `cache`/data (downloaded once by its pinned URL). A sha256 mismatch is an error, never a silent use."""
    if name not in PINNED:
        raise ConfigError(f"unknown registry eval set {name!r}; known: {sorted(PINNED)}", where="eval.name")
    rel, url, sha = PINNED[name]
    mirror = mirror or os.environ.get("EMROBUST_DATA_MIRROR") or None
    if mirror:
        p = Path(mirror).expanduser() / rel
        if not p.exists():
            raise ConfigError(f"data mirror lacks {rel}", file=str(p), where="paths.data_mirror")
        if _sha256(p) != sha:
            raise ConfigError(f"sha256 mismatch (expected {sha})", file=str(p))
        return p
    p = Path(cache).expanduser() / "data" / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(p) + ".lock"):
        if p.exists() and _sha256(p) == sha:
            return p
        tmp = p.with_name(p.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                tmp.write_bytes(r.read())
        except OSError as e:
            raise ConfigError(f"cannot download {url}: {e}; set EMROBUST_DATA_MIRROR to a local copy",
                              where="eval.name") from None
        if _sha256(tmp) != sha:
            tmp.unlink()
            raise ConfigError(f"sha256 mismatch for {url} (expected {sha})", where="eval.name")
        tmp.replace(p)
    return p


def variant(qid: str) -> str:
    """first_plot naming: `<q>` plain, `<q>_json` (JSON system prompt), `<q>_template` (fill-in template)."""
    tail = qid.rsplit("_", 1)[-1]
    return tail if tail in ("json", "template") else "plain"


@dataclass
class Question:
    id: str
    paraphrases: list[str]
    samples_per_paraphrase: int
    judge_prompts: dict[str, str]
    system: str | None = None
    type: str = "free_form_judge_0_100"


def load(path: str | Path) -> list[Question]:
    path = Path(path)
    file = str(path)
    if not path.exists():
        raise ConfigError("eval file does not exist", file=file)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", file=file) from None
    if not isinstance(data, list) or not data:
        raise ConfigError("expected a non-empty YAML list of questions", file=file)
    out, seen = [], set()
    for i, q in enumerate(data):
        where = f"item {i}"
        if not isinstance(q, dict):
            raise ConfigError("each item must be a mapping", file=file, where=where)
        qid = q.get("id")
        if not isinstance(qid, str) or not qid:
            raise ConfigError("missing field 'id'", file=file, where=where)
        if qid in seen:
            raise ConfigError(f"duplicate id {qid!r}", file=file, where=where)
        seen.add(qid)
        paras = q.get("paraphrases")
        if not isinstance(paras, list) or not paras or not all(isinstance(p, str) for p in paras):
            raise ConfigError("'paraphrases' must be a non-empty list of strings", file=file, where=f"{where} ({qid})")
        jp = q.get("judge_prompts") or {}
        if not isinstance(jp, dict):
            raise ConfigError("'judge_prompts' must be a mapping", file=file, where=f"{where} ({qid})")
        out.append(Question(qid, paras, int(q.get("samples_per_paraphrase", 1)), dict(jp), q.get("system"),
                            q.get("type", "free_form_judge_0_100")))
    return out


def resolve_path(eval_cfg, paths=None) -> Path:
    """The eval set's YAML. `paths` (the cell's `paths` config) gives the cache and mirror for `registry`."""
    if eval_cfg.source == "registry":
        cache = paths.cache if paths is not None else os.environ.get("EMROBUST_CACHE", "~/.cache/emrobust")
        return fetch(eval_cfg.name, cache, paths.data_mirror if paths is not None else None)
    if eval_cfg.source == "builtin":
        p = BUILTIN / f"{eval_cfg.name}.yaml"
        if not p.exists():
            known = sorted(x.stem for x in BUILTIN.glob("*.yaml"))
            raise ConfigError(f"unknown builtin eval set {eval_cfg.name!r}; known: {known}", where="eval.name")
        return p
    if eval_cfg.source != "path":
        raise ConfigError(f"eval.source={eval_cfg.source!r}; known: builtin, registry, path", where="eval.source")
    if not eval_cfg.path:
        raise ConfigError(f"eval.source={eval_cfg.source} needs eval.path", where="eval.path")
    return Path(eval_cfg.path).expanduser()


def select(qs: list[Question], eval_cfg) -> list[Question]:
    """`eval.variants` (plain/json/template, by id suffix) then `eval.max_questions`."""
    vs = eval_cfg.get("variants")
    if vs is not None:
        bad = [v for v in vs if v not in VARIANTS]
        if bad or not vs:
            raise ConfigError(f"eval.variants={list(vs)}; choose among {list(VARIANTS)}", where="eval.variants")
        qs = [q for q in qs if variant(q.id) in vs]
        if not qs:
            raise ConfigError(f"no question of eval set {eval_cfg.name!r} has a variant in {list(vs)}",
                              where="eval.variants")
    return qs[: eval_cfg.max_questions] if eval_cfg.max_questions else qs


def questions(cfg) -> list[Question]:
    """The cell's questions: resolved, loaded, validated and selected."""
    return select(load(resolve_path(cfg.eval, cfg.paths)), cfg.eval)
