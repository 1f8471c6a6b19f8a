"""Hydra only takes launchers defined in the `hydra_plugins` package; what this one does lives with the rest of
the Slurm code in `emrobust/cluster.py`."""
from emrobust import cluster


class SlurmLauncher(cluster.SlurmLauncher):
    """hydra-submitit-launcher's Slurm launcher; failed cells fail their job, killed cells fail in sweep.csv."""
