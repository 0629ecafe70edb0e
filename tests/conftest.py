"""Shared test setup.

Tests use one torch thread: on a 2-core CI machine the tiny tensors of unit tests run several
times faster single-threaded (OpenMP spin-waits dominate otherwise), and timings do not matter
here (benchmarks live in bench/).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
