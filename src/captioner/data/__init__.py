"""Data: caption formats, preparation, the generated shapes benchmark, loading and feature caches."""
