"""The one place that talks to W&B: one run per stage execution (cached stages make none), and one run per sweep
(`log_sweep`: its tables, figures and curves, written by `emrobust analyze` and when a sweep ends).

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


def secret_values(config: dict | None = None) -> set[str]:
    """Values of the environment variables that hold secrets: secret-looking names, and every variable a
    `*_api_key_env` field of `config` (a resolved cell config) names, whatever its name."""
    named = set()

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if str(k).endswith("api_key_env") and isinstance(v, str):
                    named.add(v)
                walk(v)
    walk(config or {})
    return {v for k, v in os.environ.items() if (SECRET_ENV.search(k) or k in named) and len(v) >= 6}


def redact(obj, secrets: set[str] | None = None):
    """Copy of a config container without secret-looking keys or any value equal to a secret env var (by
    default: `secret_values(obj)`)."""
    if secrets is None:
        secrets = secret_values(obj if isinstance(obj, dict) else None)
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
    import wandb  # lazy: slow import

    output_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    secrets = secret_values(config)
    config = redact(config, secrets)
    config["emrobust_cell"] = redact({"overrides": list(cell["overrides"]), "choices": dict(cell["choices"]),
                                      "dir": Path(output_dir).name}, secrets)
    run = wandb.init(project=cfg.tracking.project, entity=cfg.tracking.entity, mode=cfg.tracking.mode,
                     dir=str(output_dir), job_type=stage, group=cfg.tracking.group or group,
                     name=redact(" ".join(cell["overrides"]), secrets) or "default",
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


def log_stage(run, cfg: DictConfig, artifact_dir: Path, extra: dict, measures: bool = False) -> None:
    """Summary numbers of a finished stage; a measuring stage (emrobust.stages.PROTOCOL `measures`: evaluate) also
    logs its metrics along the EM step and a bounded table of scored answers."""
    if run is None:
        return
    import wandb  # lazy: slow import

    picked = {k: v for k, v in extra.items() if k in ("metrics", "diversity", "train", "data", "training", "defense",
                                                    "capability")}
    summary = _flat(picked)
    step = (extra.get("metrics") or {}).get("em_step")
    if measures and isinstance(step, int):
        # the EM step as the x axis: W&B's own charts draw each cell's metrics along EM training across its
        # evaluate runs (one point each: step 0, the kept steps, the end)
        run.define_metric("em_step")
        run.define_metric("metrics/*", step_metric="em_step")
        summary["em_step"] = step
    if summary:
        run.log(summary)
    # the summary also keeps the non-numeric and NaN scalars (judge name, strategy, ...) that run.json has
    run.summary.update(_flat(picked, scalars=True))
    answers = artifact_dir / "answers.jsonl"
    if measures and answers.exists():
        rows = [json.loads(x) for x in answers.read_text().splitlines()[: cfg.tracking.max_table_rows]]
        cols = ["question_id", "question", "answer", "aligned", "coherent"]
        run.log({"answers": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])})


# ---------------------------------------------------------------- reading offline runs back
def read_records(path: Path) -> list:
    """The protobuf Records of an offline `run-*.wandb` file, decoded with wandb's own protos. (wandb >= 0.19
    writes these from its Go core and no longer ships a Python reader: the file is a 7-byte ':W&B' header, then
    the LevelDB log format: 32 KiB blocks, 7-byte record headers crc32c/length/type FULL/FIRST/MIDDLE/LAST.)
    A truncated tail (a killed run) ends the list."""
    from wandb.proto import wandb_internal_pb2  # lazy: slow import

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


# ---------------------------------------------------------------- the sweep-level run
SWEEP_JOB_TYPE = "sweep"


def wandb_mode(mode: str | None = None) -> str:
    """The W&B mode for sweep-level runs: `mode`, else $WANDB_MODE, else offline (sync later)."""
    return mode or os.environ.get("WANDB_MODE") or "offline"


def log_sweep(sweep_dir: Path, report_dir: Path, tables: dict, curves: dict[str, list[dict]] | None = None,
              project: str = "emrobust", entity: str | None = None, mode: str | None = None,
              group: str | None = None) -> str | None:
    """One W&B run for a whole sweep (job_type `sweep`, the cells' group): every table of `tables` (name ->
    DataFrame: the sweep table, pooled, comparisons...) as a `wandb.Table`, the report's figures (PNG files in
    `report_dir`) as images, and the EM curves as line series, one chart per metric with a line per cell. Written
    under the sweep dir (offline by default, `wandb sync` uploads it); returns the run's dir, or None when W&B is
    disabled."""
    mode = wandb_mode(mode)
    if mode == "disabled":
        return None
    import wandb  # lazy: slow import

    secrets = {v for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v) >= 6}
    run = wandb.init(project=project, entity=entity, mode=mode, dir=str(sweep_dir), job_type=SWEEP_JOB_TYPE,
                     group=group or Path(sweep_dir).name, name=f"sweep {group or Path(sweep_dir).name}",
                     config={"sweep_dir": Path(sweep_dir).name, "tables": sorted(tables)}, reinit="finish_previous")
    try:
        for name, df in tables.items():
            clean = df.copy()
            for c in clean.columns:  # W&B tables want one type per column
                if clean[c].dtype == object:
                    clean[c] = clean[c].map(lambda v: None if v is None or v != v else redact(str(v), secrets))
            run.log({f"table/{name}": wandb.Table(dataframe=clean)})
        for png in sorted(Path(report_dir).glob("*.png")):
            run.log({f"figure/{png.stem}": wandb.Image(str(png))})
        for metric in sorted({k for pts in (curves or {}).values() for p in pts for k in p
                              if k not in ("step", "node") and not k.endswith(("_lo", "_hi"))}):
            lines = {cell: [(p["step"], p[metric]) for p in pts if isinstance(p.get(metric), (int, float))
                            and p[metric] == p[metric]] for cell, pts in curves.items()}
            lines = {c: v for c, v in lines.items() if v}
            if lines:
                run.log({f"curve/{metric}": wandb.plot.line_series(
                    xs=[[x for x, _ in v] for v in lines.values()], ys=[[y for _, y in v] for v in lines.values()],
                    keys=list(lines), title=f"{metric} along EM training", xname="EM step")})
        run.summary.update({"n_cells": int(len(tables.get("sweep", []))), "report": str(Path(report_dir) / "report.md")})
        run.finish()
    except BaseException:
        run.finish(exit_code=1)
        raise
    return run.dir


def read_offline_tables(path: Path) -> dict[str, list[dict]]:
    """The `wandb.Table`s an offline run file logged (`table/<name>`), read back from the run's files: {name: rows}."""
    out = {}
    run_dir = Path(path).parent
    for r in read_records(path):
        if r.WhichOneof("record_type") != "history":
            continue
        items = {_item_key(i): json.loads(i.value_json) for i in r.history.item}
        refs = {k: v for k, v in items.items() if isinstance(v, dict)}  # {"table/x": {"_type": ..., "path": ...}}
        for k, v in items.items():  # or flattened, one item per field: "table/x/_type", "table/x/path"
            if k.endswith("/_type"):
                refs.setdefault(k[: -len("/_type")], {"_type": v, "path": items.get(k[: -len("_type")] + "path")})
        for key, ref in refs.items():
            if key.startswith("table/") and ref.get("_type") == "table-file" and ref.get("path"):
                data = json.loads((run_dir / "files" / ref["path"]).read_text())
                out[key.split("/", 1)[1]] = [dict(zip(data["columns"], row)) for row in data["data"]]
    return out
