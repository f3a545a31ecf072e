"""Test-wide setup. Triton kernels run on CPU tensors under its interpreter when no GPU is
present; TRITON_INTERPRET must be set before triton is first imported."""

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Under pytest-xdist (`python3 dev.py test` runs a worker per core) the cores are shared:
# each worker's intra-op threads get its share, so that workers do not oversubscribe them.
# OMP_NUM_THREADS too, for the subprocesses a test starts: a run killed in a subprocess and
# resumed must reduce in the same order (thread count) as the in-process run it is compared
# with, bit for bit.
if (_workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    _threads = max(1, (_cores or 1) // _workers)
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


@pytest.fixture
def gen(request) -> torch.Generator:
    """A generator with a fresh seed per test (printed on failure, to replay it)."""
    seed = random.SystemRandom().randrange(2**31)
    request.node.user_properties.append(("seed", seed))
    print(f"random seed: {seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def one_thread():
    """Tiny models on 2 busy cores: intra-op threads only add synchronisation."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
