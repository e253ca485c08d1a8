"""A converted dataset directory: ``meta.json`` and reading the betons back.

``fasttarget convert`` writes ``DIR/train.beton``, ``DIR/test.beton`` and ``DIR/meta.json``
(see ``docs/design.md``). :class:`DatasetMeta` is ``meta.json`` as a frozen dataclass;
:func:`read_split` decodes a whole split back into memory in index order.

Example:
    >>> import json, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> meta = DatasetMeta(dataset="toy", classes=("a", "b"), image_shape=(32, 32, 3),
    ...     splits={"train": SplitInfo("train.beton", 4, (2, 2)), "test": SplitInfo("test.beton", 2, (1, 1))},
    ...     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), fingerprint="0" * 64)
    >>> meta.save(d)
    >>> DatasetMeta.load(d).splits["train"].class_counts
    (2, 2)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fasttarget.errors import UserError
from fasttarget.threads import kept_threads

FORMAT_VERSION = 1
META_FILE = "meta.json"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class SplitInfo:
    """One split's entry in ``meta.json``.

    Args:
        file: beton file name inside the dataset directory.
        count: number of samples written.
        class_counts: samples per label, in label order.
        skipped: unreadable source files left out (``--skip-bad``).
    """

    file: str
    count: int
    class_counts: tuple[int, ...]
    skipped: int = 0


@dataclass(frozen=True)
class DatasetMeta:
    """The contents of ``meta.json``.

    Args:
        dataset: dataset name (``cifar10`` …).
        classes: class names in label order.
        image_shape: ``(H, W, 3)`` when every image has that shape, else ``None``.
        splits: ``"train"``/``"test"`` → :class:`SplitInfo`.
        mean, std: per-channel statistics of the train split on the 0..1 scale.
        fingerprint: SHA-256 hex of the labels and sampled pixels; caches and checkpoints
            record it to refuse data they were not made from.
        encoding: ``"raw"`` pixels or ``"jpg"``.
        jpeg_quality: JPEG quality when ``encoding == "jpg"``.
        source: where the data came from (``layout``, ``path``).
        extra: dataset-specific facts (CIFAR-100 coarse labels, Tiny-ImageNet class words …).
        format_version: version of this layout.
    """

    dataset: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int] | None
    splits: dict[str, SplitInfo]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fingerprint: str
    encoding: str = "raw"
    jpeg_quality: int | None = None
    source: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def count(self, split: str) -> int:
        """Number of samples in ``split``."""
        return self.splits[split].count

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to ``meta.json`` (key order as in ``docs/design.md``)."""
        d = asdict(self)
        return {
            "format_version": d["format_version"], "dataset": d["dataset"], "classes": list(self.classes),
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "encoding": self.encoding, "jpeg_quality": self.jpeg_quality,
            "splits": {k: {**v, "class_counts": list(v["class_counts"])} for k, v in d["splits"].items()},
            "mean": list(self.mean), "std": list(self.std), "fingerprint": self.fingerprint,
            "source": d["source"], "extra": d["extra"],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetMeta:
        """Inverse of :meth:`to_dict`; ``num_classes`` is derived from ``classes``."""
        return cls(
            dataset=d["dataset"], classes=tuple(d["classes"]),
            image_shape=tuple(d["image_shape"]) if d["image_shape"] else None,
            splits={k: SplitInfo(v["file"], int(v["count"]), tuple(v["class_counts"]), int(v.get("skipped", 0)))
                    for k, v in d["splits"].items()},
            mean=tuple(d["mean"]), std=tuple(d["std"]), fingerprint=d["fingerprint"],
            encoding=d.get("encoding", "raw"), jpeg_quality=d.get("jpeg_quality"),
            source=d.get("source", {}), extra=d.get("extra", {}), format_version=int(d["format_version"]),
        )

    @classmethod
    def load(cls, directory: str | Path) -> DatasetMeta:
        """Read ``directory/meta.json``.

        Raises:
            UserError: the file is missing, malformed, or of another format version.
        """
        path = Path(directory) / META_FILE
        hint = f"run `fasttarget convert DATASET --source PATH --out {directory}`"
        if not path.is_file():
            raise UserError(f"{directory} is not a converted dataset (no {META_FILE}): {hint}")
        try:
            d = json.loads(path.read_text())
            meta = cls.from_dict(d)
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{path} is malformed ({err!r}): {hint} --force") from err
        if meta.format_version != FORMAT_VERSION:
            raise UserError(f"{path} has format version {meta.format_version}, this fasttarget reads "
                            f"{FORMAT_VERSION}: {hint} --force")
        return meta

    def save(self, directory: str | Path) -> None:
        """Write ``directory/meta.json`` atomically (temporary file, then rename)."""
        path = Path(directory) / META_FILE
        tmp = path.with_name(f".{META_FILE}.{os.getpid()}.tmp")
        # One top-level key per line keeps the file readable even with long lists (CIFAR-100 coarse labels).
        body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in self.to_dict().items())
        tmp.write_text("{\n" + body + "\n}\n")
        tmp.replace(path)


def beton_path(directory: str | Path, split: str) -> Path:
    """Path of ``split``'s beton in a converted dataset directory (checks that it exists).

    Raises:
        UserError: unknown split or missing file.
    """
    meta = DatasetMeta.load(directory)
    if split not in meta.splits:
        raise UserError(f"unknown split {split!r}: {directory} has {', '.join(meta.splits)}")
    path = Path(directory) / meta.splits[split].file
    if not path.is_file():
        raise UserError(f"{path} is missing: rerun `fasttarget convert ... --out {directory} --force`")
    return path


def read_split(directory: str | Path, split: str, num_workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode a whole split back into memory, in index order.

    Args:
        directory: a converted dataset directory.
        split: ``"train"`` or ``"test"``.
        num_workers: ffcv decoding threads (default: all usable cores).

    Returns:
        ``(images uint8 [N,H,W,3], labels int64 [N])`` with row ``i`` = sample index ``i``.

    Raises:
        UserError: the directory is not a converted dataset, or its images differ in size.
    """
    with kept_threads():  # ffcv resets torch's and numba's thread counts
        return _read_split(directory, split, num_workers)


def _read_split(directory: str | Path, split: str, num_workers: int | None) -> tuple[np.ndarray, np.ndarray]:
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    meta = DatasetMeta.load(directory)
    path = beton_path(directory, split)
    if meta.image_shape is None:
        raise UserError(f"{directory} holds images of different sizes; read_split needs one size: "
                        "reconvert with --max-side or read it with a resizing loader")
    n = meta.count(split)
    images = np.empty((n, *meta.image_shape), np.uint8)
    labels = np.empty(n, np.int64)
    loader = Loader(
        str(path), batch_size=min(max(n, 1), 2048), num_workers=num_workers or len(os.sched_getaffinity(0)),
        order=OrderOption.SEQUENTIAL, drop_last=False,
        pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()], "index": [IntDecoder()]},
    )
    # ffcv reuses its output buffers between batches, so every batch is copied out at once.
    for batch_images, batch_labels, batch_index in loader:
        rows = np.asarray(batch_index).reshape(-1)
        images[rows] = batch_images
        labels[rows] = np.asarray(batch_labels).reshape(-1)
    return images, labels


def read_labels(directory: str | Path, split: str) -> np.ndarray:
    """The int64 ``[N]`` labels of ``split`` in index order, read from the beton's metadata (no decoding).

    Example: the per-class rows of an IPC subset,
    ``select_subset(read_labels(d, "train"), SubsetConfig(ipc=10))``.
    """
    with kept_threads():
        from ffcv.reader import Reader

    return np.array(Reader(str(beton_path(directory, split))).metadata["f1"], dtype=np.int64)


def check_dataset(directory: str | Path) -> DatasetMeta:
    """Verify that every beton opens and holds what ``meta.json`` claims, without decoding images.

    Checks per split: the file opens, has the fields ``image``, ``label``, ``index``, holds
    ``count`` samples, its labels give the recorded per-class counts and its index field
    numbers the rows ``0..count-1``.

    Raises:
        UserError: naming the first mismatch.
    """
    with kept_threads():
        from ffcv.reader import Reader

    meta = DatasetMeta.load(directory)
    rerun = f"reconvert with `fasttarget convert ... --out {directory} --force`"
    for split, info in meta.splits.items():
        path = beton_path(directory, split)
        try:
            reader = Reader(str(path))
        except Exception as err:  # ffcv raises bare AssertionError/ValueError/IndexError on damaged files
            raise UserError(f"{path} does not open as a beton ({err!r}): {rerun}") from err
        if reader.field_names != ["image", "label", "index"]:
            raise UserError(f"{path} has fields {reader.field_names}, expected image, label, index: {rerun}")
        if reader.num_samples != info.count:
            raise UserError(f"{path} holds {reader.num_samples} samples, meta.json says {info.count}: {rerun}")
        labels, index = reader.metadata["f1"], reader.metadata["f2"]
        counts = tuple(int(c) for c in np.bincount(labels, minlength=meta.num_classes))
        if counts != info.class_counts:
            raise UserError(f"{path} has class counts {counts}, meta.json says {info.class_counts}: {rerun}")
        if not np.array_equal(index, np.arange(info.count)):
            raise UserError(f"{path} has an index field that is not 0..{info.count - 1}: {rerun}")
    return meta


def describe(meta: DatasetMeta) -> str:
    """A human-readable summary of a dataset's meta, several lines."""
    shape = "x".join(map(str, meta.image_shape)) if meta.image_shape else "variable"
    quality = f" (quality {meta.jpeg_quality})" if meta.encoding == "jpg" else ""
    lines = [
        f"dataset     {meta.dataset} ({meta.num_classes} classes: {', '.join(meta.classes[:5])}"
        f"{', ...' if meta.num_classes > 5 else ''})",
        f"images      {shape}, {meta.encoding}{quality}",
    ]
    for split, info in meta.splits.items():
        lo, hi = min(info.class_counts), max(info.class_counts)
        per_class = f"{lo}" if lo == hi else f"{lo}..{hi}"
        skipped = f", {info.skipped} unreadable skipped" if info.skipped else ""
        lines.append(f"{split:<11} {info.count} samples ({per_class} per class){skipped}")
    lines += [
        f"mean / std  {', '.join(f'{m:.4f}' for m in meta.mean)} / {', '.join(f'{s:.4f}' for s in meta.std)}",
        f"fingerprint {meta.fingerprint[:16]}",
        f"source      {meta.source.get('layout', '?')} at {meta.source.get('path', '?')}",
    ]
    return "\n".join(lines)
