"""`emrobust`: the Hydra app (one cell, or a sweep with -m), or a verb: sweep, analyze, rescore, data, judge.

Importing this module imports neither torch nor any stage: the verbs that only read results (`analyze`,
`data list|verify`, `rescore --help`) work where torch is not installed; a cell imports the pipeline when it runs.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from . import CONF_DIR
from .config import register
from .core.compose import check_choices, choices
from .errors import debugging, note_failure, report

VERBS = {
    "sweep": "plan a multirun on the login node and submit it to Slurm: shared stages once, then the cells",
    "status": "one line per cell of a sweep (pending, running, done, failed): emrobust status <sweep dir> [--watch]",
    "analyze": "tables, plots and a report from sweep dirs (or W&B runs): emrobust analyze <sweep dir>",
    "rescore": "score saved answers again with another judge: emrobust rescore <run|sweep dir> judge=<name>",
    "data": "the dataset registry: emrobust data list | fetch NAME... | verify",
    "judge": "how good a judge is: emrobust judge calibrate judge=<name> | label export | label import",
}
USAGE = """usage: emrobust [OVERRIDES...]            run one cell (Hydra overrides, e.g. trait=none seed=1)
       emrobust -m [OVERRIDES...]         a multirun: every combination of comma-separated values
       emrobust VERB [ARGS...]            one of the verbs below (emrobust VERB --help)

verbs:
{verbs}

config groups (conf/, pick one with group=option): {groups}
Hydra's own options: emrobust --hydra-help; the composed config: emrobust --cfg job [OVERRIDES...]
A bad input is one line `emrobust: error: <where>: <what>` (exit 2), a failed run names its stage and log (exit 1);
EMROBUST_DEBUG=1 (or HYDRA_FULL_ERROR=1) shows the traceback instead.
"""


def usage() -> str:
    verbs = "\n".join(f"  {v:<9} {what}" for v, what in VERBS.items())
    groups = ", ".join(sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra",)))
    return USAGE.format(verbs=verbs, groups=groups)


def app_main() -> None:
    """The Hydra app: one cell per job (`-m`: every cell of the sweep, one after another or on Slurm). A single
    cell's failure is raised after Hydra returns (so the CLI reports it as one line, without Hydra's own
    "Error executing job" line); a multirun's are Hydra's, raised at the end of the sweep."""
    register()
    failed: list[BaseException] = []

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def app(cfg: DictConfig) -> dict | None:
        from .engine import pipeline  # lazy: torch-free verbs

        hc = HydraConfig.get()
        out = Path(hc.runtime.output_dir)
        sweep = Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
        try:
            loader = GlobalHydra.instance().config_loader()
            return pipeline.run_job(cfg, out, list(hc.overrides.task), choices(hc.runtime.choices),
                                    sweep.name if sweep else None, sweep,
                                    checks=lambda: check_choices(hc.runtime.choices, loader))
        except Exception as e:
            note_failure(e, log=str(out / f"{hc.job.name}.log"), run_json=str(out / "run.json"))
            if hc.mode == RunMode.RUN:
                failed.append(e)
                return None
            raise

    app()
    if failed:
        raise failed[0]


def _verb(verb: str):
    if verb == "analyze":
        from emrobust.analysis.report import main as run  # lazy: slow import
    elif verb == "data":
        from .data.cli import main as run  # lazy: per verb
    elif verb == "rescore":
        from .sweeps.rescore import main as run  # lazy: per verb
    elif verb == "status":
        from .sweeps.status import main as run  # lazy: per verb
    elif verb == "judge":
        from .measures.judge_cli import main as run  # lazy: per verb
    else:
        from .sweeps.sweep import main as run  # lazy: per verb
    return run


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0)
    debug = debugging()
    try:
        if argv and argv[0] in VERBS:
            sys.exit(_verb(argv[0])(argv[1:]))
        # Hydra re-raises instead of printing its own trimmed traceback: the error is reported below
        os.environ["HYDRA_FULL_ERROR"] = "1"
        sys.argv = [sys.argv[0]] + argv
        app_main()
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as e:
        text, code = report(e)
        if debug:  # the traceback too; the exit code stays the error's
            traceback.print_exc()
        print(text, file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
