"""The stream order: batches cut across epoch boundaries, deterministic, resumable, on both backends."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from fasttarget.errors import UserError
from fasttarget.loader import LoaderConfig, ResidentLoader, build_loader, epoch_rows
from fasttarget.order import permuted, stream_batches, stream_rows
from fasttarget.subsets import SubsetConfig

needs_ffcv = pytest.mark.skipif(importlib.util.find_spec("ffcv") is None, reason="needs ffcv")


def whole_stream(pool, passes, batch_size, seed=0, rank=0, world_size=1):
    return np.concatenate([stream_rows(pool, seed=seed, epoch=e, shuffle=True, batch_size=batch_size, rank=rank,
                                       world_size=world_size) for e in range(passes)])


def test_every_sample_once_per_permutation_and_batches_cross_epochs():
    pool = np.arange(1000, 1100)  # 100 rows (IPC 10 of CIFAR-10), batch 128
    rows = whole_stream(pool, passes=25, batch_size=128)
    assert stream_batches(100, 128) == 1 and len(rows) == 25 * 128
    for k in range(len(rows) // 100):
        stretch = rows[k * 100 : (k + 1) * 100]
        assert sorted(stretch.tolist()) == pool.tolist()  # one data epoch: each sample once
        np.testing.assert_array_equal(stretch, permuted(pool, seed=0, epoch=k, shuffle=True))
    first = rows[:128]
    assert len(set(first.tolist())) == 100  # a batch of 128 from 100: 28 repeat, from the next permutation


def test_stream_is_deterministic_per_seed_and_each_pass_stands_alone():
    pool = np.arange(37)
    a = whole_stream(pool, 6, batch_size=16, seed=3)
    np.testing.assert_array_equal(a, whole_stream(pool, 6, batch_size=16, seed=3))
    assert not np.array_equal(a, whole_stream(pool, 6, batch_size=16, seed=4))
    alone = stream_rows(pool, seed=3, epoch=4, shuffle=True, batch_size=16)
    np.testing.assert_array_equal(alone, a[4 * len(alone) : 5 * len(alone)])


def test_ranks_split_each_global_batch():
    pool = np.arange(50)
    shards = [whole_stream(pool, 3, batch_size=8, rank=r, world_size=2) for r in range(2)]
    single = whole_stream(pool, 3, batch_size=16)
    assert stream_batches(50, 8, world_size=2) == 4
    for k in range(len(single) // 16):
        mine = np.concatenate([s[k * 8 : (k + 1) * 8] for s in shards])
        assert sorted(mine.tolist()) == sorted(single[k * 16 : (k + 1) * 16].tolist())


def test_large_pools_keep_the_epoch_permutation():
    pool = np.arange(256)  # a multiple of the batch: the stream is the per-epoch order
    for e in range(3):
        np.testing.assert_array_equal(
            stream_rows(pool, seed=1, epoch=e, shuffle=True, batch_size=64),
            epoch_rows(pool, seed=1, epoch=e, shuffle=True, batch_size=64, drop_last=True))


def resident(stream=True, batch_size=32, seed=0, n=20):
    images = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    cfg = LoaderConfig(batch_size=batch_size, seed=seed, augment="flip", stream=stream)
    return ResidentLoader.from_arrays(images, np.arange(n) % 4, cfg, mean=(0.5,) * 3, std=(0.25,) * 3)


def test_resident_loader_trains_a_subset_smaller_than_a_batch_and_resumes_mid_stream():
    with pytest.raises(UserError, match="make no full batch"):
        resident(stream=False)
    loader = resident()
    assert len(loader) == 1
    passes = [next(iter(loader)) for _ in range(5)]
    assert all(b.images.shape[0] == 32 for b in passes)
    seen = torch.cat([b.indices for b in passes]).numpy()
    for k in range(len(seen) // 20):
        assert sorted(seen[k * 20 : (k + 1) * 20].tolist()) == list(range(20))
    again = resident()
    again.load_state_dict({"epoch": 3, "batch": 0})  # what train's resume does after 3 steps
    resumed = next(iter(again))
    assert torch.equal(resumed.indices, passes[3].indices) and torch.equal(resumed.images, passes[3].images)
    assert again.state_dict() == {"epoch": 3, "batch": 1}


def test_resume_mid_pass_where_batches_straddle_permutations():
    loader = resident(batch_size=8)  # 20 rows, 3 batches a pass: the stream's epochs end mid-batch
    assert len(loader) == 3
    straight = [b for _ in range(3) for b in loader]
    resumed = resident(batch_size=8)
    resumed.load_state_dict({"epoch": 1, "batch": 2})
    rest = [b for _ in range(2) for b in resumed]
    assert len(rest) == 4
    for a, b in zip(straight[5:], rest):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images)


def test_stream_and_quasi_random_are_exclusive():
    with pytest.raises(UserError, match="two sample orders"):
        LoaderConfig(stream=True, quasi_random=True)


@needs_ffcv
def test_ffcv_backend_streams_the_same_batches_as_resident(sample_dir):
    subset = SubsetConfig(ipc=3, seed=1)  # 30 test images, batch 64: repeats inside each batch
    cfgs = [LoaderConfig(sample_dir, split="test", batch_size=64, augment="flip", backend=b, subset=subset, seed=2,
                         stream=True) for b in ("ffcv", "resident")]
    ffcv, res = (build_loader(c) for c in cfgs)
    assert len(ffcv) == len(res) == 1
    for e in (0, 1, 2):
        ffcv.set_epoch(e)
        res.set_epoch(e)
        (a,), (b,) = list(ffcv), list(res)
        assert a.images.shape[0] == 64 and len(set(a.indices.tolist())) == 30
        assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.images, b.images)
