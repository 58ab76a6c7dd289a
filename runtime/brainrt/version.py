"""The package version (as in pyproject.toml), in a module of its own so that run records can name it."""

__version__ = "0.1.0"
