"""The Strategy C target cache: a teacher's logits for every training sample, in HDF5.

:func:`build_cache` runs the teacher once over the un-augmented train split and writes
``logits [N, K]`` (row ``i`` = sample index ``i``), contiguous and uncompressed so it can be
memory-mapped. Logits, not probabilities, are stored so the temperature is chosen at read
time. The file's attributes say what it was made from (teacher checkpoint SHA-256, dataset
fingerprint, class count) and :meth:`TargetCache.open` refuses a cache that does not match.

Reads bypass h5py: the dataset's byte offset in the file (``dataset.id.get_offset()``) is
mapped with :class:`numpy.memmap`, and a batch's rows are gathered from it with
``index_select`` (into a pinned buffer when the target is a CUDA device). h5py fancy indexing needs sorted indices
and is an order of magnitude slower.

The build is atomic: rows go to ``OUT.partial`` next to the output, which is renamed to
``OUT`` only once every row is written and checksummed. ``OUT.partial`` records how many rows
are done, so rerunning an interrupted build resumes where it stopped. A build holds
``OUT.lock`` (:func:`fasttarget.locking.exclusive_lock`) while it runs: a second build of the
same file refuses at once.

Trust: :meth:`TargetCache.open` checks the logits against the checksum recorded at build
time (``logits_sha256``) before anything trains on them: one SHA-256 pass over the memory map,
CPU-bound at about 1.4 GB/s on a quiet core, so under a millisecond for CIFAR-10 and about 2 s
for an ImageNet-sized 2.56 GB cache in the page cache (more from a slow disk). A successful
pass is remembered in ``OUT.verified``, keyed by the file's size, mtime, ctime and inode:
opening the same file again costs a ``stat``, while a file that was written to, replaced or
copied is hashed again.

Example:
    >>> from fasttarget.cache import CacheBuildConfig
    >>> CacheBuildConfig(data="data/cifar10", teacher="t.pt", out="t.h5").dtype
    'float16'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm

from fasttarget.choices import DTYPES
from fasttarget.dataset import DatasetMeta, read_split
from fasttarget.errors import UserError
from fasttarget.locking import exclusive_lock
from fasttarget.models import file_sha256
from fasttarget.progress import show_bar
from fasttarget.targets import TeacherModel, load_teacher

CACHE_FORMAT = "fasttarget-target-cache"
FORMAT_VERSION = 1
LOGITS = "logits"
# Rows hashed per read when checksumming: bounded memory for any N.
_HASH_ROWS = 1 << 16
# Caches up to this size (CIFAR: 1 MB, Tiny-ImageNet: 40 MB) are also copied to a GPU once, so that
# indices already living there are gathered without a device→host copy, which would make the host
# wait for the loader's side stream.
DEVICE_TABLE_BYTES = 256 * 2**20
# A verification record is trusted only if written this long after the file last changed.
RECORD_MARGIN_NS = 2 * 10**9


@dataclass(frozen=True)
class CacheBuildConfig:
    """What ``fasttarget cache build`` does.

    Args:
        data: converted dataset directory; its train split is scored.
        teacher: teacher checkpoint (:func:`fasttarget.models.save_classifier`).
        out: the HDF5 file to write.
        temperature: default T recorded in the file (readers may choose another).
        dtype: storage type of the logits, ``"float16"`` or ``"float32"``.
        batch_size: images per teacher forward.
        device: where the teacher runs; ``None`` = CUDA when available, else CPU.
        compile: ``torch.compile`` the teacher (CUDA only).
        progress: show a tqdm progress bar on stderr.
    """

    data: Path
    teacher: Path
    out: Path
    temperature: float = 2.0
    dtype: str = "float16"
    batch_size: int = 512
    device: str | None = None
    compile: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("data", "teacher", "out"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.temperature > 0:
            raise UserError(f"--temperature must be positive, got {self.temperature}")


@dataclass(frozen=True)
class CacheBuildReport:
    """What a build did.

    Args:
        path: the finished cache.
        rows: N, rows in the cache.
        rows_resumed: rows found already done in an interrupted build's ``.partial`` file.
        seconds: wall time of the teacher passes over the remaining rows.
    """

    path: Path
    rows: int
    rows_resumed: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return (self.rows - self.rows_resumed) / max(self.seconds, 1e-9)


def teacher_sha256(path: str | Path) -> str:
    """SHA-256 naming a teacher checkpoint, the key a cache records its teacher by.

    Raises:
        UserError: the file does not exist.
    """
    if not Path(path).is_file():
        raise UserError(f"teacher checkpoint {path} does not exist: pass the checkpoint the cache was built from")
    return file_sha256(path)


def partial_path(out: str | Path) -> Path:
    """The in-progress file of a build writing ``out``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def verified_path(path: str | Path) -> Path:
    """The record of a cache's last successful checksum verification."""
    path = Path(path)
    return path.with_name(path.name + ".verified")


def build_cache(cfg: CacheBuildConfig) -> CacheBuildReport:
    """Run the teacher over every train sample and write the logits cache atomically.

    Images are normalized exactly as the loader does (data mean/std) and handed to the same
    :class:`~fasttarget.targets.TeacherModel` Strategy B uses, so a cached row equals B's target
    for the un-augmented view.

    Raises:
        UserError: bad dataset directory or teacher, a teacher with another class count, or
            another build writing the same file.
    """
    meta = DatasetMeta.load(cfg.data)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    lock = cfg.out.with_name(cfg.out.name + ".lock")
    with exclusive_lock(lock, f"another fasttarget cache build is writing {cfg.out} (pid {{pid}}): "
                              "wait for it or choose another --out"):
        return _build_locked(cfg, meta)


def _build_locked(cfg: CacheBuildConfig, meta: DatasetMeta) -> CacheBuildReport:
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher, teacher_accuracy = load_teacher(cfg.teacher, meta, device, compile=cfg.compile)
    images, _ = read_split(cfg.data, "train")
    identity = {
        "teacher_sha256": file_sha256(cfg.teacher),
        "dataset_fingerprint": meta.fingerprint,
        "split": "train",
        "num_classes": meta.num_classes,
        "num_samples": len(images),
        "dtype": cfg.dtype,
    }
    partial = partial_path(cfg.out)
    done = _resumable_rows(partial, identity)
    started = time.perf_counter()
    with h5py.File(partial, "a" if done else "w") as f:
        if not done:
            # Contiguous (no chunks) and uncompressed: the whole block can be memory-mapped.
            f.create_dataset(LOGITS, shape=(len(images), meta.num_classes), dtype=cfg.dtype)
            f.attrs.update({**identity, "rows_done": 0})
        logits = f[LOGITS]
        _score_rows(teacher, images, meta, logits, f, done, cfg)
        seconds = time.perf_counter() - started
        checksum = _sha256_rows(logits)
        del f.attrs["rows_done"]
        f.attrs.update({
            "format": CACHE_FORMAT,
            "format_version": FORMAT_VERSION,
            "teacher_path": str(cfg.teacher.resolve()),
            "teacher_test_accuracy": float(teacher_accuracy),
            "temperature": float(cfg.temperature),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "logits_sha256": checksum,
        })
    os.replace(partial, cfg.out)
    _record_verified(cfg.out, checksum)
    return CacheBuildReport(cfg.out, len(images), done, seconds)


def _score_rows(
    teacher: TeacherModel, images: np.ndarray, meta: DatasetMeta,
    logits: h5py.Dataset, f: h5py.File, start: int, cfg: CacheBuildConfig,
) -> None:
    """Write teacher logits for rows ``start..N``, recording progress after each batch."""
    mean = torch.tensor(meta.mean, device=teacher.device).view(1, 3, 1, 1)
    std = torch.tensor(meta.std, device=teacher.device).view(1, 3, 1, 1)
    n = len(images)
    # inference_mode: nothing built here ever joins an autograd graph (B's live targets do, so the
    # teacher itself only uses no_grad).
    with torch.inference_mode(), tqdm(total=n, initial=start, unit="img", desc="cache build",
                                      disable=not show_bar(cfg.progress)) as bar:
        for lo in range(start, n, cfg.batch_size):
            hi = min(n, lo + cfg.batch_size)
            x = torch.from_numpy(images[lo:hi]).to(teacher.device).permute(0, 3, 1, 2).float().div_(255)
            logits[lo:hi] = teacher((x - mean) / std).cpu().numpy().astype(cfg.dtype)
            # Data first, then the counter: a kill between the two only loses rows, never claims them.
            f.flush()
            f.attrs["rows_done"] = hi
            f.flush()
            bar.update(hi - lo)


def _resumable_rows(partial: Path, identity: dict[str, Any]) -> int:
    """Rows already done in an interrupted build of the same cache (0, and the file removed, otherwise)."""
    if not partial.exists():
        return 0
    try:
        with h5py.File(partial, "r") as f:
            same = all(_attr(f.attrs.get(k)) == v for k, v in identity.items())
            done = int(f.attrs.get("rows_done", 0)) if same and LOGITS in f else 0
    except OSError:  # killed mid-flush: HDF5 metadata unreadable, start over
        done = 0
    if not done:
        partial.unlink()
    return done


def _attr(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value (numpy scalars compare and print cleanly)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


def _short(value: Any) -> str:
    """A value for a one-line message: hex digests cut to 12 characters."""
    text = str(value)
    return text[:12] + "…" if len(text) == 64 else text


def _sha256_rows(array: Any) -> str:
    """SHA-256 of a 2-D array's bytes in row-major order, read in bounded row blocks."""
    digest = hashlib.sha256()
    for lo in range(0, array.shape[0], _HASH_ROWS):
        # The buffer itself, not a tobytes() copy: a memory map's rows are hashed straight from its pages.
        digest.update(np.ascontiguousarray(array[lo:lo + _HASH_ROWS]).data)
    return digest.hexdigest()


def _file_identity(path: Path) -> dict[str, int]:
    """What changes whenever a file's bytes may have: a write moves mtime and ctime (ctime cannot be
    set back), a replaced or copied file is another inode."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino, "device": st.st_dev}


def _record_verified(path: Path, checksum: str) -> None:
    """Remember that ``path``, as it is now, hashes to ``checksum``."""
    record = verified_path(path)
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    text = json.dumps({"file": _file_identity(path), "logits_sha256": checksum, "recorded_ns": time.time_ns()})
    # A cache in a read-only directory is still verified, only on every open.
    with contextlib.suppress(OSError):
        tmp.write_text(text + "\n")
        tmp.replace(record)


def _recorded_verified(path: Path, checksum: str) -> bool:
    """Whether ``path`` was verified against ``checksum`` and has not changed since."""
    try:
        record = json.loads(verified_path(path).read_text())
        file, recorded_ns = record["file"], record["recorded_ns"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    # File times tick coarsely (a few ms; 2 s on some file systems): a write landing in the tick of
    # the record would leave the times as recorded ("racy git"), so a record made that soon after
    # the file last changed proves nothing and the file is hashed again.
    settled = recorded_ns - max(file.get("mtime_ns", 0), file.get("ctime_ns", 0)) > RECORD_MARGIN_NS
    return settled and record.get("logits_sha256") == checksum and file == _file_identity(path)


class TargetCache:
    """An open logits cache: attributes plus the memory-mapped ``[N, K]`` logits.

    Use :meth:`open`; it checks the file against what the caller expects.

    Attributes:
        path: the HDF5 file.
        attrs: its attributes as plain Python values.
        logits: ``numpy.memmap`` of the stored logits, ``[N, K]`` (copy-on-write: writes never reach the file).
        num_samples, num_classes: N and K.
    """

    def __init__(self, path: Path, attrs: dict[str, Any], logits: np.memmap):
        self.path = path
        self.attrs = attrs
        self.logits = logits
        # torch's view of the same pages: index_select gathers as fast as np.take and checks bounds both ways.
        self._table = torch.from_numpy(logits)
        self.num_samples, self.num_classes = logits.shape
        self._pinned: list[tuple[torch.Tensor, torch.cuda.Event]] = []
        self._turn = 0
        self._device_tables: dict[torch.device, torch.Tensor] = {}

    @classmethod
    def open(
        cls,
        path: str | Path,
        expected_fingerprint: str | None = None,
        num_classes: int | None = None,
        teacher_sha256: str | None = None,
        verify: bool = True,
    ) -> TargetCache:
        """Open a finished cache and refuse it if it was made for something else or is corrupted.

        Args:
            path: the HDF5 file written by :func:`build_cache`.
            expected_fingerprint: the training dataset's fingerprint (``meta.json``).
            num_classes: the training dataset's class count.
            teacher_sha256: SHA-256 of the teacher checkpoint the cache must come from.
            verify: check the logits against the recorded checksum (:meth:`check`, trusting
                the record of an earlier verification of this very file).

        Raises:
            UserError: missing, incomplete or foreign file, a mismatch, or logits that do not
                match their checksum; the message names what differs and how to rebuild.
        """
        path = Path(path)
        rebuild = f"rebuild it with `fasttarget cache build --data DIR --teacher CKPT --out {path}`"
        if not path.is_file():
            if partial_path(path).exists():
                raise UserError(f"target cache {path} was not finished (found {partial_path(path).name}): "
                                "rerun the same `fasttarget cache build` command to complete it")
            raise UserError(f"target cache {path} does not exist: build it with "
                            f"`fasttarget cache build --data DIR --teacher CKPT --out {path}`")
        try:
            with h5py.File(path, "r") as f:
                attrs = {k: _attr(v) for k, v in f.attrs.items()}
                ds = f.get(LOGITS)
                layout = None if ds is None else (ds.shape, ds.dtype, ds.id.get_offset(), ds.chunks, ds.compression)
        except OSError as err:
            raise UserError(f"{path} is not a readable HDF5 file ({err}): {rebuild}") from err
        if attrs.get("format") != CACHE_FORMAT or layout is None:
            raise UserError(f"{path} is not a fasttarget target cache: {rebuild}")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{path} has cache format version {attrs.get('format_version')}, this fasttarget "
                            f"reads {FORMAT_VERSION}: {rebuild}")
        shape, dtype, offset, chunks, compression = layout
        if offset is None or chunks is not None or compression is not None:
            raise UserError(f"{path}: its logits are chunked or compressed and cannot be memory-mapped: {rebuild}")
        checks = (
            ("dataset fingerprint", "dataset_fingerprint", expected_fingerprint,
             "it was built from another dataset (or another conversion of it)"),
            ("number of classes", "num_classes", num_classes, "it was built for a dataset with another class count"),
            ("teacher SHA-256", "teacher_sha256", teacher_sha256, "it was built from another teacher checkpoint"),
        )
        for what, key, expected, why in checks:
            if expected is not None and attrs.get(key) != expected:
                raise UserError(f"target cache {path} does not match: {what} is {_short(attrs.get(key))}, "
                                f"expected {_short(expected)} ({why}): {rebuild}")
        # Copy-on-write ("c") rather than read-only: torch wants a writable array, the file stays untouched.
        logits = np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape)
        cache = cls(path, attrs, logits)
        if verify:
            cache.check()
        return cache

    def verify(self, use_record: bool = False) -> bool:
        """Whether the logits still hash to the checksum recorded when the cache was built.

        A match is recorded in :func:`verified_path`; a mismatch removes the record.

        Args:
            use_record: answer from that record, without hashing, when it was written for
                this file as it is now (same size, mtime, ctime and inode).
        """
        checksum = self.attrs.get("logits_sha256")
        if use_record and checksum is not None and _recorded_verified(self.path, checksum):
            return True
        if _sha256_rows(self.logits) == checksum:
            _record_verified(self.path, checksum)
            return True
        with contextlib.suppress(OSError):
            verified_path(self.path).unlink(missing_ok=True)
        return False

    def check(self, use_record: bool = True) -> None:
        """:meth:`verify`, refusing a mismatch.

        Raises:
            UserError: the logits do not hash to the recorded checksum.
        """
        if not self.verify(use_record):
            raise UserError(f"target cache {self.path}: logits checksum does not match the one recorded when it was "
                            "built (the file is corrupted or was modified): rebuild it with "
                            f"`fasttarget cache build --data DIR --teacher CKPT --out {self.path}`")

    def gather(self, indices: torch.Tensor | np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
        """The stored logits of the given sample indices, in the stored dtype, on ``device``.

        Rows are gathered from the memory map on the host; for a CUDA device they land in a
        pinned buffer and are copied with ``non_blocking=True`` on the current stream. CUDA
        indices into a cache of at most :data:`DEVICE_TABLE_BYTES` are gathered on their GPU
        from a copy of the table made on first use.

        Args:
            indices: int ``[B]`` sample indices (tensor on any device, or array; CUDA indices are
                copied to the host).
            device: where the result goes.

        Returns:
            ``[B, K]`` logits.

        Raises:
            IndexError: an index outside ``[0, N)``.
        """
        # This runs once per batch, so the CPU path skips the fixed costs that dominate a gather
        # of 128 short rows (~20 µs → ~5 µs): parsing ``device`` and copying int64 indices.
        on_cuda = device != "cpu" and torch.device(device).type == "cuda"
        if on_cuda and isinstance(indices, torch.Tensor) and indices.is_cuda and self.logits.nbytes <= DEVICE_TABLE_BYTES:
            if indices.device not in self._device_tables:
                self._device_tables[indices.device] = self._table.to(indices.device)
            return self._device_tables[indices.device].index_select(0, indices).to(device, non_blocking=True)
        if isinstance(indices, np.ndarray) and indices.dtype == np.int64:
            rows = torch.from_numpy(indices)
        else:
            rows = torch.as_tensor(indices, dtype=torch.int64, device="cpu")
        if not on_cuda:
            return self._table.index_select(0, rows)
        buffer, copied = self._pinned_buffer(len(rows))
        copied.synchronize()  # the previous copy out of this buffer has finished
        host = torch.index_select(self._table, 0, rows, out=buffer[: len(rows)])
        out = host.to(device, non_blocking=True)
        copied.record(torch.cuda.current_stream(device))
        return out

    def _pinned_buffer(self, count: int) -> tuple[torch.Tensor, torch.cuda.Event]:
        """The next of two alternating pinned ``[≥count, K]`` host buffers and its copy-done event.

        Alternating lets the gather of batch n+1 fill one buffer while batch n's copy may still
        read the other; the event stops a buffer being overwritten before its copy finished.
        """
        if not self._pinned or self._pinned[0][0].shape[0] < count:
            self._pinned = [
                (torch.empty((count, self.num_classes), dtype=self._table.dtype, pin_memory=True), torch.cuda.Event())
                for _ in range(2)
            ]
        self._turn ^= 1
        return self._pinned[self._turn]

    def __repr__(self) -> str:
        return f"TargetCache({str(self.path)!r}, rows={self.num_samples}, classes={self.num_classes})"
