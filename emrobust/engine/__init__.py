"""The engine: what runs one cell. Its stage graph and run loop (pipeline), the content-addressed store and the key
rule (store, keys), composing a cell and checking its input before a model loads (compose, validation, leakage),
base-model weights and multi-process runs (models, distributed), and the records a run leaves: run.json tables and
W&B (results, tracking). Nothing is imported here: `emrobust.core.compose` and `results` stay torch-free."""
