"""The one place that talks to W&B: one run per stage execution (cached stages make none).

job_type = the node (the stage, or e.g. `evaluate@start`), group = the sweep, name = the cell's override string,
config = the resolved cell config with anything secret-looking removed, dir under the cell's output dir. Trainers log their curves into the
active run (`report_to`). Offline runs are uploaded later with `wandb sync <output dir>/wandb/offline-run-*`.
The config also carries `emrobust_cell` (the cell's overrides, Hydra choices and output dir name) so that
`emrobust analyze --wandb/--wandb-dir` rebuilds the same table rows as from the cells' run.json files;
`read_offline_run` reads an offline `run-*.wandb` file back (config, summary, exit state).
"""
from __future__ import annotations

import json
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.I)
SECRET_ENV = re.compile(r"(API_KEY|TOKEN|SECRET|PASSWORD)", re.I)


def redact(obj, secrets: set[str] | None = None):
    """Copy of a config container without secret-looking keys or any value equal to a secret env var."""
    if secrets is None:
        secrets = {v for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v) >= 6}
    if isinstance(obj, dict):
        return {k: ("<redacted>" if SECRET_KEY.search(str(k)) and not str(k).endswith("_env") else redact(v, secrets))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str) and any(s in obj for s in secrets):
        return "<redacted>"
    return obj


_ACTIVE = None  # the run of the stage executing in this process, if tracked


def report_to() -> list[str]:
    """`report_to` for the trainers: into the active stage run, if there is one."""
    return ["wandb"] if _ACTIVE is not None else []


def _flat(d: dict, prefix: str = "", scalars: bool = False) -> dict:
    """Nested dict -> {"a/b": number}; with scalars=True also strings, bools, None and NaN (W&B stores NaN as null)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}/", scalars)
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v)):
            out[f"{prefix}{k}"] = v
        elif scalars and (v is None or isinstance(v, (str, bool, float))):
            out[f"{prefix}{k}"] = v
    return out


@contextmanager
def stage_run(cfg: DictConfig, stage: str, key: str, output_dir: Path, cell: dict, group: str | None):
    """A W&B run around one stage execution (a no-op when tracking is off). `cell`: what run.json knows about the
    cell besides its results (`overrides`, Hydra `choices`); stored in the config as `emrobust_cell`."""
    if cfg.tracking.backend != "wandb" or cfg.tracking.mode == "disabled":
        yield None
        return
    import wandb

    output_dir.mkdir(parents=True, exist_ok=True)
    config = redact(OmegaConf.to_container(cfg, resolve=True))
    config["emrobust_cell"] = redact({"overrides": list(cell["overrides"]), "choices": dict(cell["choices"]),
                                      "dir": Path(output_dir).name})
    run = wandb.init(project=cfg.tracking.project, entity=cfg.tracking.entity, mode=cfg.tracking.mode,
                     dir=str(output_dir), job_type=stage, group=cfg.tracking.group or group,
                     name=" ".join(cell["overrides"]) or "default",
                     config={**config, "stage": stage, "stage_key": key}, reinit="finish_previous")
    global _ACTIVE
    _ACTIVE = run
    try:
        yield run
        run.finish()
    except BaseException:
        run.finish(exit_code=1)
        raise
    finally:
        _ACTIVE = None


def log_stage(run, cfg: DictConfig, stage: str, artifact_dir: Path, extra: dict) -> None:
    """Summary numbers of a finished stage; evaluate also logs a bounded table of scored answers."""
    if run is None:
        return
    import wandb

    picked = {k: v for k, v in extra.items() if k in ("metrics", "diversity", "train", "data", "training", "defense",
                                                    "capability")}
    summary = _flat(picked)
    if summary:
        run.log(summary)
    # the summary also keeps the non-numeric and NaN scalars (judge name, strategy, ...) that run.json has
    run.summary.update(_flat(picked, scalars=True))
    answers = artifact_dir / "answers.jsonl"
    if stage == "evaluate" and answers.exists():
        rows = [json.loads(x) for x in answers.read_text().splitlines()[: cfg.tracking.max_table_rows]]
        cols = ["question_id", "question", "answer", "aligned", "coherent"]
        run.log({"answers": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])})


# ---------------------------------------------------------------- reading offline runs back
def read_records(path: Path) -> list:
    """The protobuf Records of an offline `run-*.wandb` file, decoded with wandb's own protos. (wandb >= 0.19
    writes these from its Go core and no longer ships a Python reader: the file is a 7-byte ':W&B' header, then
    the LevelDB log format: 32 KiB blocks, 7-byte record headers crc32c/length/type FULL/FIRST/MIDDLE/LAST.)
    A truncated tail (a killed run) ends the list."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, raws, buf = Path(path).read_bytes(), 32768, 7, [], b""
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file (no ':W&B' header)")
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if pos + 7 + length > len(data):
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            raws.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            raws.append(buf + chunk)
    records = []
    for raw in raws:
        r = wandb_internal_pb2.Record()
        r.ParseFromString(raw)
        records.append(r)
    return records


def _item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(path: Path) -> dict:
    """An offline run file as the public API shows a synced run: id, name, job_type, group, config (values
    decoded), summary_metrics ("a/b" keys, the last value of each), state (finished|failed|crashed)."""
    out = {"id": None, "name": None, "job_type": None, "group": None, "config": {}, "summary_metrics": {},
           "state": "crashed", "created_at": None, "path": str(path)}
    for r in read_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out |= {"id": r.run.run_id, "name": r.run.display_name, "job_type": r.run.job_type,
                    "group": r.run.run_group or None, "created_at": r.run.start_time.ToJsonString()}
            out["config"] |= {_item_key(i): json.loads(i.value_json) for i in r.run.config.update}
        elif kind == "config":
            out["config"] |= {_item_key(i): json.loads(i.value_json) for i in r.config.update}
        elif kind == "summary":
            out["summary_metrics"] |= {_item_key(i): json.loads(i.value_json) for i in r.summary.update}
            for i in r.summary.remove:
                out["summary_metrics"].pop(_item_key(i), None)
        elif kind == "exit":
            out["state"] = "finished" if r.exit.exit_code == 0 else "failed"
    out["config"].pop("_wandb", None)
    return out
