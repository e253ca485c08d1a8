"""Fixtures shared by every test: real data locations, converted datasets, RNG isolation, one thread."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent
CIFAR10_SOURCE = REPO_ROOT.parent / "shared" / "data" / "cifar-10-batches-bin"


@pytest.fixture(scope="session")
def cifar10_source() -> Path:
    """The real CIFAR-10 in the official binary layout (``../shared/data/cifar-10-batches-bin``)."""
    if not (CIFAR10_SOURCE / "test_batch.bin").is_file():
        pytest.fail(f"real CIFAR-10 not found at {CIFAR10_SOURCE}: these tests need the shared data folder")
    return CIFAR10_SOURCE


@pytest.fixture(scope="session")
def cifar10_dir(cifar10_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full real CIFAR-10 converted once per session (50,000 / 10,000 samples)."""
    from fasttarget.convert import ConvertConfig, convert

    out = tmp_path_factory.mktemp("cifar10")
    convert(ConvertConfig("cifar10", cifar10_source, out, force=True, progress=False))
    return out


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled CIFAR-10 sample (5,000 / 1,000 samples) converted once per session."""
    from fasttarget.convert import ConvertConfig, convert
    from fasttarget.demo import SAMPLE_SOURCE

    out = tmp_path_factory.mktemp("cifar10-sample")
    convert(ConvertConfig("cifar10", SAMPLE_SOURCE, out, force=True, progress=False))
    return out


@pytest.fixture
def one_thread():
    """One intra-op thread: on the shared 2-core machine OpenMP spinning makes two far slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _reset_rng_state():
    """Seed the global RNGs before each test so no test depends on another's random draws."""
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
