"""Fixtures shared by every test: real data locations, converted datasets, RNG isolation, one thread.

Data: tests that need CIFAR-10 images take ``cifar10_source``, which is the real CIFAR-10 at
``../shared/data/cifar-10-batches-bin`` when it is there and the shipped 5,000-image sample
(``data/cifar10-sample``) otherwise, so a fresh clone passes. Tests whose checks only hold on
the full split (the 50,000/10,000 counts, the published statistics) take ``full_cifar10_source``
or ``cifar10_dir`` instead, which skip, saying where to put the data, when it is absent. Under
``CI=true`` nothing falls back or skips: the session stops at its start when the real data is missing.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent
CIFAR10_SOURCE = REPO_ROOT.parent / "shared" / "data" / "cifar-10-batches-bin"
_PUT_IT_THERE = f"put the official cifar-10-batches-bin folder at {CIFAR10_SOURCE}"


def _has_real_cifar10() -> bool:
    return (CIFAR10_SOURCE / "test_batch.bin").is_file()


def pytest_sessionstart(session: pytest.Session) -> None:
    # CI must test on the real data: stop here with one line rather than fall back or skip silently.
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") and not _has_real_cifar10():
        raise pytest.UsageError(f"CI runs need the real CIFAR-10 and it is missing: {_PUT_IT_THERE}")


def pytest_report_header(config: pytest.Config) -> str:
    if _has_real_cifar10():
        return f"CIFAR-10: the real data at {CIFAR10_SOURCE}"
    return f"CIFAR-10: the shipped sample; tests that need the full split skip ({_PUT_IT_THERE})"


@pytest.fixture(scope="session")
def full_cifar10_source() -> Path:
    """The real CIFAR-10 in the official binary layout (50,000 / 10,000 images); skips without it."""
    if not _has_real_cifar10():
        pytest.skip(f"needs the full CIFAR-10 (50,000/10,000 images): {_PUT_IT_THERE}")
    return CIFAR10_SOURCE


@pytest.fixture(scope="session")
def cifar10_source() -> Path:
    """Real CIFAR-10 images in the official binary layout: the full set if present, else the shipped sample."""
    from fasttarget.demo import SAMPLE_SOURCE

    return CIFAR10_SOURCE if _has_real_cifar10() else SAMPLE_SOURCE


@pytest.fixture(scope="session")
def cifar10_dir(full_cifar10_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full real CIFAR-10 converted once per session (50,000 / 10,000 samples); skips without it."""
    from fasttarget.convert import ConvertConfig, convert

    out = tmp_path_factory.mktemp("cifar10")
    convert(ConvertConfig("cifar10", full_cifar10_source, out, force=True, progress=False))
    return out


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled CIFAR-10 sample (5,000 / 1,000 samples) converted once per session."""
    from fasttarget.convert import ConvertConfig, convert
    from fasttarget.demo import SAMPLE_SOURCE

    out = tmp_path_factory.mktemp("cifar10-sample")
    convert(ConvertConfig("cifar10", SAMPLE_SOURCE, out, force=True, progress=False))
    return out


@pytest.fixture(scope="session")
def small_sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample's first 640 train and 200 test images, converted: for tests that run whole
    commands (a cache build scores every train image, an evaluation every test image)."""
    from fasttarget.convert import ConvertConfig, convert
    from fasttarget.demo import SAMPLE_SOURCE

    source = tmp_path_factory.mktemp("cifar10-small-source") / "cifar-10-batches-bin"
    source.mkdir()
    record = 1 + 32 * 32 * 3  # CIFAR-10 binary: a label byte, then the pixels
    for name, count in (("data_batch_1.bin", 640), ("test_batch.bin", 200)):
        (source / name).write_bytes((Path(SAMPLE_SOURCE) / name).read_bytes()[: count * record])
    (source / "batches.meta.txt").write_bytes((Path(SAMPLE_SOURCE) / "batches.meta.txt").read_bytes())
    out = tmp_path_factory.mktemp("cifar10-small")
    convert(ConvertConfig("cifar10", source, out, force=True, progress=False))
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
