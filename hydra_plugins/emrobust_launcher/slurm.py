"""Hydra only takes launchers defined in the `hydra_plugins` package; what this one does lives with the other
submission path, `emrobust sweep`, in `emrobust/sweeps/sweep.py` (both pass `sweep.check` and wait in `cluster.collect`)."""
from emrobust.sweeps import sweep


class SlurmLauncher(sweep.SlurmLauncher):
    """hydra-submitit-launcher's Slurm launcher; failed cells fail their job, killed cells fail in sweep.csv."""
