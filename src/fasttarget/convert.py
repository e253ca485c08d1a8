"""Converting a source dataset into FFCV betons: ``DIR/train.beton``, ``DIR/test.beton``, ``DIR/meta.json``.

Each beton has the fields ``image`` (``RGBImageField``: raw pixels when no image side exceeds
:data:`RAW_MAX_SIDE`, JPEG otherwise), ``label`` and ``index`` (the sample's row number,
the key of Strategy C's cache). FFCV's ``DatasetWriter`` encodes on every core.

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

import functools
import hashlib
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fasttarget.dataset import META_FILE, SPLITS, DatasetMeta, SplitInfo
from fasttarget.errors import UserError
from fasttarget.threads import kept_threads
from fasttarget.sources import DATASETS, Source, Split, download_source, load_image, open_source

RAW_MAX_SIDE = 64
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
        jpeg_quality: JPEG quality for images larger than :data:`RAW_MAX_SIDE`.
        max_side: cap on the longer image side (downscaled before writing), or ``None``.
        skip_bad: leave unreadable image files out (counted in ``meta.json``) instead of failing.
        num_workers: encoding processes; 0 = every usable core.
        progress: show progress bars (on stderr).
    """

    dataset: str
    source: Path
    out: Path
    force: bool = False
    download: bool = False
    jpeg_quality: int = 90
    max_side: int | None = None
    skip_bad: bool = False
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", Path(self.source))  # accept str paths from library callers
        object.__setattr__(self, "out", Path(self.out))
        if self.dataset not in DATASETS:
            raise UserError(f"unknown dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise UserError(f"--jpeg-quality must be in 1..100, got {self.jpeg_quality}")
        if self.max_side is not None and self.max_side < 8:
            raise UserError(f"--max-side must be at least 8 pixels, got {self.max_side}")
        if self.num_workers < 0:
            raise UserError(f"--workers must be 0 (all cores) or positive, got {self.num_workers}")

    @property
    def workers(self) -> int:
        return self.num_workers or usable_cores()


class _Samples:
    """The indexable FFCV's writer reads: sample ``i`` → ``(image, label, index)``."""

    def __init__(self, images: Sequence[np.ndarray], labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int]:
        return self.images[i], int(self.labels[i]), i


def write_split(
    path: str | Path,
    images: Sequence[np.ndarray],
    labels: np.ndarray,
    *,
    encoding: str = "raw",
    jpeg_quality: int = 90,
    max_side: int | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    desc: str = "write",
) -> None:
    """Write one beton with fields ``image``, ``label``, ``index`` (``index`` = row number).

    Writes ``path`` directly; :func:`convert` makes the directory atomic around it.

    Args:
        path: the ``.beton`` file to write.
        images: uint8 ``[N,H,W,3]`` array, or any sequence whose items are ``uint8 [H,W,3]``
            (e.g. :class:`fasttarget.sources.ImageFiles`, decoded in the writer's processes).
        labels: int ``[N]``.
        encoding: ``"raw"`` or ``"jpg"``.
        jpeg_quality: JPEG quality for ``"jpg"``.
        max_side: downscale images whose longer side exceeds it.
        num_workers: writer processes (default: every usable core).
        progress: show a progress bar.
        desc: progress bar label.
    """
    with kept_threads():  # importing ffcv sets torch's threads to 1 (fasttarget.threads)
        from ffcv.fields import IntField, RGBImageField
        from ffcv.writer import DatasetWriter

    if encoding not in ("raw", "jpg"):
        raise ValueError(f"encoding must be 'raw' or 'jpg', got {encoding!r}")
    labels = np.asarray(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if isinstance(images, np.ndarray) and (images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3):
        # Checked here for a clear error before any writer process starts.
        raise ValueError(f"images must be uint8 [N,H,W,3], got {images.dtype} {images.shape}")
    writer = DatasetWriter(
        str(path),
        {
            "image": RGBImageField(write_mode=encoding, max_resolution=max_side, jpeg_quality=jpeg_quality),
            "label": IntField(),
            "index": IntField(),
        },
        num_workers=num_workers or usable_cores(),
    )
    _run_in_process_group(functools.partial(_write, writer, _Samples(images, labels), desc, progress))
    if not Path(path).is_file():
        raise RuntimeError(f"the beton writer exited without writing {path}")


def _write(writer, samples: _Samples, desc: str, progress: bool) -> None:
    import ffcv.writer
    from tqdm import tqdm

    # DatasetWriter draws its own tqdm bar with no way to name or silence it; this runs in a
    # throwaway child process, so swapping the module's reference touches nothing else.
    ffcv.writer.tqdm = functools.partial(tqdm, desc=desc, unit="img", disable=not progress, mininterval=0.5)
    writer.from_indexed_dataset(samples)


def _run_in_process_group(work: Callable[[], None]) -> None:
    """Run ``work`` in a forked child that leads its own process group, and wait for it.

    DatasetWriter cannot be stopped cleanly: on Ctrl-C its worker processes die but its work
    queue keeps the interpreter from exiting, and when a worker dies on a bad sample the
    writer waits for it forever. Run in a separate group, the writer and its workers never
    see the terminal's Ctrl-C: this process kills the whole group instead, and the group
    kills itself when this process dies or one of its workers fails.
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
    if child.exitcode != 0:
        raise RuntimeError(f"the beton writer failed (exit code {child.exitcode}); its error is printed above")


def _group_leader(work: Callable[[], None], parent: int) -> None:
    os.setpgrp()
    threading.Thread(target=_watch_group, args=(parent,), daemon=True).start()
    work()


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


def fingerprint(splits: dict[str, Split]) -> str:
    """SHA-256 hex of every label and the pixels of up to :data:`FINGERPRINT_SAMPLES` evenly spaced samples per split."""
    h = hashlib.sha256()
    for name, split in splits.items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(split.labels, np.int64).tobytes())
        if len(split):
            for i in np.unique(np.linspace(0, len(split) - 1, FINGERPRINT_SAMPLES).astype(int)):
                h.update(np.ascontiguousarray(split.load(int(i))).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class _Scanned:
    """A split after the up-front pass: readable samples, their shapes, value histogram, skipped count."""

    split: Split
    shapes: set[tuple[int, int, int]]
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
    if split.images is not None:
        images = split.images
        if cfg.max_side is not None and max(images.shape[1:3]) > cfg.max_side:
            images = np.stack([_resize(im, cfg.max_side) for im in images])
            split = Split(split.labels, images=images)
        return _Scanned(split, {images.shape[1:]}, channel_histogram(images), 0)

    from tqdm import tqdm

    # Imported and compiled once here: forked scan workers would each spend seconds on them.
    with kept_threads():
        import ffcv.fields.rgb_image  # noqa: F401
    channel_histogram(np.zeros((1, 1, 1, 3), np.uint8))

    files = split.files
    jobs = [(files[i:i + _SCAN_CHUNK], cfg.max_side) for i in range(0, len(files), _SCAN_CHUNK)]
    outcomes: list[tuple[tuple[int, ...] | None, str | None]] = []
    histogram = np.zeros((3, 256), np.int64)
    with Pool(min(cfg.workers, max(len(jobs), 1))) as pool, \
            tqdm(total=len(files), unit="img", desc=f"check {name}", disable=not cfg.progress, mininterval=0.5) as bar:
        for chunk_outcomes, chunk_histogram in pool.imap(_scan_files, jobs):
            outcomes += chunk_outcomes
            histogram += chunk_histogram
            bar.update(len(chunk_outcomes))
    bad = [err for _, err in outcomes if err]
    if bad and not cfg.skip_bad:
        raise UserError(f"{len(bad)} unreadable image file(s) in the {name} split, first: {bad[0]}")
    keep = np.array([i for i, (shape, _) in enumerate(outcomes) if shape is not None], np.int64)
    return _Scanned(split.subset(keep), {outcomes[i][0] for i in keep}, histogram, len(bad))


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
            without ``force``, failed download.
    """
    if cfg.download:
        download_source(cfg.dataset, cfg.source)
    source = open_source(cfg.dataset, cfg.source)
    _prepare_out(cfg)
    scanned = {name: _scan(source.split(name), cfg, name) for name in SPLITS}
    if not len(scanned["train"].split):
        raise UserError(f"no readable training images in {source.path}: check the --source folder")
    shapes = set().union(*(s.shapes for s in scanned.values()))
    encoding = "raw" if max(max(s[:2]) for s in shapes) <= RAW_MAX_SIDE else "jpg"
    mean, std = mean_std(scanned["train"].histogram)

    temporaries = {name: _tmp_name(cfg.out, f"{name}.beton") for name in SPLITS}
    try:
        for name in SPLITS:
            split = scanned[name].split
            write_split(temporaries[name], split.pixels(), split.labels, encoding=encoding,
                        jpeg_quality=cfg.jpeg_quality, max_side=cfg.max_side, num_workers=cfg.workers,
                        progress=cfg.progress, desc=f"write {name}")
        meta = _build_meta(source, cfg, scanned, shapes, encoding, mean, std)
        # Old meta first: from here until the new one lands, the directory looks unfinished.
        (cfg.out / META_FILE).unlink(missing_ok=True)
        for name in SPLITS:
            temporaries[name].replace(cfg.out / f"{name}.beton")
        meta.save(cfg.out)
    finally:
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)
    return meta


def _build_meta(source: Source, cfg: ConvertConfig, scanned: dict[str, _Scanned],
                shapes: set[tuple[int, ...]], encoding: str, mean: tuple, std: tuple) -> DatasetMeta:
    k = len(source.classes)
    return DatasetMeta(
        dataset=source.dataset,
        classes=source.classes,
        image_shape=tuple(int(x) for x in next(iter(shapes))) if len(shapes) == 1 else None,
        splits={
            name: SplitInfo(
                file=f"{name}.beton", count=len(s.split),
                class_counts=tuple(int(c) for c in np.bincount(s.split.labels, minlength=k)),
                skipped=s.skipped,
            )
            for name, s in scanned.items()
        },
        mean=mean, std=std,
        fingerprint=fingerprint({name: s.split for name, s in scanned.items()}),
        encoding=encoding,
        jpeg_quality=cfg.jpeg_quality if encoding == "jpg" else None,
        source={"layout": source.layout, "path": str(Path(source.path).resolve())},
        extra=dict(source.extra),
    )
