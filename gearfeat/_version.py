"""The version of gearfeat: one source, read by the package, the cache fingerprint and pyproject.toml."""
__version__ = "0.1.0"
