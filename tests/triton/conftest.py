"""The Triton kernels run on CPU tensors through Triton's interpreter in these tests. The
variable must be set before the kernels are decorated, i.e. before crs_fast imports them."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
