"""Rank sharding under a real torch.distributed process group: two gloo processes on CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fasttarget.loader import LoaderConfig, ResidentLoader, build_loader

WORLD = 2
N = 101  # odd: the two shards cannot be equal without padding or dropping


def _worker(rank: int, init_file: str, out_dir: str, data_dir: str | None) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        images = np.arange(N, dtype=np.uint8).repeat(4 * 4 * 3).reshape(N, 4, 4, 3)
        results = {}
        for drop_last in (False, True):
            # rank and world_size are left to the initialized process group
            cfg = LoaderConfig(batch_size=8, drop_last=drop_last, seed=5, augment="flip")
            loader = ResidentLoader.from_arrays(images, np.zeros(N), cfg, mean=(0.0,) * 3, std=(1.0,) * 3)
            assert (loader.rank, loader.world_size) == (rank, WORLD)
            batches = list(loader)
            assert len(batches) == len(loader)
            # every image holds its own index as pixel value: the shard's images are its indices
            for b in batches:
                assert torch.equal((b.images[:, 0, 0, 0] * 255).round().long(), b.indices)
            results[f"resident_drop{int(drop_last)}"] = torch.cat([b.indices for b in batches])
        if data_dir is not None:
            cfg = LoaderConfig(data_dir, split="test", batch_size=64, drop_last=False, backend="ffcv", seed=5)
            results["ffcv"] = torch.cat([b.indices for b in build_loader(cfg)])
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def shards(tmp_path_factory, request) -> list[dict[str, torch.Tensor]]:
    tmp = tmp_path_factory.mktemp("dist")
    data_dir = None
    if importlib.util.find_spec("ffcv") is not None:
        data_dir = str(request.getfixturevalue("sample_dir"))
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp), data_dir), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def test_resident_shards_cover_the_dataset_without_overlap(shards):
    a, b = (s["resident_drop0"] for s in shards)
    assert len(a) == len(b) == 51  # 101 samples, one repeated so both ranks take 51
    assert set(a.tolist()) | set(b.tolist()) == set(range(N))
    assert len(set(a.tolist()) & set(b.tolist())) == 1
    assert len(set(a.tolist())) == len(a) and len(set(b.tolist())) == len(b)


def test_drop_last_shards_are_disjoint_and_equally_long(shards):
    a, b = (s["resident_drop1"] for s in shards)
    assert len(a) == len(b) == 48  # 50 per rank, cut to whole batches of 8
    assert not set(a.tolist()) & set(b.tolist())


@pytest.mark.skipif(importlib.util.find_spec("ffcv") is None, reason="needs ffcv")
def test_ffcv_shards_cover_the_split_without_overlap(shards):
    a, b = (s["ffcv"] for s in shards)
    assert len(a) == len(b) == 500
    assert not set(a.tolist()) & set(b.tolist())
    assert sorted(a.tolist() + b.tolist()) == list(range(1000))
