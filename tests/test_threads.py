"""ffcv resets thread counts as a side effect; fasttarget's ffcv calls must leave the caller's."""

import numba
import pytest
import torch

from fasttarget.dataset import read_labels, read_split
from fasttarget.loader import LoaderConfig, build_loader
from fasttarget.threads import kept_threads


@pytest.fixture
def one_thread_each():
    before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(before[0])
    numba.set_num_threads(before[1])


def test_kept_threads_restores_what_the_block_changed(one_thread_each):
    with kept_threads():
        torch.set_num_threads(2)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    assert (torch.get_num_threads(), numba.get_num_threads()) == (1, 1)


def test_reading_and_loading_through_ffcv_keeps_the_callers_threads(sample_dir, one_thread_each):
    # ffcv alone would leave torch and numba at num_workers (2) after each of these calls.
    read_split(sample_dir, "test", num_workers=2)
    assert (torch.get_num_threads(), numba.get_num_threads()) == (1, 1)
    read_labels(sample_dir, "test")
    loader = build_loader(LoaderConfig(data_dir=sample_dir, split="test", batch_size=100, backend="ffcv",
                                       num_workers=2, shuffle=False, drop_last=False))
    assert (torch.get_num_threads(), numba.get_num_threads()) == (1, 1)
    batch = next(iter(loader))
    assert batch.images.shape[0] == 100
    assert (torch.get_num_threads(), numba.get_num_threads()) == (1, 1)
