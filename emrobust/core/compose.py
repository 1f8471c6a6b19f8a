"""Composing a cell: the config groups and Hydra's compose API over `CONF_DIR` (the package root's: the wheel's
copy of conf/ or the source tree's). A leaf module: it imports neither torch nor any stage.
"""
from __future__ import annotations

import copy
import functools

from hydra import compose as hcompose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from .. import CONF_DIR
from ..config import register
from ..errors import ConfigError
from .keys import field_at

# the experiment's config groups whose choice each run records (run.json `choices`, sweep.csv, W&B)
GROUPS = ("base_model", "trait", "question_diversity", "introspection", "character_scale", "em_dataset", "em_train",
          "eval", "judge", "experiment", "debug", "em_control", "defense", "deepspeed")


def compose(overrides: list[str] | tuple[str, ...] = (), hydra: bool = False):
    """One cell's config, composed as the app composes it (the same config dir and schema, `check_choices`).
    With `hydra=True` the `hydra` node (launcher, sweeper, runtime choices) is kept."""
    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hcompose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        check_choices(cfg.hydra.runtime.choices, GlobalHydra.instance().config_loader())
    if not hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def check_choices(runtime_choices, loader) -> None:
    """Hydra skips an `optional` group's option that does not exist without a word (`experiment=nosuch` would run
    the default cell): ConfigError naming it, with the options there are (`loader`: Hydra's config loader)."""
    for group, option in dict(runtime_choices).items():
        if option is None or group.startswith("hydra/"):
            continue
        if (CONF_DIR / group / f"{option}.yaml").is_file():  # there: no need to list the group (20 ms a group)
            continue
        options = loader.get_group_options(group)
        if options and str(option) not in options:  # (a group without options is a bare choice, e.g. persona)
            raise ConfigError(f"no such option; choose one of: {', '.join(sorted(options))}", where=f"{group}={option}")


def choices(runtime_choices) -> dict[str, str]:
    """The recorded group choices of a composed cell (Hydra's runtime choices, GROUPS only)."""
    return {k: v for k, v in dict(runtime_choices).items() if k in GROUPS}


def preset(group: str, name: str, where: str | None = None):
    """The option `conf/<group>/<name>.yaml` on its own, validated against the group's schema (e.g. a judge panel's
    member); ConfigError naming the options when there is no such file."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        raise ConfigError(f"no {group} preset {name!r}; known: {known}", file=str(path), where=where or group)
    st = path.stat()
    return copy.deepcopy(_preset(group, str(path), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=128)
def _preset(group: str, path: str, mtime_ns: int, size: int):
    """Built once per process while the file is unchanged (a structured schema and a merge: 8 ms, asked for by
    every plan of a judge panel or a tiny model; `preset` hands out copies)."""
    return OmegaConf.merge(OmegaConf.structured(field_at(group)[0]), OmegaConf.load(path))
