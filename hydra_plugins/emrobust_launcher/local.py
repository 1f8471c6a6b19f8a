"""`hydra/launcher=local` (the default): Hydra's basic launcher (the cells of a multirun one after another in this
process), after every cell has been validated (emrobust.engine.validation): a bad input in any cell stops the sweep
before the first model loads, naming the cell and the field."""
from hydra._internal.core_plugins.basic_launcher import BasicLauncher


class LocalLauncher(BasicLauncher):
    def launch(self, job_overrides, initial_job_idx):
        from emrobust.sweeps.checks import validate_cells  # here, not at import: Hydra imports every plugin module

        validate_cells(job_overrides, self.hydra_context.config_loader, self.config, initial_job_idx)
        return super().launch(job_overrides, initial_job_idx)
