"""The loader: batch contents, epoch plans, determinism, resume, subsets, targets, both backends."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fasttarget.augment import build_augment
from fasttarget.dataset import DatasetMeta
from fasttarget.demo import SAMPLE_SOURCE
from fasttarget.errors import UserError
from fasttarget.loader import (
    Batch,
    FfcvLoader,
    LoaderConfig,
    ResidentLoader,
    build_loader,
    choose_backend,
    decoded_bytes,
    epoch_rows,
)
from fasttarget.subsets import SubsetConfig, select_subset

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "loader.md"

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_ffcv = pytest.mark.skipif(importlib.util.find_spec("ffcv") is None, reason="needs ffcv")


@pytest.fixture(scope="module")
def arrays() -> tuple[np.ndarray, np.ndarray]:
    """103 random 8x8 images (a prime count, so no batch size divides it), 5 classes."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (103, 8, 8, 3), dtype=np.uint8), np.arange(103) % 5


def resident(arrays, targets=None, **kw) -> ResidentLoader:
    kw.setdefault("batch_size", 16)
    return ResidentLoader.from_arrays(*arrays, LoaderConfig(**kw), mean=MEAN, std=STD, targets=targets)


def unnormalize(images: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """Back to uint8-scale NHWC, as the source arrays are."""
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return ((images * s + m) * 255).permute(0, 2, 3, 1)


def assert_same_batches(a: list[Batch], b: list[Batch]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.indices.cpu(), y.indices.cpu())
        assert torch.equal(x.labels.cpu(), y.labels.cpu())
        assert torch.equal(x.images.cpu(), y.images.cpu())
        assert x.record.params.keys() == y.record.params.keys()
        for key in x.record.params:
            assert torch.equal(x.record.params[key].cpu(), y.record.params[key].cpu())


# --- the epoch plan ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [12, 13])
@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_cover_the_pool_and_overlap_only_by_padding(n, world_size):
    pool = np.arange(100, 100 + n)
    shards = [epoch_rows(pool, seed=3, epoch=1, shuffle=True, batch_size=2, drop_last=False, rank=r,
                         world_size=world_size) for r in range(world_size)]
    assert len({len(s) for s in shards}) == 1  # every rank runs the same number of steps
    rows = np.concatenate(shards).tolist()
    assert set(rows) == set(pool.tolist())
    assert len(rows) - len(set(rows)) == -n % world_size


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_drop_last_shards_are_disjoint_whole_batches(world_size):
    pool = np.arange(50)
    shards = [epoch_rows(pool, seed=0, epoch=0, shuffle=True, batch_size=4, drop_last=True, rank=r,
                         world_size=world_size) for r in range(world_size)]
    rows = np.concatenate(shards).tolist()
    assert len(rows) == len(set(rows))
    assert {len(s) for s in shards} == {50 // world_size // 4 * 4}


def test_order_depends_on_seed_and_epoch_only():
    pool = np.arange(1000)
    kw = dict(shuffle=True, batch_size=10, drop_last=True)
    first = epoch_rows(pool, seed=5, epoch=2, **kw)
    assert np.array_equal(first, epoch_rows(pool, seed=5, epoch=2, **kw))
    assert not np.array_equal(first, epoch_rows(pool, seed=5, epoch=3, **kw))
    assert not np.array_equal(first, epoch_rows(pool, seed=6, epoch=2, **kw))
    assert sorted(first.tolist()) == list(range(1000))
    assert np.array_equal(epoch_rows(pool, seed=5, epoch=2, shuffle=False, batch_size=10, drop_last=True), pool)


# --- batches from arrays (resident backend, no ffcv) -----------------------------------------------


@pytest.mark.parametrize("drop_last", [True, False])
def test_batches_hold_normalized_channels_last_images_of_their_indices(arrays, drop_last):
    images, labels = arrays
    loader = resident(arrays, drop_last=drop_last)
    batches = list(loader)
    sizes = [len(b.indices) for b in batches]
    assert len(loader) == len(batches) == (6 if drop_last else 7)
    assert sizes == [16] * 6 + ([] if drop_last else [7])
    seen = torch.cat([b.indices for b in batches])
    assert len(set(seen.tolist())) == len(seen) == sum(sizes)
    for b in batches:
        assert b.images.dtype == torch.float32 and b.images.shape[1:] == (3, 8, 8)
        assert b.images.is_contiguous(memory_format=torch.channels_last)
        assert b.labels.dtype == b.indices.dtype == torch.int64
        assert torch.equal(b.labels, torch.from_numpy(labels[b.indices.numpy()]))
        expected = torch.from_numpy(images[b.indices.numpy()]).float()
        torch.testing.assert_close(unnormalize(b.images), expected, atol=1e-3, rtol=0)
        assert b.targets is None and b.record.mix_perm is None


def test_images_are_augmented_per_batch_as_recorded(arrays):
    images, _ = arrays
    aug = build_augment("flip")
    for b in resident(arrays, augment="flip"):
        source = torch.from_numpy(images[b.indices.numpy()]).permute(0, 3, 1, 2).float() / 255
        expected = aug.apply(source, b.record).permute(0, 2, 3, 1) * 255
        torch.testing.assert_close(unnormalize(b.images), expected, atol=1e-3, rtol=0)
    flips = torch.cat([b.record.params["flip.apply"] for b in resident(arrays, augment="flip")])
    assert 0 < int(flips.sum()) < len(flips)


def test_two_loaders_with_one_seed_give_the_same_batches(arrays):
    a = resident(arrays, augment="stdaug+mixup", seed=7)
    b = resident(arrays, augment="stdaug+mixup", seed=7)
    first = list(a)
    assert_same_batches(first, list(b))
    assert_same_batches(list(a), list(b))  # epoch 1 of both
    again = resident(arrays, augment="stdaug+mixup", seed=7)
    again.set_epoch(1)
    second = list(again)
    assert not torch.equal(first[0].indices, second[0].indices)
    other_seed = list(resident(arrays, augment="stdaug+mixup", seed=8))
    assert not torch.equal(first[0].indices, other_seed[0].indices)


def test_each_pass_is_the_next_epoch_and_set_epoch_chooses_it(arrays):
    walked = resident(arrays, augment="crop")
    passes = [list(walked) for _ in range(3)]
    chosen = resident(arrays, augment="crop")
    chosen.set_epoch(2)
    assert_same_batches(list(chosen), passes[2])
    assert chosen.state_dict() == {"epoch": 3, "batch": 0}


def test_resume_mid_epoch_continues_without_computing_skipped_batches(arrays):
    calls = []

    def one_hot(batch: Batch) -> torch.Tensor:
        calls.append(batch.indices)
        return batch.record.mix(torch.nn.functional.one_hot(batch.labels, 5).float())

    loader = resident(arrays, targets=one_hot, augment="stdaug+cutmix", seed=1)
    loader.set_epoch(4)
    full, state = [], None
    for k, batch in enumerate(loader):
        full.append(batch)
        if k == 2:
            state = loader.state_dict()
    assert state == {"epoch": 4, "batch": 3}

    calls.clear()
    resumed = resident(arrays, targets=one_hot, augment="stdaug+cutmix", seed=1)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(calls) == len(rest) == len(full) - 3  # the first three batches were never made
    assert_same_batches(rest, full[3:])
    for x, y in zip(rest, full[3:]):
        assert torch.equal(x.targets, y.targets)
    assert resumed.state_dict() == {"epoch": 5, "batch": 0}


def test_state_at_the_end_of_an_epoch_resumes_with_the_next(arrays):
    loader = resident(arrays)
    loader.load_state_dict({"epoch": 2, "batch": len(loader)})
    assert loader.state_dict() == {"epoch": 3, "batch": 0}
    with pytest.raises(UserError, match="past the"):
        loader.load_state_dict({"epoch": 0, "batch": len(loader) + 1})


def test_target_provider_fills_targets_mixed_like_the_images(arrays):
    def one_hot(batch: Batch) -> torch.Tensor:
        return batch.record.mix(torch.nn.functional.one_hot(batch.labels, 5).float())

    for b in resident(arrays, targets=one_hot, augment="mixup"):
        assert b.targets.shape == (len(b.labels), 5)
        torch.testing.assert_close(b.targets.sum(1), torch.ones(len(b.labels)))
        lam = b.record.mix_lam
        rows = torch.arange(len(b.labels))
        torch.testing.assert_close(b.targets[rows, b.labels], lam + (1 - lam) * (b.labels[b.record.mix_perm] == b.labels))


def test_ipc_subset_is_honoured(arrays):
    _, labels = arrays
    subset = SubsetConfig(ipc=4, seed=2)
    loader = resident(arrays, subset=subset, batch_size=5, drop_last=False)
    seen = torch.cat([b.indices for b in loader]).numpy()
    assert sorted(seen.tolist()) == sorted(np.asarray(select_subset(labels, subset)).tolist())
    assert np.bincount(labels[seen], minlength=5).tolist() == [4] * 5
    assert len(loader) == 4


def test_bad_configs_are_user_errors(arrays):
    for kw in [dict(batch_size=0), dict(backend="gpu"), dict(augment="blur"), dict(rank=0),
               dict(rank=2, world_size=2)]:
        with pytest.raises(UserError):
            LoaderConfig(**kw)
    # The CLI's fix first (there is no --drop-last option), then the library's.
    with pytest.raises(UserError, match=r"103 samples on 1 rank\(s\) make no full batch of 200: lower --batch-size "
                                        r"to 103 or raise --ipc/--fraction \(library: LoaderConfig\(batch_size=103\) "
                                        r"or drop_last=False\)"):
        resident(arrays, batch_size=200)
    with pytest.raises(UserError, match="uint8"):
        ResidentLoader.from_arrays(arrays[0].astype(np.float32), arrays[1], LoaderConfig(), mean=MEAN, std=STD)
    with pytest.raises(UserError, match="data_dir"):
        build_loader(LoaderConfig())


# --- converted datasets: both backends ---------------------------------------------------------------


def test_auto_backend_keeps_what_fits_the_budget_resident(sample_dir):
    meta = DatasetMeta.load(sample_dir)
    size = decoded_bytes(meta, "train")
    assert size == meta.count("train") * 32 * 32 * 3
    assert choose_backend(LoaderConfig(sample_dir, memory_budget_bytes=size), meta) == "resident"
    assert choose_backend(LoaderConfig(sample_dir, memory_budget_bytes=size - 1), meta) == "ffcv"
    assert choose_backend(LoaderConfig(sample_dir, backend="ffcv"), meta) == "ffcv"


@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    """The sample's test split parsed straight from its CIFAR binary file: ground truth without ffcv."""
    records = np.fromfile(SAMPLE_SOURCE / "test_batch.bin", np.uint8).reshape(-1, 3073)
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), records[:, 0].astype(np.int64)


@pytest.fixture(scope="module")
def ffcv_loader(sample_dir) -> FfcvLoader:
    return build_loader(LoaderConfig(sample_dir, split="test", batch_size=96, drop_last=False, augment="flip",
                                     backend="ffcv", seed=3))


def test_backends_yield_identical_batches_of_the_real_data(sample_dir, test_split, ffcv_loader):
    images, labels = test_split
    loaded = build_loader(LoaderConfig(sample_dir, split="test", batch_size=96, drop_last=False, augment="flip",
                                       seed=3))
    assert isinstance(loaded, ResidentLoader) and isinstance(ffcv_loader, FfcvLoader)
    assert len(loaded) == len(ffcv_loader) == 11
    ffcv_loader.set_epoch(0)
    # Held until the end: ffcv reuses its buffers, the loader must have copied every batch out.
    streamed = list(ffcv_loader)
    assert_same_batches(streamed, list(loaded))
    meta = DatasetMeta.load(sample_dir)
    for b in streamed:
        assert torch.equal(b.labels, torch.from_numpy(labels[b.indices.numpy()]))
        source = torch.from_numpy(images[b.indices.numpy()]).permute(0, 3, 1, 2).float() / 255
        expected = build_augment("flip").apply(source, b.record).permute(0, 2, 3, 1) * 255
        torch.testing.assert_close(unnormalize(b.images, meta.mean, meta.std), expected, atol=1e-3, rtol=0)
    assert sorted(torch.cat([b.indices for b in streamed]).tolist()) == list(range(1000))


def test_ffcv_backend_is_deterministic_and_resumes(ffcv_loader):
    ffcv_loader.set_epoch(1)
    first = list(ffcv_loader)
    ffcv_loader.set_epoch(1)
    assert_same_batches(first, list(ffcv_loader))
    ffcv_loader.load_state_dict({"epoch": 1, "batch": 8})
    assert_same_batches(list(ffcv_loader), first[8:])
    batches = iter(ffcv_loader)
    next(batches)
    assert ffcv_loader.state_dict() == {"epoch": 2, "batch": 1}
    batches.close()  # leaving an epoch early stops ffcv's reading thread


def test_ffcv_subset_is_honoured(sample_dir, test_split):
    _, labels = test_split
    subset = SubsetConfig(ipc=7, seed=1)
    loader = build_loader(LoaderConfig(sample_dir, split="test", batch_size=20, drop_last=False, backend="ffcv",
                                       subset=subset))
    seen = torch.cat([b.indices for b in loader]).numpy()
    assert sorted(seen.tolist()) == sorted(np.asarray(select_subset(labels, subset)).tolist())
    assert len(loader) == 4


def test_ffcv_quasi_random_order_is_deterministic_and_covers_the_split(sample_dir):
    cfg = LoaderConfig(sample_dir, split="test", batch_size=100, drop_last=False, quasi_random=True, seed=2)
    assert choose_backend(cfg, DatasetMeta.load(sample_dir)) == "ffcv"
    loader = build_loader(cfg)
    first = torch.cat([b.indices for b in loader])
    loader.set_epoch(0)
    assert torch.equal(first, torch.cat([b.indices for b in loader]))
    second = torch.cat([b.indices for b in loader])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(1000))
    assert not torch.equal(first, second)
    with pytest.raises(UserError, match="quasi_random"):
        LoaderConfig(sample_dir, backend="resident", quasi_random=True)


def test_build_loader_names_what_is_wrong(sample_dir, tmp_path):
    with pytest.raises(UserError, match="not a converted dataset"):
        build_loader(LoaderConfig(tmp_path))
    with pytest.raises(UserError, match="unknown split"):
        build_loader(LoaderConfig(sample_dir, split="val"))


def test_docs_plain_pytorch_loop_runs(sample_dir):
    text = DOCS.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    placeholder = 'data_dir = "data/cifar10"'
    assert placeholder in code
    namespace: dict = {}
    exec(code.replace(placeholder, f"data_dir = {str(sample_dir)!r}").replace("steps = 3_000", "steps = 10"), namespace)
    assert namespace["step"] == 10
    assert 0.0 <= namespace["accuracy"] <= 1.0


# --- CUDA ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_cuda_side_stream_batches_match_cpu(arrays):
    def one_hot(batch: Batch) -> torch.Tensor:
        return batch.record.mix(torch.nn.functional.one_hot(batch.labels, 5).float())

    cpu = list(resident(arrays, targets=one_hot, augment="stdaug+mixup", seed=4))
    gpu_loader = resident(arrays, targets=one_hot, augment="stdaug+mixup", seed=4, device="cuda")
    assert gpu_loader._images.is_cuda
    busy = torch.randn(2048, 2048, device="cuda")
    for c, g in zip(cpu, gpu_loader):
        busy = busy @ busy / busy.norm()  # keep the caller's stream busy while the next batch is made
        assert g.images.is_cuda and g.targets.is_cuda and g.images.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(c.indices, g.indices.cpu()) and torch.equal(c.labels, g.labels.cpu())
        torch.testing.assert_close(c.images, g.images.cpu(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(c.targets, g.targets.cpu(), atol=1e-5, rtol=0)


@pytest.mark.gpu
@needs_cuda
@needs_ffcv
def test_cuda_ffcv_batches_match_cpu(sample_dir):
    cfg = dict(split="test", batch_size=128, drop_last=False, augment="stdaug", backend="ffcv", seed=2)
    cpu = list(build_loader(LoaderConfig(sample_dir, **cfg)))
    gpu = list(build_loader(LoaderConfig(sample_dir, device="cuda", **cfg)))
    for c, g in zip(cpu, gpu):
        assert torch.equal(c.indices, g.indices.cpu())
        torch.testing.assert_close(c.images, g.images.cpu(), atol=1e-4, rtol=1e-4)
