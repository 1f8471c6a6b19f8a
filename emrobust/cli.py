"""`emrobust`: the Hydra app (one cell, or a sweep with -m), or a verb: sweep, analyze, rescore, data."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .config import register
from .models import CONF_DIR

VERBS = ("sweep", "analyze", "rescore", "data")
GROUPS = ("base_model", "trait", "question_diversity", "introspection", "em_dataset", "em_train", "eval",
          "experiment", "debug", "em_control", "deepspeed")
log = logging.getLogger("emrobust")

register()


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> dict:
    from . import pipeline

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    choices = {k: v for k, v in hc.runtime.choices.items() if k in GROUPS}
    try:
        group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
        summary = pipeline.run_cell(cfg, out, list(hc.overrides.task), choices, group)
        print(pipeline.format_metrics(summary))
        return summary
    finally:
        from . import distributed

        if hc.mode == RunMode.MULTIRUN and distributed.is_main():
            pipeline.write_sweep_csv(Path(hc.sweep.dir))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in VERBS:
        verb, rest = argv[0], argv[1:]
        if verb == "analyze":
            from analysis.report import main as analyze

            sys.exit(analyze(rest))
        if verb == "data":
            from .data.cli import main as data

            sys.exit(data(rest))
        if verb == "rescore":
            from .rescore import main as rescore

            sys.exit(rescore(rest))
        if verb == "sweep":
            from .sweep import main as sweep

            sys.exit(sweep(rest))
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    sys.argv = [sys.argv[0]] + argv
    app()


if __name__ == "__main__":
    main()
