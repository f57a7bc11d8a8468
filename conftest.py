"""Test-session set-up shared by ``tests/`` and ``hil/``."""

import os

# The physics solves many small systems; several pytest workers and emulated boards share two
# cores, and a multi-threaded BLAS spinning on both only slows everyone down.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
