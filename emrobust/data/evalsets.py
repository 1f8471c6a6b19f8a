"""EM evaluation question sets in the Betley et al. YAML schema, read as they are."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ConfigError

BUILTIN = Path(__file__).parent / "builtin" / "eval"


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


def resolve_path(eval_cfg) -> Path:
    if eval_cfg.source == "builtin":
        p = BUILTIN / f"{eval_cfg.name}.yaml"
        if not p.exists():
            known = sorted(x.stem for x in BUILTIN.glob("*.yaml"))
            raise ConfigError(f"unknown builtin eval set {eval_cfg.name!r}; known: {known}", where="eval.name")
        return p
    if not eval_cfg.path:
        raise ConfigError(f"eval.source={eval_cfg.source} needs eval.path", where="eval.path")
    return Path(eval_cfg.path).expanduser()
