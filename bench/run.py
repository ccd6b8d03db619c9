"""``python -m bench.run [--quick] [--ops ...] [--device cpu|cuda]``: see crs_fast.benchmarks.run.

The installed crs_fast is benchmarked: the repository root (which ``-m`` puts first on sys.path,
and whose source tree has no compiled kernels) is taken off the path before the import."""

import pathlib
import sys

_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _ROOT]

from crs_fast.benchmarks.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
