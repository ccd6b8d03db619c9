"""Benchmarks of every op against the PyTorch reference, torch.compile of it and the published
implementations, with the machine's measured limits (``crs-fast bench`` / ``python -m bench.run``)."""
