"""The ``convert`` suite: CIFAR-10 source → beton, against FFCV's ``DatasetWriter`` on the same arrays."""

from __future__ import annotations

import functools
from typing import Iterator

import numpy as np

from fasttarget.bench.context import BenchContext, has_module
from fasttarget.bench.timing import Comparison
from fasttarget.threads import kept_threads


def convert_comparisons(ctx: BenchContext) -> Iterator[Comparison]:
    """CIFAR-10 source → ``train.beton`` + ``test.beton`` + ``meta.json``, img/s.

    Baseline: FFCV's ``DatasetWriter`` on the same arrays already in memory, both splits,
    same fields and worker count (what a user writing the beton by hand would do).
    """
    if not has_module("ffcv"):
        ctx.notes.append("convert suite skipped: ffcv is not installed")
        return
    from fasttarget.convert import ConvertConfig, convert, usable_cores
    from fasttarget.sources import open_source

    source = open_source("cifar10", ctx.source)
    total = len(source.train) + len(source.test)
    out = ctx.workdir / "convert"
    ours = ConvertConfig("cifar10", ctx.source, out / "fasttarget", force=True, progress=False)
    splits = {name: (source.split(name).images, source.split(name).labels) for name in ("train", "test")}

    def ffcv_writer() -> None:
        with kept_threads():  # importing ffcv sets torch's threads to 1 (fasttarget.threads)
            import ffcv.writer
            from ffcv.fields import IntField, RGBImageField
        from tqdm import tqdm

        (out / "ffcv").mkdir(parents=True, exist_ok=True)
        # DatasetWriter draws a tqdm bar it offers no switch for; silence it for the table's sake.
        shown, ffcv.writer.tqdm = ffcv.writer.tqdm, functools.partial(tqdm, disable=True)
        try:
            for name, (images, labels) in splits.items():
                fields = {"image": RGBImageField(write_mode="raw"), "label": IntField(), "index": IntField()}
                writer = ffcv.writer.DatasetWriter(str(out / "ffcv" / f"{name}.beton"), fields, num_workers=usable_cores())
                writer.from_indexed_dataset(_IndexedArrays(images, labels))
        finally:
            ffcv.writer.tqdm = shown

    yield Comparison("convert cifar10 → beton", "img/s", total, lambda: convert(ours),
                     "ffcv DatasetWriter on arrays", ffcv_writer)


class _IndexedArrays:
    """``(image, label, index)`` rows over in-memory arrays: the indexed dataset FFCV's writer takes."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int]:
        return self.images[i], int(self.labels[i]), i
