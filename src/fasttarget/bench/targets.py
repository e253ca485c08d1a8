"""The ``targets`` suite: Strategy C's cache gather (warm and cold) and build."""

from __future__ import annotations

import hashlib
import mmap
import os
import platform
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from fasttarget.bench.context import BenchContext, has_module
from fasttarget.bench.goals import H5PY_FANCY, H5PY_IN_MEMORY
from fasttarget.bench.timing import Comparison, fastest, race_note


GATHER_BATCH = 128
GATHER_CALLS = 64
# The cold gather's synthetic cache: ImageNet's 1,000 classes, 2^16 rows (128 MB of float16),
# so that 64 random batches of 128 rows touch mostly distinct pages.
COLD_SHAPE = (1 << 16, 1000)
# The top-k gather's synthetic caches (warm): ImageNet's classes, FKD's K = 5.
TOPK_SHAPE, TOPK_K = (1 << 15, 1000), 5
FP16_FULL = "fp16 full cache"


def targets_comparisons(ctx: BenchContext) -> Iterator[Comparison]:
    """Strategy C's cache: gather rows/s (warm and cold) and build img/s.

    - gather, 64 random batches of 128 indices per call: ``TargetCache.gather`` (memory map,
      pinned buffer on CUDA) vs :data:`H5PY_FANCY`, what users of an HDF5 file typically write
      (sorted unique indices, then expanded), and vs :data:`H5PY_IN_MEMORY`, the obvious choice
      for a cache that fits memory: the whole dataset read once (not timed) and indexed with the
      faster of ``np.take`` and ``torch.index_select`` (:func:`fastest`).
    - cold gather: the same on a synthetic cache of :data:`COLD_SHAPE` whose pages are dropped
      from the page cache before every timed call (:func:`drop_page_cache`), as for a cache
      larger than the page cache; vs h5py fancy indexing, reopened cold too. Reading the whole
      file is no baseline here: a cache that does not fit memory cannot be held in it.
    - top-k gather: a top-:data:`TOPK_K` cache's rows (kept logits + tail, and classes) vs the
      float16 full cache's rows, both synthetic with 1,000 classes and read warm.
    - build: :func:`fasttarget.cache.build_cache` over the train split (teacher forward, HDF5
      writes, checksum), vs the bare teacher forward over the same images in memory.

    The real cache is built from the beton, so without ffcv only the cold gather runs.
    """
    if has_module("ffcv"):
        yield from _warm_gather_comparisons(ctx)
    else:
        ctx.notes.append("targets: warm gather and build skipped, the cache is built from the beton, which needs ffcv")
    cold = cold_gather_comparison(ctx)
    if cold is not None:
        yield cold
    yield topk_gather_comparison(ctx)
    if has_module("ffcv"):
        yield _build_comparison(ctx)


def _gather_batches(num_samples: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, num_samples, GATHER_BATCH) for _ in range(GATHER_CALLS)]


def _h5py_gather(dataset, batches: list[np.ndarray], device: torch.device) -> None:
    for idx in batches:
        # h5py wants increasing indices without repeats: read the sorted unique ones, then expand.
        unique, inverse = np.unique(idx, return_inverse=True)
        torch.from_numpy(dataset[unique][inverse]).to(device)


def _warm_gather_comparisons(ctx: BenchContext) -> Iterator[Comparison]:
    import h5py

    from fasttarget.cache import LOGITS, TargetCache

    cache = TargetCache.open(ctx.cache)
    batches = _gather_batches(cache.num_samples)
    dataset = h5py.File(ctx.cache, "r")[LOGITS]
    whole = dataset[...]
    table = torch.from_numpy(whole)

    def memmap_gather() -> None:
        for idx in batches:
            cache.gather(idx, ctx.device)

    in_memory = {
        "np.take": lambda: [torch.from_numpy(np.take(whole, idx, axis=0)).to(ctx.device) for idx in batches],
        "torch.index_select": lambda: [table.index_select(0, torch.from_numpy(idx)).to(ctx.device) for idx in batches],
    }
    winner, seconds = fastest(in_memory, ctx.device)
    ctx.notes.append(race_note(f"{H5PY_IN_MEMORY} gather", winner, seconds))
    name = f"cache gather b{GATHER_BATCH}"
    work = GATHER_BATCH * GATHER_CALLS
    yield Comparison(name, "rows/s", work, memmap_gather, H5PY_FANCY,
                     lambda: _h5py_gather(dataset, batches, ctx.device))
    yield Comparison(name, "rows/s", work, memmap_gather, H5PY_IN_MEMORY, in_memory[winner])


def cold_gather_comparison(ctx: BenchContext) -> Comparison | None:
    """Memory-map gather vs h5py fancy indexing on a synthetic cache read cold every call.

    Returns ``None`` (with a note) where the work directory's pages cannot be dropped.
    """
    import h5py

    from fasttarget.cache import LOGITS, TargetCache

    path = ctx.workdir / "cold-cache.h5"
    why_not = page_cache_unsupported(ctx.workdir)
    if why_not:
        ctx.notes.append(f"cold cache gather skipped: {why_not}")
        return None
    cache = TargetCache.open(write_synthetic_cache(path, COLD_SHAPE))
    batches = _gather_batches(COLD_SHAPE[0])
    h5py_open = [h5py.File(path, "r")[LOGITS]]

    def drop_both() -> None:
        # h5py is reopened so that no HDF5 buffer holds rows read by an earlier call.
        h5py_open[0].file.close()
        drop_page_cache(path, cache.logits)
        h5py_open[0] = h5py.File(path, "r")[LOGITS]

    def memmap_gather() -> None:
        for idx in batches:
            cache.gather(idx, ctx.device)

    return Comparison(f"cache gather b{GATHER_BATCH} cold", "rows/s", GATHER_BATCH * GATHER_CALLS, memmap_gather,
                      H5PY_FANCY, lambda: _h5py_gather(h5py_open[0], batches, ctx.device), prepare=drop_both)


def topk_gather_comparison(ctx: BenchContext) -> Comparison:
    """Gather from a top-:data:`TOPK_K` cache vs from the float16 full cache, warm, 1,000 classes.

    The top-k side reads both of its tables (``[B, K+1]`` logits and ``[B, K]`` classes), as
    Strategy C does for each batch; the full side reads ``[B, 1000]`` float16 rows.
    """
    from fasttarget.cache import TargetCache

    full = TargetCache.open(write_synthetic_cache(ctx.workdir / "full-1000.h5", TOPK_SHAPE))
    topk = TargetCache.open(write_synthetic_cache(ctx.workdir / "top5-1000.h5", TOPK_SHAPE, top_k=TOPK_K))
    batches = _gather_batches(TOPK_SHAPE[0])

    def topk_gather() -> None:
        for idx in batches:
            topk.gather(idx, ctx.device)
            topk.gather_classes(idx, ctx.device)

    def full_gather() -> None:
        for idx in batches:
            full.gather(idx, ctx.device)

    return Comparison(f"cache gather b{GATHER_BATCH} top-{TOPK_K}", "rows/s", GATHER_BATCH * GATHER_CALLS,
                      topk_gather, FP16_FULL, full_gather)


def _build_comparison(ctx: BenchContext) -> Comparison:
    from fasttarget.cache import build_cache
    from fasttarget.targets import load_teacher

    images, _ = ctx.train
    teacher, _ = load_teacher(ctx.teacher, ctx.meta, ctx.device)
    build_cfg = ctx.cache_config(ctx.workdir / "targets-bench.h5")
    mean = torch.tensor(ctx.meta.mean, device=ctx.device).view(1, 3, 1, 1)
    std = torch.tensor(ctx.meta.std, device=ctx.device).view(1, 3, 1, 1)

    def teacher_forward() -> None:
        for lo in range(0, len(images), build_cfg.batch_size):
            x = torch.from_numpy(images[lo : lo + build_cfg.batch_size]).to(ctx.device)
            teacher((x.permute(0, 3, 1, 2).float().div_(255) - mean) / std).cpu()

    return Comparison("cache build", "img/s", len(images), lambda: build_cache(build_cfg),
                      "teacher forward only", teacher_forward)


def write_synthetic_cache(path: Path, shape: tuple[int, int], top_k: int | None = None) -> Path:
    """A cache file :meth:`~fasttarget.cache.TargetCache.open` accepts, of random float16
    logits with their checksum, flushed to disk.

    Only the layout matters for read speed, so one random block is written repeatedly. With
    ``top_k`` the file holds that form (:func:`fasttarget.cache.stored_rows` of the block). The
    file is fsynced: the kernel drops clean pages only.
    """
    import h5py

    from fasttarget.cache import CACHE_FORMAT, FORMAT_VERSION, CacheForm, _tables, stored_rows

    rows, classes = shape
    form = CacheForm(top_k)
    logits = torch.from_numpy(np.random.default_rng(0).standard_normal((min(rows, 8192), classes), np.float32))
    blocks = [t.numpy() for t in stored_rows(logits, form, 2.0)]
    digest = hashlib.sha256()  # of the tables' row-major bytes, one after the other, as the cache records it
    with h5py.File(path, "w") as f:
        for (name, (table_shape, dtype)), block in zip(_tables(form, rows, classes).items(), blocks):
            dataset = f.create_dataset(name, table_shape, dtype)
            for lo in range(0, rows, len(block)):
                part = block[: rows - lo]
                dataset[lo : lo + len(part)] = part
                digest.update(part.data)
        f.attrs.update({"format": CACHE_FORMAT, "format_version": FORMAT_VERSION, "num_classes": classes,
                        **form.attrs, "logits_sha256": digest.hexdigest()})
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
    return path


def drop_page_cache(path: Path, mapped: np.memmap | None = None) -> None:
    """Drop ``path``'s pages from the page cache, so that the next reads go to the disk.

    ``posix_fadvise(DONTNEED)`` skips pages that a live mapping holds, so ``mapped`` (a
    ``numpy.memmap`` of the file) first gives its pages up (``madvise(DONTNEED)``; a private
    mapping that was never written refaults them from the file).
    """
    if mapped is not None:
        mapped._mmap.madvise(mmap.MADV_DONTNEED)  # numpy keeps the mapping as ``_mmap``
    with open(path, "rb") as fh:
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def page_cache_unsupported(directory: Path) -> str | None:
    """Why files in ``directory`` cannot be read cold here, or ``None`` when they can."""
    if not hasattr(os, "posix_fadvise"):
        return f"{platform.system()} has no posix_fadvise to drop a file from the page cache"
    try:
        with open("/proc/mounts") as fh:
            mounts = [line.split()[1:3] for line in fh]
    except OSError:  # no /proc: assume a disk-backed file system
        return None
    resolved = str(Path(directory).resolve())
    fs = max(((m, t) for m, t in mounts if resolved == m or resolved.startswith(m.rstrip("/") + "/")),
             key=lambda mount: len(mount[0]), default=(None, None))[1]
    if fs in ("tmpfs", "ramfs"):
        return f"{directory} is on {fs}, whose files live in the page cache: set TMPDIR to a disk-backed directory"
    return None
