"""What every room stands on: the content-addressed store (store), the one key rule (keys), composing a config
(compose), base-model weights (models), multi-process ranks (distributed), and the records a run leaves: run.json
rows and tables (results) and W&B (tracking). Nothing is imported here: `compose` and `results` stay torch-free."""
