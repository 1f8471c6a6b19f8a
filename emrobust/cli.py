"""`emrobust`: the Hydra app (one cell, or a sweep with -m), or a verb: sweep, analyze, rescore, data, judge.

Importing this module imports neither torch nor any stage: the verbs that only read results (`analyze`,
`data list|verify`, `rescore --help`) work where torch is not installed; a cell imports the pipeline when it runs.
"""
from __future__ import annotations

import os
import sys

from .compose import CONF_DIR

VERBS = {
    "sweep": "plan a multirun on the login node and submit it to Slurm: shared stages once, then the cells",
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
"""


def usage() -> str:
    verbs = "\n".join(f"  {v:<9} {what}" for v, what in VERBS.items())
    groups = ", ".join(sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra",)))
    return USAGE.format(verbs=verbs, groups=groups)


def app_main() -> None:
    """The Hydra app: one cell per job (`-m`: every cell of the sweep, one after another or on Slurm)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig

    from .config import register

    register()

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def app(cfg: DictConfig) -> dict:
        from pathlib import Path

        from . import distributed, pipeline, results
        from .compose import choices

        hc = HydraConfig.get()
        try:
            group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
            summary = pipeline.run_cell(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task),
                                        choices(hc.runtime.choices), group)
            print(results.format_metrics(summary))
            return summary
        finally:
            if hc.mode == RunMode.MULTIRUN and distributed.is_main():
                results.write_sweep_csv(Path(hc.sweep.dir))

    app()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0)
    if argv and argv[0] in VERBS:
        verb, rest = argv[0], argv[1:]
        if verb == "analyze":
            from analysis.report import main as run
        elif verb == "data":
            from .data.cli import main as run
        elif verb == "rescore":
            from .rescore import main as run
        elif verb == "judge":
            from .judge_cli import main as run
        else:
            from .sweep import main as run
        sys.exit(run(rest))
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    sys.argv = [sys.argv[0]] + argv
    app_main()


if __name__ == "__main__":
    main()
