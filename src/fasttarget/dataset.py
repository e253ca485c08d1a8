"""A converted dataset directory: ``meta.json`` and reading the betons back.

``fasttarget convert`` writes ``DIR/train.beton``, ``DIR/test.beton`` and ``DIR/meta.json``
(see ``docs/design.md``). :class:`DatasetMeta` is ``meta.json`` as a frozen dataclass;
:func:`read_split` decodes a whole split back into memory in index order.

Trust: :func:`check_split` compares a beton with what ``meta.json`` records without decoding
an image (file size, fields, row count, image sizes, labels, index, data inside the file) and
remembers a file that passed for as long as it is unchanged, so every reader can afford it;
with ``checksum=True`` it also compares the file's SHA-256, which reads the whole file.

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

import functools
import hashlib
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
        size: the beton's size in bytes, ``None`` in datasets converted before it was recorded.
        sha256: SHA-256 hex of the beton's bytes, ``None`` likewise.
        image_sizes: for a split whose images differ in size, the stored sizes in pixels as
            ``{"height": [min, mean, max], "width": [min, mean, max]}``; ``None`` when every
            image has the dataset's ``image_shape``.
    """

    file: str
    count: int
    class_counts: tuple[int, ...]
    skipped: int = 0
    size: int | None = None
    sha256: str | None = None
    # Given as a dict, kept as (name, (min, mean, max)) pairs: a SplitInfo keys the cache of checked files.
    image_sizes: tuple[tuple[str, tuple[float, float, float]], ...] | None = None

    def __post_init__(self) -> None:
        if self.image_sizes is not None:
            object.__setattr__(self, "image_sizes", tuple((k, tuple(v)) for k, v in dict(self.image_sizes).items()))

    @property
    def size_ranges(self) -> dict[str, tuple[float, float, float]] | None:
        """``image_sizes`` as a dict (``None`` for a fixed-size split)."""
        return None if self.image_sizes is None else dict(self.image_sizes)


@dataclass(frozen=True)
class DatasetMeta:
    """The contents of ``meta.json``.

    Args:
        dataset: dataset name (``cifar10`` …).
        classes: class names in label order.
        image_shape: ``(H, W, 3)`` when every image has that shape, else ``None`` (a variable-size
            dataset: each split's ``image_sizes`` then describes its sizes).
        splits: ``"train"``/``"test"`` → :class:`SplitInfo`.
        mean, std: per-channel statistics of the train split on the 0..1 scale.
        fingerprint: SHA-256 hex of the labels and sampled pixels; caches and checkpoints
            record it to refuse data they were not made from.
        encoding: ``"raw"`` pixels, ``"jpg"``, or ``"proportion"`` (a seeded share
            ``compress_probability`` of the images as JPEG, the rest raw: FFCV's mode of that name).
        jpeg_quality: JPEG quality when some images are JPEG.
        max_side: the cap on the longer side images were downscaled to at conversion, ``None`` without one.
        compress_probability: the JPEG share of ``"proportion"``, else ``None``.
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
    max_side: int | None = None
    compress_probability: float | None = None
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
            "encoding": self.encoding, "jpeg_quality": self.jpeg_quality, "max_side": self.max_side,
            "compress_probability": self.compress_probability,
            "splits": {k: _split_dict(info) for k, info in self.splits.items()},
            "mean": list(self.mean), "std": list(self.std), "fingerprint": self.fingerprint,
            "source": d["source"], "extra": d["extra"],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetMeta:
        """Inverse of :meth:`to_dict`; ``num_classes`` is derived from ``classes``."""
        return cls(
            dataset=d["dataset"], classes=tuple(d["classes"]),
            image_shape=tuple(d["image_shape"]) if d["image_shape"] else None,
            splits={k: SplitInfo(v["file"], int(v["count"]), tuple(v["class_counts"]), int(v.get("skipped", 0)),
                                 None if v.get("size") is None else int(v["size"]), v.get("sha256"),
                                 v.get("image_sizes"))
                    for k, v in d["splits"].items()},
            mean=tuple(d["mean"]), std=tuple(d["std"]), fingerprint=d["fingerprint"],
            encoding=d.get("encoding", "raw"), jpeg_quality=d.get("jpeg_quality"), max_side=d.get("max_side"),
            compress_probability=d.get("compress_probability"),
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
        try:
            tmp.write_text("{\n" + body + "\n}\n")
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)


def _split_dict(info: SplitInfo) -> dict[str, Any]:
    """A split's entry in ``meta.json``; ``image_sizes`` only for a variable-size split."""
    d = {"file": info.file, "count": info.count, "class_counts": list(info.class_counts), "skipped": info.skipped,
         "size": info.size, "sha256": info.sha256}
    if info.image_sizes is not None:
        d["image_sizes"] = {k: list(v) for k, v in info.image_sizes}
    return d


def size_ranges(sizes: np.ndarray) -> dict[str, list[float]]:
    """``{"height": [min, mean, max], "width": [...]}`` of int ``[N, 2]`` (height, width) sizes, as ``meta.json`` records.

    Example:
        >>> size_ranges(np.array([[10, 20], [30, 40]]))
        {'height': [10, 20.0, 30], 'width': [20, 30.0, 40]}
    """
    return {name: [int(col.min()), round(float(col.mean()), 2), int(col.max())]
            for name, col in (("height", sizes[:, 0]), ("width", sizes[:, 1]))}


def beton_path(directory: str | Path, split: str, *, meta: DatasetMeta | None = None) -> Path:
    """Path of ``split``'s beton in a converted dataset directory (checks that it exists).

    Args:
        meta: the directory's meta when the caller has loaded it already.

    Raises:
        UserError: unknown split or missing file.
    """
    meta = DatasetMeta.load(directory) if meta is None else meta
    if split not in meta.splits:
        raise UserError(f"unknown split {split!r}: {directory} has {', '.join(meta.splits)}")
    path = Path(directory) / meta.splits[split].file
    if not path.is_file():
        raise UserError(f"{path} is missing: {_reconvert(directory, meta)}")
    return path


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex of a file's bytes (``sha256sum`` gives the same): names betons, teachers and caches."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:  # hashlib.file_digest would do this, but only from Python 3.11
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reconvert(directory: str | Path, meta: DatasetMeta) -> str:
    source = meta.source.get("path", "SOURCE")
    return f"reconvert with `fasttarget convert {meta.dataset} --source {source} --out {directory} --force`"


def check_split(directory: str | Path, split: str, *, meta: DatasetMeta | None = None,
                checksum: bool = False) -> Path:
    """Verify that ``split``'s beton holds what ``meta.json`` records, without decoding images; returns its path.

    Checks the file's size (when recorded) and that it opens as a beton with the fields
    ``image`` (``RGBImageField``), ``label`` and ``index`` (``IntField``), holds ``count`` rows
    whose images have ``image_shape`` (when there is one), whose labels lie in
    ``0..num_classes-1`` with the recorded class counts, whose index numbers the rows
    ``0..count-1``, and whose data lies inside the file (a truncated file fails here even
    without a recorded size). A file that passed is remembered while its size, times and inode
    stay the same, so the loader, :func:`read_split` and :func:`read_labels` all call this.

    Args:
        directory: a converted dataset directory.
        split: ``"train"`` or ``"test"``.
        meta: the directory's meta when the caller has loaded it already.
        checksum: also compare the file's SHA-256 with the recorded one (reads the whole
            file: ``fasttarget inspect`` does, ``inspect --quick`` and the loaders do not).
            Datasets converted before checksums were recorded pass without it.

    Raises:
        UserError: naming the file, the first mismatch and the fix.
    """
    meta = DatasetMeta.load(directory) if meta is None else meta
    path = beton_path(directory, split, meta=meta)
    info, rerun = meta.splits[split], _reconvert(directory, meta)
    st = path.stat()
    if info.size is not None and st.st_size != info.size:
        raise UserError(f"{path} is {st.st_size} bytes, meta.json records {info.size} "
                        f"(truncated or changed since convert): {rerun}")
    stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    _check_structure(str(path), stamp, info, meta.num_classes, meta.image_shape, rerun)
    if checksum and info.sha256 is not None and file_sha256(path) != info.sha256:
        raise UserError(f"{path} does not match the SHA-256 meta.json records "
                        f"(damaged or changed since convert): {rerun}")
    return path


@functools.lru_cache(maxsize=64)
def _check_structure(path: str, stamp: tuple[int, ...], info: SplitInfo, num_classes: int,
                     image_shape: tuple[int, int, int] | None, rerun: str) -> None:
    """The checks of :func:`check_split` after the recorded size.

    ``stamp`` is the file's ``(device, inode, size, mtime, ctime)``: it keys the cache (a file
    written again gets new times) and gives the length the data must end at.
    """
    with kept_threads():
        from ffcv.fields import IntField, RGBImageField
        from ffcv.reader import Reader

    try:
        reader = Reader(path)
    except Exception as err:  # ffcv raises bare AssertionError/ValueError/IndexError on damaged files
        raise UserError(f"{path} does not open as a beton ({err!r}): {rerun}") from err
    fields = [(name, type(handler)) for name, handler in reader.handlers.items()]
    if fields != [("image", RGBImageField), ("label", IntField), ("index", IntField)]:
        found = ", ".join(f"{name} ({kind.__name__})" for name, kind in fields)
        raise UserError(f"{path} has fields {found}, expected image (RGBImageField), label, index (IntField): {rerun}")
    if reader.num_samples != info.count:
        raise UserError(f"{path} holds {reader.num_samples} samples, meta.json says {info.count}: {rerun}")
    rows, alloc = reader.metadata, reader.alloc_table
    data_end, file_size = int(reader.header["alloc_table_ptr"]), stamp[2]
    if (len(rows) != info.count or len(alloc) != info.count or data_end + alloc.nbytes != file_size
            or (len(alloc) and int((alloc["ptr"] + alloc["size"]).max()) > data_end)):
        raise UserError(f"{path} is truncated or damaged (its data does not end where its header says): {rerun}")
    images, labels, index = rows["f0"], rows["f1"], rows["f2"]
    if image_shape is not None and (np.any(images["height"] != image_shape[0])
                                    or np.any(images["width"] != image_shape[1])):
        raise UserError(f"{path} holds images that are not {image_shape[0]}x{image_shape[1]} as meta.json "
                        f"says: {rerun}")
    ranges = info.size_ranges
    if ranges is not None and len(rows):
        found = size_ranges(np.stack([images["height"], images["width"]], 1))
        if any(found[k][0::2] != list(ranges[k])[0::2] for k in ("height", "width")):
            raise UserError(f"{path} holds images of {found['height'][0]}..{found['height'][2]} x "
                            f"{found['width'][0]}..{found['width'][2]} pixels, meta.json records "
                            f"{ranges['height'][0]}..{ranges['height'][2]} x {ranges['width'][0]}..{ranges['width'][2]}: "
                            f"{rerun}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path} has labels {labels.min()}..{labels.max()}, but meta.json lists {num_classes} "
                        f"classes: {rerun}")
    counts = tuple(int(c) for c in np.bincount(labels, minlength=num_classes))
    if counts != info.class_counts:
        raise UserError(f"{path} has class counts {counts}, meta.json says {info.class_counts}: {rerun}")
    if not np.array_equal(index, np.arange(info.count)):
        raise UserError(f"{path} has an index field that is not 0..{info.count - 1}: {rerun}")


def check_dataset(directory: str | Path, *, checksum: bool = True) -> DatasetMeta:
    """Verify every split with :func:`check_split`; returns the meta.

    Args:
        checksum: also compare each beton's SHA-256 (``fasttarget inspect``; ``--quick`` skips it).

    Raises:
        UserError: naming the first mismatch.
    """
    meta = DatasetMeta.load(directory)
    for split in meta.splits:
        check_split(directory, split, meta=meta, checksum=checksum)
    return meta


def read_split(directory: str | Path, split: str, num_workers: int | None = None, *,
               meta: DatasetMeta | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode a whole split back into memory, in index order, after :func:`check_split`.

    Args:
        directory: a converted dataset directory.
        split: ``"train"`` or ``"test"``.
        num_workers: ffcv decoding threads (default: all usable cores).
        meta: the directory's meta when the caller has loaded it already.

    Returns:
        ``(images uint8 [N,H,W,3], labels int64 [N])`` with row ``i`` = sample index ``i``.

    Raises:
        UserError: the directory is not a converted dataset, its images differ in size, or
            the beton does not hold what ``meta.json`` records.
    """
    with kept_threads():  # ffcv resets torch's and numba's thread counts
        return _read_split(directory, split, num_workers, meta)


def _read_split(directory: str | Path, split: str, num_workers: int | None,
                meta: DatasetMeta | None) -> tuple[np.ndarray, np.ndarray]:
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    meta = DatasetMeta.load(directory) if meta is None else meta
    if meta.image_shape is None:
        raise UserError(f"{directory} holds images of different sizes, which read_split cannot hold in one "
                        "array: stream it with fasttarget.loader.build_loader, which crops them as it decodes")
    path = check_split(directory, split, meta=meta)
    n = meta.count(split)
    # Filled completely: check_split made sure the index field numbers exactly these n rows.
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


def read_labels(directory: str | Path, split: str, *, meta: DatasetMeta | None = None) -> np.ndarray:
    """The int64 ``[N]`` labels of ``split`` in index order, read from the beton's metadata (no decoding),
    after :func:`check_split`.

    Example: the per-class rows of an IPC subset,
    ``select_subset(read_labels(d, "train"), SubsetConfig(ipc=10))``.
    """
    path = check_split(directory, split, meta=meta)
    with kept_threads():
        from ffcv.reader import Reader

    return np.array(Reader(str(path)).metadata["f1"], dtype=np.int64)


def read_image_sizes(directory: str | Path, split: str, *, meta: DatasetMeta | None = None) -> np.ndarray:
    """The stored ``(height, width)`` of every image of ``split`` in index order, int64 ``[N, 2]``,
    read from the beton's metadata (no decoding), after :func:`check_split`.

    The loader draws the crop boxes of variable-size data from these sizes.
    """
    path = check_split(directory, split, meta=meta)
    with kept_threads():
        from fasttarget.decode import stored_sizes

    return stored_sizes(path)


def describe(meta: DatasetMeta) -> str:
    """A human-readable summary of a dataset's meta, several lines."""
    shape = "x".join(map(str, meta.image_shape)) if meta.image_shape else "variable size"
    quality = f" (quality {meta.jpeg_quality})" if meta.jpeg_quality is not None else ""
    if meta.compress_probability is not None:
        quality += f", {meta.compress_probability:.0%} of them JPEG"
    if meta.max_side is not None:
        quality += f", longer side at most {meta.max_side}"
    lines = [
        f"dataset     {meta.dataset} ({meta.num_classes} classes: {', '.join(meta.classes[:5])}"
        f"{', ...' if meta.num_classes > 5 else ''})",
        f"images      {shape}, {meta.encoding}{quality}",
    ]
    for split, info in meta.splits.items():
        lo, hi = min(info.class_counts), max(info.class_counts)
        per_class = f"{lo}" if lo == hi else f"{lo}..{hi}"
        skipped = f", {info.skipped} unreadable skipped" if info.skipped else ""
        ranges = info.size_ranges
        sizes = "" if ranges is None else (f", {ranges['height'][0]}..{ranges['height'][2]} x "
                                          f"{ranges['width'][0]}..{ranges['width'][2]} px")
        lines.append(f"{split:<11} {info.count} samples ({per_class} per class){sizes}{skipped}")
    lines += [
        f"mean / std  {', '.join(f'{m:.4f}' for m in meta.mean)} / {', '.join(f'{s:.4f}' for s in meta.std)}",
        f"fingerprint {meta.fingerprint[:16]}",
        f"source      {meta.source.get('layout', '?')} at {meta.source.get('path', '?')}",
    ]
    return "\n".join(lines)
