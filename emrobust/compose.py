"""Composing a cell: where the configs are, the config groups, and Hydra's compose API.

The configs are `conf/` in the source tree; a built wheel carries the same files as the package data
`emrobust/conf/` (pyproject.toml maps one onto the other), so `CONF_DIR` is the installed copy when there is one,
else the source tree's. A leaf module: it imports neither torch nor any stage.
"""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
CONF_DIR = _HERE / "conf" if (_HERE / "conf" / "config.yaml").is_file() else _HERE.parent / "conf"

# the experiment's config groups whose choice each run records (run.json `choices`, sweep.csv, W&B)
GROUPS = ("base_model", "trait", "question_diversity", "introspection", "em_dataset", "em_train", "eval", "judge",
          "experiment", "debug", "em_control", "defense", "deepspeed")


def compose(overrides: list[str] | tuple[str, ...] = (), hydra: bool = False):
    """One cell's config, composed as the app composes it (the same config dir and schema). With `hydra=True`
    the `hydra` node (launcher, sweeper, runtime choices) is kept."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .config import register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hcompose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


def choices(runtime_choices) -> dict[str, str]:
    """The recorded group choices of a composed cell (Hydra's runtime choices, GROUPS only)."""
    return {k: v for k, v in dict(runtime_choices).items() if k in GROUPS}
