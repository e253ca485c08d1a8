"""Converting a source dataset into FFCV betons: ``DIR/train.beton``, ``DIR/test.beton``, ``DIR/meta.json``.

Each beton has the fields ``image`` (``RGBImageField``: raw pixels when no image side exceeds
:data:`RAW_MAX_SIDE`, JPEG otherwise, or with ``compress_probability`` a seeded share as JPEG and
the rest raw: FFCV's ``proportion`` mode), ``label`` and ``index`` (the sample's row number,
the key of Strategy C's cache). Images keep their own size (downscaled to ``max_side`` if
larger), so a folder of photos gives a variable-size dataset whose ``meta.json`` records the
size ranges instead of one ``image_shape``. Images that need encoding are encoded on every core; the
samples are laid out in index order, so converting the same source twice gives the same
bytes, and ``meta.json`` records each beton's size and SHA-256.

The conversion is atomic: every file is first written under a temporary name inside
``DIR`` and renamed once all are complete, ``meta.json`` last, so an interrupted run leaves
nothing that looks finished and a rerun starts clean.

Image files (Tiny-ImageNet, image folders) are decoded once up front on every core to find
unreadable ones (fail naming the file, or skip and count them with ``skip_bad``), their
sizes and the pixel statistics; the writer decodes them again while encoding.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "toy.beton"
    >>> images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    >>> write_split(out, images, np.arange(8) % 2, num_workers=1, progress=False)
    >>> out.stat().st_size > images.nbytes
    True
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import math
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from fasttarget.dataset import META_FILE, SPLITS, DatasetMeta, SplitInfo, file_sha256, size_ranges
from fasttarget.errors import UserError
from fasttarget.holdout import check_val_fraction, hold_out_test_split
from fasttarget.progress import show_bar
from fasttarget.threads import kept_threads
from fasttarget.sources import DATASETS, Source, Split, download_source, load_image, open_source

RAW_MAX_SIDE = 64
# The longer side ImageNet is stored at unless --max-side says otherwise (FFCV's ImageNet recipe writes 500 or 512).
IMAGENET_MAX_SIDE = 500
# First word of the seed of the proportion mode's choice of JPEG rows (fixed: a conversion has no seed).
_PROPORTION_STREAM = 0x9E
FINGERPRINT_SAMPLES = 64
_TMP = re.compile(r"^\.(train\.beton|test\.beton|meta\.json)\.(\d+)\.tmp$")


def usable_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class ConvertConfig:
    """What ``fasttarget convert`` does.

    Args:
        dataset: one of :data:`fasttarget.sources.DATASETS`.
        source: folder with the data (the layout folder or its parent); the download root with ``download``.
        out: dataset directory to write.
        force: overwrite an existing converted dataset in ``out``.
        download: fetch ``cifar10``/``cifar100`` into ``source`` first (needs internet).
        jpeg_quality: JPEG quality of the images stored as JPEG.
        max_side: cap on the longer image side (downscaled before writing); ``None`` = the dataset's
            default (:data:`IMAGENET_MAX_SIDE` for ``imagenet``, no cap otherwise), ``0`` = no cap.
        compress_probability: store this share of the images as JPEG and the rest raw (FFCV's
            ``proportion`` mode; which ones is a seeded choice, so conversions stay reproducible);
            ``None`` = raw up to :data:`RAW_MAX_SIDE`, JPEG above.
        skip_bad: leave unreadable image files out (counted in ``meta.json``) instead of failing.
        num_workers: encoding processes; 0 = every usable core.
        progress: show progress bars (on stderr).
        val_fraction: hold out this share of every class as the test split of a source that
            has none (class folders only; :mod:`fasttarget.holdout`).
        seed: which images ``val_fraction`` holds out.
    """

    dataset: str
    source: Path
    out: Path
    force: bool = False
    download: bool = False
    jpeg_quality: int = 90
    max_side: int | None = None
    compress_probability: float | None = None
    skip_bad: bool = False
    num_workers: int = 0
    progress: bool = True
    val_fraction: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", Path(self.source))  # accept str paths from library callers
        object.__setattr__(self, "out", Path(self.out))
        if self.dataset not in DATASETS:
            raise UserError(f"unknown dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise UserError(f"--jpeg-quality must be in 1..100, got {self.jpeg_quality}")
        if self.max_side is not None and (self.max_side < 0 or 0 < self.max_side < 8):
            raise UserError(f"--max-side must be at least 8 pixels (or 0 for no cap), got {self.max_side}")
        if self.compress_probability is not None and not 0 <= self.compress_probability <= 1:
            raise UserError(f"--compress-probability must be in 0..1, got {self.compress_probability}")
        if self.num_workers < 0:
            raise UserError(f"--workers must be 0 (all cores) or positive, got {self.num_workers}")
        check_val_fraction(self.val_fraction)

    @property
    def workers(self) -> int:
        return self.num_workers or usable_cores()

    @property
    def side_cap(self) -> int | None:
        """The longer side images are downscaled to, ``None`` for none (``max_side`` resolved)."""
        if self.max_side is None:
            return IMAGENET_MAX_SIDE if self.dataset == "imagenet" else None
        return self.max_side or None


class _Samples:
    """The indexable FFCV's writer reads: sample ``i`` → ``(image, label, index)``."""

    def __init__(self, images: Sequence[np.ndarray], labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int]:
        return self.images[i], int(self.labels[i]), i


PAGE_SIZE = 8 * 2**20  # DatasetWriter's default page size
# ffcv.fields.rgb_image.IMAGE_MODES["raw"]: that table is a numba dict, and one lookup compiles for a second.
_RAW_MODE = 1
_ENCODE_CHUNK = 256  # samples per task of the encoding workers


def write_split(
    path: str | Path,
    images: Sequence[np.ndarray],
    labels: np.ndarray,
    *,
    encoding: str = "raw",
    jpeg_quality: int = 90,
    compress_probability: float = 0.5,
    max_side: int | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    desc: str = "write",
) -> None:
    """Write one beton with fields ``image``, ``label``, ``index`` (``index`` = row number).

    The file is FFCV's beton format (``ffcv.reader.Reader``, ``ffcv.loader.Loader``) with the
    samples' data laid out in index order, so the same input gives the same bytes whatever the
    number of workers. FFCV's ``DatasetWriter`` lets its workers claim pages in the order they
    finish, so two of its runs differ; here workers only encode (FFCV's own ``RGBImageField``)
    and one process lays out the pages. Raw in-memory arrays need no encoding and no workers.

    Writes ``path`` directly; :func:`convert` makes the directory atomic around it.

    Args:
        path: the ``.beton`` file to write.
        images: uint8 ``[N,H,W,3]`` array, or any sequence whose items are ``uint8 [H,W,3]``
            (e.g. :class:`fasttarget.sources.ImageFiles`, decoded in the worker processes).
        labels: int ``[N]``.
        encoding: ``"raw"``, ``"jpg"`` or ``"proportion"`` (FFCV's mode: each sample is JPEG with
            probability ``compress_probability``, raw otherwise; drawn from a fixed seed per row, so
            the same input still gives the same bytes).
        jpeg_quality: JPEG quality of the JPEG samples.
        compress_probability: the JPEG share of ``"proportion"``.
        max_side: downscale images whose longer side exceeds it.
        num_workers: encoding processes (default: every usable core).
        progress: show a progress bar.
        desc: progress bar label.

    Raises:
        OSError: writing failed (``errno.ENOSPC`` when the disk is full).
        RuntimeError: a sample could not be encoded (its error is printed above).
    """
    with kept_threads():  # importing ffcv sets torch's threads to 1 (fasttarget.threads)
        from ffcv.fields import IntField, RGBImageField

    if encoding not in ("raw", "jpg", "proportion"):
        raise ValueError(f"encoding must be 'raw', 'jpg' or 'proportion', got {encoding!r}")
    labels = np.asarray(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if isinstance(images, np.ndarray) and (images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3):
        # Checked here for a clear error before any writer process starts.
        raise ValueError(f"images must be uint8 [N,H,W,3], got {images.dtype} {images.shape}")
    def image_field(mode: str):
        return RGBImageField(write_mode=mode, max_resolution=max_side, jpeg_quality=jpeg_quality)

    fields = {"image": image_field("raw" if encoding == "proportion" else encoding), "label": IntField(),
              "index": IntField()}
    # The image field's header entry is the same whatever its mode; each row records its own.
    encoders = (fields["image"],) if encoding != "proportion" else (image_field("raw"), image_field("jpg"))
    as_jpeg = None if encoding != "proportion" else (
        np.random.default_rng([_PROPORTION_STREAM]).random(len(labels)) < compress_probability)
    raw_arrays = isinstance(images, np.ndarray) and encoding == "raw" and (
        max_side is None or max(images.shape[1:3]) <= max_side)
    _run_in_process_group(functools.partial(
        _write_beton, Path(path), fields, _Encoders(encoders, images, as_jpeg), labels, raw_arrays,
        num_workers or usable_cores(), progress, desc))
    if not Path(path).is_file():
        raise RuntimeError(f"the beton writer exited without writing {path}")


@dataclass(frozen=True)
class _Encoders:
    """What the encoding workers need: one image field per mode, the samples, and which rows take the second."""

    fields: tuple[Any, ...]
    images: Sequence[np.ndarray]
    second: np.ndarray | None  # bool per row (the proportion mode's JPEG rows), None with one field


def _write_beton(path: Path, fields: dict, encoders: _Encoders, labels: np.ndarray, raw_arrays: bool,
                 num_workers: int, progress: bool, desc: str) -> None:
    """The beton layout: header, field descriptors, metadata, pages from the next page boundary, allocation table."""
    from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, TYPE_ID_HANDLER, FieldDescType, HeaderType, \
        get_metadata_type
    from tqdm import tqdm

    n = len(labels)
    metadata = np.zeros(n, get_metadata_type(list(fields.values())))
    metadata["f1"], metadata["f2"] = labels, np.arange(n)  # what IntField.encode writes, for all rows at once
    descriptors = np.zeros(len(fields), FieldDescType)
    type_ids = {handler: type_id for type_id, handler in TYPE_ID_HANDLER.items()}
    for i, (name, field) in enumerate(fields.items()):
        encoded = np.frombuffer(name.encode("ascii"), np.uint8)[: descriptors["name"].shape[1]]
        descriptors["type_id"][i] = type_ids[type(field)]
        descriptors["name"][i, : len(encoded)] = encoded
        descriptors["arguments"][i] = field.to_binary()[0]
    data_start = HeaderType.itemsize + descriptors.nbytes + metadata.nbytes
    first_page = -(-data_start // PAGE_SIZE) * PAGE_SIZE if n else data_start
    alloc = np.zeros(n, ALLOC_TABLE_TYPE)
    alloc["sample_id"] = np.arange(n)

    with open(path, "wb") as fh, \
            tqdm(total=n, desc=desc, unit="img", disable=not show_bar(progress), mininterval=0.5) as bar:
        fh.write(bytes(first_page))  # header and metadata are written last, once the pointers are known
        pages = _Pages(fh, first_page)
        for start, (image_rows, sizes, payload) in _encoded_chunks(encoders, n, raw_arrays, num_workers):
            stop = start + len(sizes)
            image_rows["data_ptr"] = alloc["ptr"][start:stop] = pages.add(sizes, payload)
            metadata["f0"][start:stop] = image_rows
            alloc["size"][start:stop] = sizes
            bar.update(len(sizes))
        pages.close()
        header = np.zeros((), HeaderType)
        header["version"], header["num_fields"], header["page_size"] = CURRENT_VERSION, len(fields), PAGE_SIZE
        header["num_samples"], header["alloc_table_ptr"] = n, fh.tell()
        fh.write(alloc.tobytes())
        fh.seek(0)
        fh.write(header.tobytes() + descriptors.tobytes() + metadata.tobytes())


class _Pages:
    """Packs encoded samples into pages of :data:`PAGE_SIZE` in the order they come.

    FFCV's loader reads a sample from one page, so a sample that does not fit in what is left
    of a page starts the next one; a page's unused end is zeros (FFCV's own allocator does the same).
    """

    def __init__(self, fh: Any, start: int):
        self.fh, self.start, self.page, self.used = fh, start, 0, 0

    def add(self, sizes: np.ndarray, payload: np.ndarray) -> np.ndarray:
        """Write samples whose encoded bytes lie back to back in ``payload``; returns their file offsets."""
        ends = np.cumsum(sizes, dtype=np.uint64)
        ptrs = np.empty(len(sizes), np.uint64)
        done, written = 0, 0
        while done < len(sizes):
            fit = int(np.searchsorted(ends, written + PAGE_SIZE - self.used, side="right"))
            if fit == done:
                if sizes[done] > PAGE_SIZE:
                    raise ValueError(f"an encoded image of {sizes[done]} bytes does not fit a beton page of {PAGE_SIZE}")
                self._next_page()
                continue
            # offset in the payload, then where the payload's next byte lands in the file
            ptrs[done:fit] = ends[done:fit] - sizes[done:fit] - np.uint64(written) + np.uint64(
                self.start + self.page * PAGE_SIZE + self.used)
            self.fh.write(payload[written:int(ends[fit - 1])])
            self.used += int(ends[fit - 1]) - written
            done, written = fit, int(ends[fit - 1])
        return ptrs

    def _next_page(self) -> None:
        self.fh.write(bytes(PAGE_SIZE - self.used))
        self.page, self.used = self.page + 1, 0

    def close(self) -> None:
        """Pad the last page to its full size."""
        if self.used:
            self._next_page()


def _encoded_chunks(encoders: _Encoders, n: int, raw_arrays: bool,
                    num_workers: int) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """``(first row, (image metadata rows, sizes, payload))`` per chunk of samples, in row order."""
    starts = range(0, n, _ENCODE_CHUNK)
    if raw_arrays:
        for start in starts:
            yield start, _raw_chunk(encoders.fields[0], encoders.images[start:start + _ENCODE_CHUNK])
        return
    with Pool(num_workers, initializer=_set_encoder, initargs=(encoders,)) as pool:
        yield from zip(starts, pool.imap(_encode_chunk, starts))
        # Ended by close/join, not by the context's terminate: workers killed by a signal would
        # look failed to the process group's watcher.
        pool.close()
        pool.join()


def _raw_chunk(field, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What ``RGBImageField.encode`` gives for raw pixels that need no resizing, for a block of rows."""
    rows = np.zeros(len(images), field.metadata_type)
    rows["mode"], rows["height"], rows["width"] = _RAW_MODE, images.shape[1], images.shape[2]
    sizes = np.full(len(images), math.prod(images.shape[1:]), np.uint64)
    return rows, sizes, np.ascontiguousarray(images).reshape(-1)


_encoder: _Encoders | None = None  # an encoding worker's fields and samples


def _set_encoder(encoders: _Encoders) -> None:
    # Pool initializer: under fork the samples are inherited, not pickled with every task.
    global _encoder
    _encoder = encoders


def _encode_chunk(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fields, images, second = _encoder.fields, _encoder.images, _encoder.second
    stop = min(start + _ENCODE_CHUNK, len(images))
    rows = np.zeros(stop - start, fields[0].metadata_type)
    parts: list[np.ndarray] = []

    def malloc(size: int) -> tuple[int, np.ndarray]:
        parts.append(np.empty(size, np.uint8))
        return 0, parts[-1]  # the real offset is set when the page layout is known

    for j in range(stop - start):
        field = fields[int(second[start + j])] if second is not None else fields[0]
        field.encode(rows[j:j + 1], images[start + j], malloc)
    return rows, np.array([len(p) for p in parts], np.uint64), np.concatenate(parts)


def _run_in_process_group(work: Callable[[], None]) -> None:
    """Run ``work`` in a forked child that leads its own process group, and wait for it.

    A pool of encoding workers cannot be stopped cleanly: on Ctrl-C each worker raises on its
    own, and a worker killed outright leaves the pool waiting for its task forever. Run in a
    separate group, the writer and its workers never see the terminal's Ctrl-C: this process
    kills the whole group instead, and the group kills itself when this process dies or one of
    its workers fails.

    Raises:
        OSError: ``errno.ENOSPC`` when the child ran out of disk space.
        RuntimeError: the child failed otherwise (its traceback is printed above).
    """
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=_group_leader, args=(work, os.getpid()))
    child.start()
    try:
        child.join()
    except BaseException:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:  # interrupted before the child made its group
            child.kill()
        child.join()
        raise
    if child.exitcode == _NO_SPACE_EXIT:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if child.exitcode != 0:
        raise RuntimeError(f"the beton writer failed (exit code {child.exitcode}); its error is printed above")


# The exit code a group leader that ran out of disk space leaves: the caller reports it in one line.
_NO_SPACE_EXIT = errno.ENOSPC


def _group_leader(work: Callable[[], None], parent: int) -> None:
    os.setpgrp()
    threading.Thread(target=_watch_group, args=(parent,), daemon=True).start()
    try:
        work()
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        sys.exit(_NO_SPACE_EXIT)  # without the traceback multiprocessing would print


def _watch_group(parent: int) -> None:
    while os.getppid() == parent and not _failed_children():
        time.sleep(0.2)
    os.killpg(0, signal.SIGKILL)


def _failed_children() -> bool:
    """Whether a child of this process has exited with an error (Linux /proc; its wait status is non-zero)."""
    for listing in Path("/proc/self/task").glob("*/children"):
        for pid in listing.read_text().split():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except FileNotFoundError:  # reaped meanwhile
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # state is field 3, exit_code field 52
            if fields[0] == "Z" and int(fields[49]) != 0:
                return True
    return False


# --- statistics and fingerprint --------------------------------------------------------

def _resize(image: np.ndarray, max_side: int | None) -> np.ndarray:
    with kept_threads():
        from ffcv.fields.rgb_image import resizer  # the writer's own resize, so sizes and stats match it

    return resizer(image, max_side)


@functools.cache
def _histogram_kernel():
    import numba

    # np.bincount first widens 150 M uint8 pixels to int64 (over a second for CIFAR-10); this loop does not.
    @numba.njit(nogil=True, cache=True)
    def histogram(flat: np.ndarray) -> np.ndarray:
        out = np.zeros((3, 256), np.int64)
        for i in range(flat.shape[0]):
            for c in range(3):
                out[c, flat[i, c]] += 1
        return out

    return histogram


def channel_histogram(images: np.ndarray) -> np.ndarray:
    """Per-channel counts of each pixel value of uint8 ``[..., 3]`` images: int64 ``[3, 256]``.

    ``mean_std(channel_histogram(images))`` gives the statistics ``meta.json`` records.
    """
    return _histogram_kernel()(np.ascontiguousarray(images).reshape(-1, 3))


def mean_std(histogram: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the 0..1 scale from a ``[3, 256]`` value histogram."""
    values = np.arange(256) / 255.0
    n = histogram.sum(axis=1)
    mean = (histogram * values).sum(axis=1) / n
    var = (histogram * values**2).sum(axis=1) / n - mean**2
    return tuple(float(round(m, 6)) for m in mean), tuple(float(round(s, 6)) for s in np.sqrt(np.maximum(var, 0)))


def pixel_settings(encoding: str, jpeg_quality: int | None, max_side: int | None, mean: Sequence[float],
                   std: Sequence[float], compress_probability: float | None = None) -> dict[str, Any]:
    """What decides the stored pixels and their normalization besides the source images.

    Two conversions of one source with other settings hold other pixels, so a cache or a
    teacher made from one must be refused on the other: :func:`fingerprint` hashes these too.
    ``jpeg_quality`` counts only where images are JPEG, ``compress_probability`` only for ``"proportion"``.
    """
    return {"encoding": encoding, "jpeg_quality": jpeg_quality if encoding != "raw" else None,
            "max_side": max_side, "mean": [float(m) for m in mean], "std": [float(s) for s in std],
            "compress_probability": compress_probability if encoding == "proportion" else None}


def fingerprint(splits: dict[str, Split], settings: dict[str, Any]) -> str:
    """SHA-256 hex of every label, the pixels of up to :data:`FINGERPRINT_SAMPLES` evenly spaced
    samples per split and the conversion's :func:`pixel_settings`."""
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True).encode())
    for name, split in splits.items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(split.labels, np.int64).tobytes())
        if len(split):
            for i in np.unique(np.linspace(0, len(split) - 1, FINGERPRINT_SAMPLES).astype(int)):
                h.update(np.ascontiguousarray(split.load(int(i))).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class _Scanned:
    """A split after the up-front pass: readable samples, their stored (height, width), value histogram, skipped count."""

    split: Split
    sizes: np.ndarray  # int [N, 2]
    histogram: np.ndarray
    skipped: int


_SCAN_CHUNK = 64


def _scan_files(job: tuple[tuple[Path, ...], int | None]) -> tuple[list, np.ndarray]:
    """Decode a chunk of files: each one's shape (``None`` if unreadable, with the error) and the chunk's histogram."""
    paths, max_side = job
    outcomes = []
    histogram = np.zeros((3, 256), np.int64)
    for path in paths:
        try:
            image = _resize(load_image(path), max_side)
        except UserError as err:
            outcomes.append((None, str(err)))
            continue
        outcomes.append((image.shape, None))
        histogram += channel_histogram(image)
    return outcomes, histogram


def _scan(split: Split, cfg: ConvertConfig, name: str) -> _Scanned:
    cap = cfg.side_cap
    if split.images is not None:
        images = split.images
        if cap is not None and max(images.shape[1:3]) > cap:
            images = np.stack([_resize(im, cap) for im in images])
            split = Split(split.labels, images=images)
        return _Scanned(split, np.tile(images.shape[1:3], (len(images), 1)), channel_histogram(images), 0)

    from tqdm import tqdm

    # Imported and compiled once here: forked scan workers would each spend seconds on them.
    with kept_threads():
        import ffcv.fields.rgb_image  # noqa: F401
    channel_histogram(np.zeros((1, 1, 1, 3), np.uint8))

    files = split.files
    jobs = [(files[i:i + _SCAN_CHUNK], cap) for i in range(0, len(files), _SCAN_CHUNK)]
    outcomes: list[tuple[tuple[int, ...] | None, str | None]] = []
    histogram = np.zeros((3, 256), np.int64)
    with Pool(min(cfg.workers, max(len(jobs), 1))) as pool, \
            tqdm(total=len(files), unit="img", desc=f"check {name}", disable=not show_bar(cfg.progress), mininterval=0.5) as bar:
        for chunk_outcomes, chunk_histogram in pool.imap(_scan_files, jobs):
            outcomes += chunk_outcomes
            histogram += chunk_histogram
            bar.update(len(chunk_outcomes))
    bad = [err for _, err in outcomes if err]
    if bad and not cfg.skip_bad:
        raise UserError(f"{len(bad)} unreadable image file(s) in the {name} split, first: {bad[0]}")
    keep = np.array([i for i, (shape, _) in enumerate(outcomes) if shape is not None], np.int64)
    sizes = np.array([outcomes[i][0][:2] for i in keep], np.int64).reshape(-1, 2)
    return _Scanned(split.subset(keep), sizes, histogram, len(bad))


# --- the dataset directory -------------------------------------------------------------

def _tmp_name(out: Path, final: str) -> Path:
    return out / f".{final}.{os.getpid()}.tmp"


def _remove_stale_temporaries(out: Path) -> None:
    """Delete temporary files of conversions whose process is gone (killed, crashed)."""
    for p in out.iterdir():
        m = _TMP.match(p.name)
        if m and not _pid_alive(int(m.group(2))):
            p.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prepare_out(cfg: ConvertConfig) -> None:
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a directory path")
    out.mkdir(parents=True, exist_ok=True)
    finished = [n for n in (META_FILE, "train.beton", "test.beton") if (out / n).exists()]
    if finished and not cfg.force:
        raise UserError(f"{out} already holds {', '.join(finished)}: pass --force to overwrite, or choose another --out")
    _remove_stale_temporaries(out)


def convert(cfg: ConvertConfig) -> DatasetMeta:
    """Convert ``cfg.dataset`` from ``cfg.source`` into ``cfg.out``; returns the written meta.

    Raises:
        UserError: bad source, unreadable image (without ``skip_bad``), existing output
            without ``force``, failed download, no space left on the device.
    """
    if cfg.download:
        download_source(cfg.dataset, cfg.source)
    source = hold_out_test_split(open_source(cfg.dataset, cfg.source), cfg.val_fraction, cfg.seed)
    _prepare_out(cfg)
    scanned = {name: _scan(source.split(name), cfg, name) for name in SPLITS}
    if not len(scanned["train"].split):
        raise UserError(f"no readable training images in {source.path}: check the --source folder")
    sizes = np.concatenate([s.sizes for s in scanned.values()])
    if cfg.compress_probability is not None:
        encoding = "proportion"
    else:
        encoding = "raw" if int(sizes.max()) <= RAW_MAX_SIDE else "jpg"
    mean, std = mean_std(scanned["train"].histogram)

    temporaries = {name: _tmp_name(cfg.out, f"{name}.beton") for name in SPLITS}
    try:
        files = {}
        for name in SPLITS:
            split = scanned[name].split
            with _no_space_is_user_error(cfg.out / f"{name}.beton"):
                write_split(temporaries[name], split.pixels(), split.labels, encoding=encoding,
                            jpeg_quality=cfg.jpeg_quality, compress_probability=cfg.compress_probability or 0.0,
                            max_side=cfg.side_cap, num_workers=cfg.workers, progress=cfg.progress,
                            desc=f"write {name}")
            files[name] = (temporaries[name].stat().st_size, file_sha256(temporaries[name]))
        meta = _build_meta(source, cfg, scanned, sizes, encoding, mean, std, files)
        # Old meta first: from here until the new one lands, the directory looks unfinished.
        (cfg.out / META_FILE).unlink(missing_ok=True)
        for name in SPLITS:
            temporaries[name].replace(cfg.out / f"{name}.beton")
        with _no_space_is_user_error(cfg.out / META_FILE):
            meta.save(cfg.out)
    finally:
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)
    return meta


@contextlib.contextmanager
def _no_space_is_user_error(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise UserError(f"no space left on device writing {path}: free space or choose another --out") from err


def _build_meta(source: Source, cfg: ConvertConfig, scanned: dict[str, _Scanned], sizes: np.ndarray,
                encoding: str, mean: tuple, std: tuple, files: dict[str, tuple[int, str]]) -> DatasetMeta:
    k = len(source.classes)
    fixed = len(np.unique(sizes, axis=0)) == 1
    return DatasetMeta(
        dataset=source.dataset,
        classes=source.classes,
        image_shape=(int(sizes[0, 0]), int(sizes[0, 1]), 3) if fixed else None,
        splits={
            name: SplitInfo(
                file=f"{name}.beton", count=len(s.split),
                class_counts=tuple(int(c) for c in np.bincount(s.split.labels, minlength=k)),
                skipped=s.skipped, size=files[name][0], sha256=files[name][1],
                image_sizes=None if fixed or not len(s.sizes) else size_ranges(s.sizes),
            )
            for name, s in scanned.items()
        },
        mean=mean, std=std,
        fingerprint=fingerprint({name: s.split for name, s in scanned.items()},
                                pixel_settings(encoding, cfg.jpeg_quality, cfg.side_cap, mean, std,
                                               cfg.compress_probability)),
        encoding=encoding,
        jpeg_quality=cfg.jpeg_quality if encoding != "raw" else None,
        max_side=cfg.side_cap,
        compress_probability=cfg.compress_probability if encoding == "proportion" else None,
        source={"layout": source.layout, "path": str(Path(source.path).resolve())},
        extra=dict(source.extra),
    )
