"""emrobust installed from a built wheel (not the source tree): configs and built-in data come from the package."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import CACHE, ROOT, SHARED_DATA

PROBE = """
import json, sys
import emrobust, emrobust.analysis as analysis, hydra_plugins.emrobust_launcher.slurm
from emrobust import CONF_DIR
from emrobust.data import em_datasets, evalsets
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
launchers = [f"{p.__module__}.{p.__name__}" for p in Plugins.instance().discover(Launcher)]
print(json.dumps({"emrobust": emrobust.__file__, "analysis": analysis.__file__, "conf": str(CONF_DIR),
                  "em": str(em_datasets.BUILTIN), "eval": str(evalsets.BUILTIN), "launchers": launchers}))
"""


def _sources(dst: Path) -> Path:
    """The files git would commit (tracked, and untracked but not ignored), copied: the build leaves nothing in
    the checkout."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for f in files:
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    return dst


def test_wheel_installs_and_runs_a_cell_outside_the_repo(tmp_path, tiny_path):
    src = _sources(tmp_path / "src")
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "dist").glob("emrobust-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"emrobust", "hydra_plugins"}, tops  # no top-level `analysis` to clash with another package
    # every module of the source tree: a subpackage left out of pyproject's list would otherwise be found by the
    # editable install's finder in the checkout, and the cell below would pass without it (emrobust.judges did)
    modules = {str(p.relative_to(src)) for d in ("emrobust", "hydra_plugins") for p in (src / d).rglob("*.py")}
    assert modules <= set(names), sorted(modules - set(names))
    target = tmp_path / "site"
    # no dependency resolved or installed: the test environment's are reused
    subprocess.run([*pip, "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, text=True)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "EMROBUST_CACHE": CACHE, "EMROBUST_DATA_MIRROR": str(SHARED_DATA),
           "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    env.pop("EMROBUST_ROOT", None)
    import json

    p = subprocess.run([sys.executable, "-c", PROBE], cwd=work, env=env, capture_output=True, text=True, check=True)
    where = json.loads(p.stdout.strip().splitlines()[-1])
    for k in ("emrobust", "analysis", "conf", "em", "eval"):
        assert Path(where[k]).resolve().is_relative_to(target.resolve()), (k, where[k])
        assert not Path(where[k]).resolve().is_relative_to(ROOT), (k, where[k])
    assert "hydra_plugins.emrobust_launcher.slurm.SlurmLauncher" in where["launchers"]
    run = subprocess.run([sys.executable, "-m", "emrobust.cli", "debug=tiny", "hydra.run.dir=run"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    summary = json.loads((work / "run" / "run.json").read_text())
    assert summary["status"] == "ok" and (work / "artifacts").is_dir()
