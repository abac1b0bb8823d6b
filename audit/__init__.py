"""audit: audit tabular machine-learning models from one YAML config."""

__version__ = "0.1.0"
