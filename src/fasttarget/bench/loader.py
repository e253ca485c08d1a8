"""The ``loader`` suite: uint8 batches/s of both backends against the DataLoaders and a bare gather."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import torch

from fasttarget.bench.context import BenchContext, has_module
from fasttarget.bench.goals import BARE_GATHER, BATCHED_LOADER, PER_SAMPLE_LOADER
from fasttarget.bench.timing import Comparison, fastest, race_note


LOADER_BATCH_SIZES = (128, 512)


def loader_comparisons(ctx: BenchContext) -> Iterator[Comparison]:
    """uint8 batches/s over whole epochs in random order, batch 128 and 512, on the run's device.

    fasttarget: the resident backend and (with ffcv) the ffcv backend, through
    ``uint8_batches`` (the loader before augmentation). Each against three baselines:

    - :data:`PER_SAMPLE_LOADER`: what training scripts typically run, a
      ``torch.utils.data.DataLoader`` over a per-sample ``Dataset`` (2 persistent workers,
      shuffled, default collate, pinned and copied to the device on CUDA);
    - :data:`BATCHED_LOADER`: the strongest ``DataLoader`` over the same arrays,
      ``batch_size=None`` with a ``BatchSampler`` so that ``__getitem__`` gathers a whole batch
      with ``np.take`` (no per-sample collate), in the main process: with workers every batch
      also crosses a process boundary, which on CIFAR-sized batches costs several times the gather;
    - :data:`BARE_GATHER`: no loader at all, the same resident uint8 tensor, the same
      permutation (:func:`~fasttarget.loader.epoch_rows`, the same seed), batch by batch the
      faster here of ``np.take`` and ``torch.index_select`` (:func:`fastest`; on CUDA
      ``index_select`` on the device): what a resident loader cannot beat, only approach.

    Each timed call is one epoch, so start-up per epoch counts and no loader is timed on
    batches it prefetched while another was being timed.
    """
    from fasttarget.loader import LoaderConfig, build_loader

    images, labels = ctx.train
    backends = ["resident"] + (["ffcv"] if has_module("ffcv") else [])
    for batch_size in LOADER_BATCH_SIZES:
        per_epoch = len(images) // batch_size
        if per_epoch == 0:
            ctx.notes.append(f"loader b{batch_size} skipped: only {len(images)} training images")
            continue
        candidates = bare_gathers(images, labels, batch_size, ctx.device)
        gathers = {name: _epochs(epochs) for name, epochs in candidates.items()}
        winner, seconds = fastest(gathers, ctx.device)
        ctx.notes.append(race_note(f"{BARE_GATHER} b{batch_size}", winner, seconds))
        baselines = {
            PER_SAMPLE_LOADER: _epochs(per_sample_dataloader(images, labels, batch_size, ctx.device)),
            BATCHED_LOADER: _epochs(batched_dataloader(images, labels, batch_size, ctx.device)),
            BARE_GATHER: gathers[winner],
        }
        for backend in backends:
            if backend == "resident":
                loader = ctx.resident_loader(batch_size, "noaug")
            else:
                loader = build_loader(LoaderConfig(data_dir=ctx.data, batch_size=batch_size, backend="ffcv",
                                                   device=ctx.cfg.device, num_workers=2))
            ours = _epochs(loader.uint8_batches)
            for baseline, theirs in baselines.items():
                yield Comparison(f"loader {backend} b{batch_size}", "batches/s", per_epoch, ours, baseline, theirs)


def _epochs(epoch_batches: Callable[[int], Any]) -> Callable[[], None]:
    """A callable that consumes the next whole epoch of ``epoch_batches(epoch)`` each time it is called."""
    counter = iter(range(1 << 62))

    def one_epoch() -> None:
        for _ in epoch_batches(next(counter)):
            pass

    return one_epoch


class _PerSampleDataset(torch.utils.data.Dataset):
    """What a typical training script writes: one ``(image, label)`` per ``__getitem__``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[i]), int(self.labels[i])


class _BatchDataset(_PerSampleDataset):
    """A whole batch per ``__getitem__``: the rows a ``BatchSampler`` drew, gathered in one ``np.take``."""

    def __getitem__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        rows = np.asarray(rows)
        return torch.from_numpy(np.take(self.images, rows, axis=0)), torch.from_numpy(np.take(self.labels, rows))


def per_sample_dataloader(images: np.ndarray, labels: np.ndarray, batch_size: int,
                          device: torch.device) -> Callable[[int], Iterator[Any]]:
    """Epoch → ``(images, labels)`` batches of the typical ``DataLoader``: per-sample ``Dataset``,
    default collate, 2 persistent workers, shuffled."""
    return _to_device(torch.utils.data.DataLoader(
        _PerSampleDataset(images, labels), batch_size=batch_size, shuffle=True, num_workers=2,
        persistent_workers=True, drop_last=True, pin_memory=device.type == "cuda",
    ), device)


def batched_dataloader(images: np.ndarray, labels: np.ndarray, batch_size: int,
                       device: torch.device) -> Callable[[int], Iterator[Any]]:
    """Epoch → ``(images, labels)`` batches of the strongest ``DataLoader`` over in-memory arrays:
    ``batch_size=None`` and a shuffled ``BatchSampler``, one ``np.take`` per batch, no workers."""
    dataset = _BatchDataset(images, labels)
    sampler = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(dataset), batch_size, drop_last=True)
    return _to_device(torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=sampler, num_workers=0, pin_memory=device.type == "cuda",
    ), device)


def _to_device(loader: torch.utils.data.DataLoader, device: torch.device) -> Callable[[int], Iterator[Any]]:
    """One epoch of ``loader`` per call, each batch copied to ``device`` without blocking (as a training loop does)."""

    def epoch(_: int):
        for x, y in loader:
            if device.type == "cuda":
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            yield x, y

    return epoch


def bare_gathers(images: np.ndarray, labels: np.ndarray, batch_size: int,
                 device: torch.device) -> dict[str, Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]]:
    """The bare-gather candidates: epoch ``e`` → the ``(images, labels)`` batches of one gather kernel.

    Every candidate holds the split as one resident tensor on ``device`` and walks the plan the
    resident loader walks with its default seed (:func:`~fasttarget.loader.epoch_rows`), so
    its batches are the loader's, byte for byte: contiguous uint8 ``[B,H,W,3]`` on ``device``.
    ``np.take`` needs host memory, so on CUDA ``torch.index_select`` is the only candidate.
    """
    from fasttarget.loader import LoaderConfig, epoch_rows

    x, y = torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device)
    pool, seed = np.arange(len(labels)), LoaderConfig().seed

    def rows(epoch: int) -> np.ndarray:
        return epoch_rows(pool, seed=seed, epoch=epoch, shuffle=True, batch_size=batch_size, drop_last=True)

    def index_select(epoch: int):
        plan = torch.from_numpy(rows(epoch)).to(device)
        for lo in range(0, len(plan), batch_size):
            index = plan[lo : lo + batch_size]
            yield x.index_select(0, index), y.index_select(0, index)

    def take(epoch: int):
        xs, ys, plan = x.numpy(), y.numpy(), rows(epoch)
        for lo in range(0, len(plan), batch_size):
            index = plan[lo : lo + batch_size]
            yield torch.from_numpy(np.take(xs, index, axis=0)), torch.from_numpy(np.take(ys, index))

    return {"torch.index_select": index_select, **({"np.take": take} if device.type == "cpu" else {})}
