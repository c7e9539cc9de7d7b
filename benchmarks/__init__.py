"""Benchmarks of flask_dill_session against its peers: ``python -m benchmarks.run``."""
