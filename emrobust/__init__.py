"""emrobust: one Hydra app for OCT persona training, EM fine-tuning and evaluation (the README is the guide).

The package's rooms: `engine/` (one cell: stage graph, store, keys, validation), `stages/` (one module per stage),
`config/` and `data/` (what a cell is made of), `generation/`, `judges/`, `measures/`, `train/` (what the stages
call), `sweeps/` (many cells on Slurm), `analysis/` (the report) and `cli.py`. `CONF_DIR` is defined here, at the
root every module already imports, so that `data/` and `engine/` can read the presets without importing each other.
"""
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# conf/ ships inside the wheel as emrobust/conf/ (pyproject.toml maps one onto the other): the installed copy when
# there is one, else the source tree's conf/ beside the package (an editable install)
CONF_DIR = _HERE / "conf" if (_HERE / "conf" / "config.yaml").is_file() else _HERE.parent / "conf"
