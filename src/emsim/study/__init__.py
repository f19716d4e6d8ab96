"""The study: its YAML config (schema, defaults, sweeps), the grid of models, result paths, findings."""
