"""The Triton kernels run on CPU tensors through Triton's interpreter in these tests, which need
TRITON_INTERPRET=1 set before Triton decorates any kernel: `make test` runs them in a pytest
process of their own with it set (TRITON_INTERPRET=1 pytest tests/triton). Collected without
it (and without CRS_FAST_TEST_DEVICE=cuda, the GPU run), they are deselected with a warning,
neither run nor counted."""

import os
import warnings


def pytest_collection_modifyitems(config, items):
    if os.environ.get("TRITON_INTERPRET") == "1" or os.environ.get("CRS_FAST_TEST_DEVICE") == "cuda":
        return
    mine = [item for item in items if "tests/triton/" in str(item.fspath).replace(os.sep, "/")]
    if mine:
        config.hook.pytest_deselected(items=mine)
        items[:] = [item for item in items if item not in mine]
        warnings.warn(
            f"{len(mine)} Triton tests deselected: run them as `TRITON_INTERPRET=1 pytest tests/triton`", stacklevel=1
        )
