"""emrobust's Hydra launcher plugins (Hydra only instantiates launchers from the hydra_plugins package)."""
