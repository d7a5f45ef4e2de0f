"""The benchmark suite of trollpush: ``python -m benchmarks.run`` (see README.md)."""
