"""General capability of a model: lm-eval (lm-evaluation-harness) tasks scored on the model in memory.

`eval.capability.tasks` names each task: one of ours, a YAML in lm-eval's task format in
emrobust/data/builtin/capability/ whose `data_files` are resolved against that folder (offline, in CI), or any task
lm-eval knows by name (on a cluster: its data comes from the hub). `lm_eval.simple_evaluate` runs them on an
`HFLM` wrapping the model and tokenizer the stage loaded (no second copy, no path round trip), with the stage's
seed for every seed lm-eval takes, and keeps each document's score.

Reported per task: `capability_<task>` (accuracy: lm-eval's `acc`, or `exact_match` for a generative task) with a
Wilson interval and `capability_<task>_n`; over tasks: `capability_acc`, their mean, with a bootstrap interval
(documents resampled within each task). Against a reference model (the starting model of an EM cell): the
difference per document, paired, `capability_retained` = the mean over tasks of (model minus reference) with its
bootstrap interval: 0 = nothing lost, -0.1 = ten points of accuracy lost.
"""
from __future__ import annotations

import hashlib
from importlib.metadata import version
from pathlib import Path

import numpy as np

from ..data import read_yaml
from ..errors import ConfigError

BUILTIN = Path(__file__).parents[1] / "data" / "builtin" / "capability"
SCORES = ("acc", "exact_match")  # the per-document score read, in this order


def builtin_tasks() -> dict[str, Path]:
    """{task name: its YAML} of our own tasks."""
    return {p.stem: p for p in sorted(BUILTIN.glob("*.yaml"))}


def _named(ccfg) -> list[str]:
    return [str(t) for t in ccfg.tasks if str(t) not in builtin_tasks()]


def validate(ccfg) -> None:
    """ConfigError naming `eval.capability.tasks` when a task is neither ours nor lm-eval's."""
    if not ccfg.enabled:
        return
    if not list(ccfg.tasks):
        raise ConfigError("eval.capability.tasks is empty (eval.capability.enabled=false turns it off)",
                          where="eval.capability.tasks")
    if ccfg.limit is not None and ccfg.limit < 1:
        raise ConfigError(f"eval.capability.limit={ccfg.limit} must be >= 1 (null = every document)",
                          where="eval.capability.limit")
    for name, path in builtin_tasks().items():
        if name in [str(t) for t in ccfg.tasks]:
            task_config(path)
    named = _named(ccfg)
    if named:
        try:
            from lm_eval.tasks import TaskManager  # lazy: slow import
        except ImportError as e:
            raise ConfigError(f"eval.capability.tasks={named} needs lm-eval (pip install lm-eval): {e}",
                              where="eval.capability.tasks") from None
        known = set(TaskManager().all_tasks)
        unknown = [t for t in named if t not in known]
        if unknown:
            raise ConfigError(f"unknown capability task(s) {unknown}: ours are {sorted(builtin_tasks())}, else a task "
                              "or group lm-eval lists (`lm-eval ls tasks`)", where="eval.capability.tasks")


def task_config(path: Path) -> dict:
    """Our task's YAML as an lm-eval task config, its `data_files` resolved against its folder."""
    cfg = read_yaml(path)
    files = ((cfg.get("dataset_kwargs") or {}).get("data_files")) if isinstance(cfg, dict) else None
    if not isinstance(cfg, dict) or not cfg.get("task") or not files:
        raise ConfigError("an emrobust capability task is an lm-eval task YAML with `task` and "
                          "`dataset_kwargs.data_files`", file=str(path))
    resolved = {}
    for split, rel in dict(files).items():
        f = (Path(path).parent / rel).resolve()
        if not f.is_file():
            raise ConfigError(f"data file {rel!r} of split {split!r} does not exist", file=str(path))
        resolved[split] = str(f)
    cfg["dataset_kwargs"] = {**cfg["dataset_kwargs"], "data_files": resolved}
    return cfg


def content(ccfg) -> dict[str, str] | None:
    """What the tasks are, for the capability key: our tasks' YAML and data sha256; for lm-eval's tasks, the
    lm-eval version that defines them."""
    if not ccfg.enabled:
        return None
    out = {}
    for t in ccfg.tasks:
        path = builtin_tasks().get(str(t))
        if path is None:
            out[str(t)] = f"lm_eval=={version('lm_eval')}"
            continue
        h = hashlib.sha256(path.read_bytes())
        for f in task_config(path)["dataset_kwargs"]["data_files"].values():
            h.update(Path(f).read_bytes())
        out[str(t)] = h.hexdigest()
    return out


def _score(sample: dict, task: str) -> float:
    for k in SCORES:
        if k in sample:
            return float(sample[k])
    raise ValueError(f"capability task {task}: no per-document {' or '.join(SCORES)} in lm-eval's samples")


def measure(model, tokenizer, ccfg, seed: int = 0, n_bootstrap: int = 2000) -> tuple[dict, list[dict]]:
    """(metrics, one row per document: task, doc_id, score) of the lm-eval tasks on `model`."""
    # lazy: slow import
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    ours = builtin_tasks()
    specs = [task_config(ours[str(t)]) if str(t) in ours else str(t) for t in ccfg.tasks]
    manager = TaskManager(include_defaults=bool(_named(ccfg)))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=int(ccfg.batch_size))
    was = model.training
    model.eval()
    res = lm_eval.simple_evaluate(model=lm, tasks=specs, task_manager=manager, num_fewshot=ccfg.num_fewshot,
                                  limit=ccfg.limit, log_samples=True, bootstrap_iters=0, random_seed=seed,
                                  numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    model.train(was)
    rows = [{"task": task, "doc_id": int(s["doc_id"]), "score": _score(s, task)}
            for task, samples in sorted(res["samples"].items()) for s in samples]
    return summarize(rows, n_bootstrap, seed) | {"capability_lm_eval": res.get("lm_eval_version")}, rows


def _by_task(rows: list[dict]) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {}
    for r in rows:
        out.setdefault(r["task"], []).append(float(r["score"]))
    return {t: np.array(v) for t, v in sorted(out.items())}


def _stratified(groups: dict[str, np.ndarray], n_bootstrap: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the mean over groups of each group's mean, documents resampled within groups."""
    rng = np.random.default_rng(seed)
    boots = np.zeros(n_bootstrap)
    for v in groups.values():
        boots += v[rng.integers(0, v.size, (n_bootstrap, v.size))].mean(1)
    boots /= max(len(groups), 1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(lo), float(hi)


def summarize(rows: list[dict], n_bootstrap: int = 2000, seed: int = 0) -> dict:
    from .metrics import wilson_interval  # lazy: slow import

    groups = _by_task(rows)
    out: dict = {}
    for t, v in groups.items():
        k = int(round(v.sum())) if np.isin(v, (0.0, 1.0)).all() else None
        lo, hi = wilson_interval(k, v.size) if k is not None else _stratified({t: v}, n_bootstrap, seed)
        out |= {f"capability_{t}": float(v.mean()), f"capability_{t}_lo": lo, f"capability_{t}_hi": hi,
                f"capability_{t}_n": int(v.size)}
    if groups:
        lo, hi = _stratified(groups, n_bootstrap, seed) if len(groups) > 1 else \
            (out[f"capability_{next(iter(groups))}_lo"], out[f"capability_{next(iter(groups))}_hi"])
        out |= {"capability_acc": float(np.mean([v.mean() for v in groups.values()])), "capability_acc_lo": lo,
                "capability_acc_hi": hi, "capability_tasks": ",".join(groups)}
    return out


def retained(rows: list[dict], reference: list[dict], n_bootstrap: int = 2000, seed: int = 0) -> dict:
    """`capability_retained`: the model's score minus the reference's on the same documents, averaged per task
    then over tasks, with a bootstrap interval over documents (paired, within tasks)."""
    ref = {(r["task"], r["doc_id"]): float(r["score"]) for r in reference}
    pairs: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if (r["task"], r["doc_id"]) in ref:
            pairs.setdefault(r["task"], []).append((float(r["score"]), ref[(r["task"], r["doc_id"])]))
    if not pairs:
        return {}
    groups = {t: np.array([a - b for a, b in v]) for t, v in sorted(pairs.items())}
    lo, hi = _stratified(groups, n_bootstrap, seed)
    return {"capability_retained": float(np.mean([v.mean() for v in groups.values()])), "capability_retained_lo": lo,
            "capability_retained_hi": hi,
            "capability_reference_acc": float(np.mean([np.mean([b for _, b in v]) for v in pairs.values()]))}
