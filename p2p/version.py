"""The version of p2p, a primitive every writer of a versioned file reads (shards, model folders)
without importing the package's face (p2p/__init__.py, which reaches p2p.api)."""

__version__ = "0.1.0"  # pyproject.toml says the same
