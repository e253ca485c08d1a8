"""The Strategy C target cache: a teacher's logits for every training sample, in HDF5.

:func:`build_cache` streams the train split once through the loader's un-augmented test view
(the image itself for fixed-size data, the center crop at the loader's resolution for
variable-size data), so memory stays bounded by a batch whatever N, and scores it with the
teacher. Logits, not probabilities, are stored so the temperature is chosen at read time. The
cache holds one of two *forms* (:class:`CacheForm`), recorded in its attributes
(``form``, ``top_k``, ``dtype``):

- **full**: ``logits [N, C]`` (row ``i`` = sample index ``i``), float16 or float32
  (2,000 bytes a sample for ImageNet's 1,000 classes in float16);
- **top-k**: ``topk_logits [N, K+1]`` (the K largest logits, then one *tail logit*) and
  ``topk_classes [N, K]`` (their class indices, int16 below 32,768 classes) — FKD's compact
  soft labels, 5·2 + 6·2 = 22 bytes a sample at K = 5 in float16. The tail logit stands for
  every other class so that, at the build temperature, the remaining probability mass is
  spread evenly over them (:func:`fasttarget.targets.topk_probabilities` gives the formula).

Every table is contiguous and uncompressed so it can be memory-mapped. The file's attributes
say what it was made from (teacher checkpoint SHA-256, dataset fingerprint, class count, form)
and :meth:`TargetCache.open` refuses a cache that does not match. Files of format version 1
(before top-k) hold the full form and are read as such.

Reads bypass h5py: each table's byte offset in the file (``dataset.id.get_offset()``) is
mapped with :class:`numpy.memmap`, and a batch's rows are gathered from it with ``np.take``
(into a pinned buffer when the target is a CUDA device). h5py fancy indexing needs sorted
indices and is an order of magnitude slower.

The build is atomic: rows go to ``OUT.partial`` next to the output, which is renamed to
``OUT`` only once every row is written and checksummed. ``OUT.partial`` records how many rows
are done, so rerunning an interrupted build resumes where it stopped. A build holds
``OUT.lock`` (:func:`fasttarget.locking.exclusive_lock`) while it runs: a second build of the
same file refuses at once.

Trust: :meth:`TargetCache.open` checks the tables against the checksum recorded at build
time (``logits_sha256``, over the tables' bytes in order) before anything trains on them: one SHA-256 pass over the memory maps,
CPU-bound at about 1.4 GB/s on a quiet core, so under a millisecond for CIFAR-10 and about 2 s
for an ImageNet-sized 2.56 GB cache in the page cache (more from a slow disk). A successful
pass is remembered in ``OUT.verified``, keyed by the file's size, mtime, ctime and inode:
opening the same file again costs a ``stat``, while a file that was written to, replaced or
copied is hashed again.

Example:
    >>> from fasttarget.cache import CacheBuildConfig
    >>> cfg = CacheBuildConfig(data="data/cifar10", teacher="t.pt", out="t.h5", top_k=5)
    >>> cfg.form.label
    'top-5 float16'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
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
from fasttarget.config import CacheBuildConfig, CacheForm
from fasttarget.dataset import DatasetMeta
from fasttarget.errors import UserError
from fasttarget.locking import exclusive_lock
from fasttarget.progress import show_bar
from fasttarget.targets import TeacherModel, load_teacher
from fasttarget.zoo import TeacherSpec, measure_test_accuracy, teacher_file
from fasttarget.zoo import teacher_sha256 as zoo_teacher_sha256

CACHE_FORMAT = "fasttarget-target-cache"
# 2 added the form attributes and the top-k tables; version 1 files hold the full form.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
LOGITS = "logits"
TOPK_LOGITS = "topk_logits"
TOPK_CLASSES = "topk_classes"
# Rows hashed per read when checksumming: bounded memory for any N.
_HASH_ROWS = 1 << 16
# Caches up to this size (CIFAR: 1 MB, Tiny-ImageNet: 40 MB) are also copied to a GPU once, so that
# indices already living there are gathered without a device→host copy, which would make the host
# wait for the loader's side stream.
DEVICE_TABLE_BYTES = 256 * 2**20
# A verification record is trusted only if written this long after the file last changed.
RECORD_MARGIN_NS = 2 * 10**9


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
    """SHA-256 naming a teacher checkpoint, the key a cache records its teacher by
    (for a ``torchvision:``/``timm:`` teacher, :func:`fasttarget.zoo.teacher_sha256`).

    Raises:
        UserError: the file does not exist.
    """
    if not teacher_file(path).is_file():
        raise UserError(f"teacher checkpoint {path} does not exist: pass the checkpoint the cache was built from")
    return zoo_teacher_sha256(path)


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

    The split is streamed through :func:`fasttarget.loader.build_loader` (ffcv backend, index
    order, un-augmented test view at ``cfg.res``), one batch in memory at a time. Its images
    are normalized exactly as for training (data mean/std) and handed to the same
    :class:`~fasttarget.targets.TeacherModel` Strategy B uses, so a cached row equals B's target
    for the un-augmented view.

    Raises:
        UserError: bad dataset directory or teacher, a teacher with another class count,
            ``top_k`` not below the class count, or another build writing the same file.
    """
    meta = DatasetMeta.load(cfg.data)
    cfg.check_data(meta)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    lock = cfg.out.with_name(cfg.out.name + ".lock")
    with exclusive_lock(lock, f"another fasttarget cache build is writing {cfg.out} (pid {{pid}}): "
                              "wait for it or choose another --out"):
        return _build_locked(cfg, meta)


def _tables(form: CacheForm, rows: int, num_classes: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """The datasets a cache of ``form`` holds: name → (shape, dtype)."""
    if form.top_k is None:
        return {LOGITS: ((rows, num_classes), form.dtype)}
    return {TOPK_LOGITS: ((rows, form.top_k + 1), form.dtype),
            TOPK_CLASSES: ((rows, form.top_k), "int16" if num_classes <= np.iinfo(np.int16).max + 1 else "int32")}


def _build_locked(cfg: CacheBuildConfig, meta: DatasetMeta) -> CacheBuildReport:
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher, teacher_accuracy = load_teacher(cfg.teacher, meta, device, compile=cfg.compile)
    if isinstance(cfg.teacher, TeacherSpec):  # a state dict records no accuracy: measure it
        teacher_accuracy = measure_test_accuracy(teacher, cfg.data, device)
    rows = meta.count("train")
    identity = {
        "teacher_sha256": teacher_sha256(cfg.teacher),
        "dataset_fingerprint": meta.fingerprint,
        "split": "train",
        "num_classes": meta.num_classes,
        "num_samples": rows,
        **cfg.form.attrs,
        "res": cfg.res or 0,
        # The tail logit of the top-k form is computed at the build temperature.
        "temperature": float(cfg.temperature),
    }
    tables = _tables(cfg.form, rows, meta.num_classes)
    partial = partial_path(cfg.out)
    done = _resumable_rows(partial, identity, tables)
    started = time.perf_counter()
    with h5py.File(partial, "a" if done else "w") as f:
        if not done:
            for name, (shape, dtype) in tables.items():
                # Contiguous (no chunks) and uncompressed: the whole block can be memory-mapped.
                f.create_dataset(name, shape=shape, dtype=dtype)
            f.attrs.update({**identity, "rows_done": 0})
        datasets = [f[name] for name in tables]
        done = _score_rows(teacher, datasets, f, done, cfg)
        seconds = time.perf_counter() - started
        checksum = _sha256_rows(*datasets)
        del f.attrs["rows_done"]
        f.attrs.update({
            "format": CACHE_FORMAT,
            "format_version": FORMAT_VERSION,
            "teacher_path": str(cfg.teacher.absolute()),
            "teacher_test_accuracy": float(teacher_accuracy),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "logits_sha256": checksum,
        })
    os.replace(partial, cfg.out)
    _record_verified(cfg.out, checksum)
    return CacheBuildReport(cfg.out, rows, done, seconds)


def _score_rows(teacher: TeacherModel, datasets: list[h5py.Dataset], f: h5py.File, done: int,
                cfg: CacheBuildConfig) -> int:
    """Write teacher rows from the batch holding row ``done`` on, recording progress after each batch.

    Returns the rows that were already done where scoring started (a whole number of batches).
    """
    from fasttarget.loader import LoaderConfig, build_loader

    # Streamed (ffcv), in index order, un-augmented: the test view of every train sample.
    loader = build_loader(LoaderConfig(
        cfg.data, split="train", batch_size=cfg.batch_size, shuffle=False, drop_last=False, augment="noaug",
        backend="ffcv", device=teacher.device, res=cfg.res,
    ))
    start = done // cfg.batch_size
    loader.load_state_dict({"epoch": 0, "batch": start})
    n = datasets[0].shape[0]
    # inference_mode: nothing built here ever joins an autograd graph (B's live targets do, so the
    # teacher itself only uses no_grad).
    with torch.inference_mode(), tqdm(total=n, initial=start * cfg.batch_size, unit="img", desc="cache build",
                                      disable=not show_bar(cfg.progress)) as bar:
        for batch in loader:
            lo, hi = int(batch.indices[0]), int(batch.indices[-1]) + 1
            if hi - lo != len(batch.indices):  # index order is what makes the rows a slice
                raise RuntimeError(f"cache build: batch rows {lo}..{hi} are not consecutive")
            for dataset, part in zip(datasets, stored_rows(teacher(batch.images), cfg.form, cfg.temperature)):
                dataset[lo:hi] = part.cpu().numpy()
            # Data first, then the counter: a kill between the two only loses rows, never claims them.
            f.flush()
            f.attrs["rows_done"] = hi
            f.flush()
            bar.update(hi - lo)
    return start * cfg.batch_size


def stored_rows(logits: torch.Tensor, form: CacheForm, temperature: float) -> tuple[torch.Tensor, ...]:
    """What a cache of ``form`` stores for a batch of float32 teacher logits ``[B, C]``.

    Full form: the logits in ``form.dtype``. Top-k form: ``[B, K+1]`` values — the K largest
    logits ``z_1 ≥ … ≥ z_K``, then the tail logit ``r = T0·(logsumexp_{j∉top-K}(z_j/T0) − log(C−K))``
    at the build temperature ``T0``, the one logit that, given to each of the C−K other classes,
    keeps their total probability mass — and ``[B, K]`` class indices.

    Example:
        >>> z = torch.tensor([[3.0, 1.0, 1.0, 0.0]])
        >>> values, classes = stored_rows(z, CacheForm(top_k=1, dtype="float32"), 1.0)
        >>> classes.tolist(), round(float(values[0, 1]), 4)  # log((2e + 1) / 3)
        ([[0]], 0.7634)
    """
    if form.top_k is None:
        return (logits.to(getattr(torch, form.dtype)),)
    kept, classes = logits.topk(form.top_k, dim=1)
    rest = logits.scatter(1, classes, float("-inf")) / temperature
    tail = temperature * (torch.logsumexp(rest, dim=1, keepdim=True) - math.log(logits.shape[1] - form.top_k))
    values = torch.cat([kept, tail], dim=1).to(getattr(torch, form.dtype))
    index_dtype = torch.int16 if logits.shape[1] <= np.iinfo(np.int16).max + 1 else torch.int32
    return values, classes.to(index_dtype)


def _resumable_rows(partial: Path, identity: dict[str, Any], tables: dict[str, tuple[tuple[int, ...], str]]) -> int:
    """Rows already done in an interrupted build of the same cache (0, and the file removed, otherwise)."""
    if not partial.exists():
        return 0
    try:
        with h5py.File(partial, "r") as f:
            same = all(_attr(f.attrs.get(k)) == v for k, v in identity.items())
            same = same and all(name in f and f[name].shape == shape for name, (shape, _) in tables.items())
            done = int(f.attrs.get("rows_done", 0)) if same else 0
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


def _sha256_rows(*arrays: Any) -> str:
    """SHA-256 of 2-D arrays' bytes in row-major order, one array after the other, read in bounded row blocks."""
    digest = hashlib.sha256()
    for array in arrays:
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


class MappedTable:
    """One memory-mapped ``[N, W]`` table of a cache and the fastest way to gather its rows.

    Attributes:
        array: the ``numpy.memmap`` (copy-on-write: writes never reach the file).
    """

    def __init__(self, array: np.memmap):
        self.array = array
        # A plain ndarray over the same pages: np.take on a memmap subclass pays for __array_finalize__
        # on every result (0.67x of an in-memory gather; the plain view is on par).
        self._plain = array.view(np.ndarray)
        self._table = torch.from_numpy(array)
        self._pinned: list[tuple[torch.Tensor, torch.cuda.Event]] = []
        self._turn = 0
        self._device_tables: dict[torch.device, torch.Tensor] = {}

    def gather(self, indices: torch.Tensor | np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
        """Rows ``indices`` of the table on ``device`` (see :meth:`TargetCache.gather`)."""
        # This runs once per batch, so the CPU path skips the fixed costs that dominate a gather
        # of 128 short rows: parsing ``device`` and converting the indices.
        on_cuda = device != "cpu" and torch.device(device).type == "cuda"
        if on_cuda and isinstance(indices, torch.Tensor) and indices.is_cuda and self.array.nbytes <= DEVICE_TABLE_BYTES:
            if indices.device not in self._device_tables:
                self._device_tables[indices.device] = self._table.to(indices.device)
            return self._device_tables[indices.device].index_select(0, indices).to(device, non_blocking=True)
        rows = indices.numpy(force=True) if isinstance(indices, torch.Tensor) else np.asarray(indices)
        if not on_cuda:
            return torch.from_numpy(np.take(self._plain, rows, axis=0))
        buffer, copied = self._pinned_buffer(len(rows))
        copied.synchronize()  # the previous copy out of this buffer has finished
        host = buffer[: len(rows)]
        np.take(self._plain, rows, axis=0, out=host.numpy())
        out = host.to(device, non_blocking=True)
        copied.record(torch.cuda.current_stream(device))
        return out

    def _pinned_buffer(self, count: int) -> tuple[torch.Tensor, torch.cuda.Event]:
        """The next of two alternating pinned ``[≥count, W]`` host buffers and its copy-done event.

        Alternating lets the gather of batch n+1 fill one buffer while batch n's copy may still
        read the other; the event stops a buffer being overwritten before its copy finished.
        """
        if not self._pinned or self._pinned[0][0].shape[0] < count:
            self._pinned = [
                (torch.empty((count, self.array.shape[1]), dtype=self._table.dtype, pin_memory=True), torch.cuda.Event())
                for _ in range(2)
            ]
        self._turn ^= 1
        return self._pinned[self._turn]


class TargetCache:
    """An open logits cache: attributes plus its memory-mapped tables.

    Use :meth:`open`; it checks the file against what the caller expects.

    Attributes:
        path: the HDF5 file.
        attrs: its attributes as plain Python values.
        form: the :class:`CacheForm` it holds.
        logits: ``numpy.memmap`` of the stored logits: ``[N, C]`` in the full form, ``[N, K+1]``
            (the top-k logits, then the tail logit) in the top-k form.
        classes: ``numpy.memmap`` ``[N, K]`` of the top-k class indices; ``None`` in the full form.
        num_samples, num_classes: N and C.
    """

    def __init__(self, path: Path, attrs: dict[str, Any], form: CacheForm, tables: list[np.memmap]):
        self.path = path
        self.attrs = attrs
        self.form = form
        self._tables = [MappedTable(t) for t in tables]
        self.logits = tables[0]
        self.classes = tables[1] if len(tables) > 1 else None
        self.num_samples = len(self.logits)
        self.num_classes = self.logits.shape[1] if form.top_k is None else int(attrs["num_classes"])

    @classmethod
    def open(
        cls,
        path: str | Path,
        expected_fingerprint: str | None = None,
        num_classes: int | None = None,
        teacher_sha256: str | None = None,
        verify: bool = True,
        form: CacheForm | None = None,
    ) -> TargetCache:
        """Open a finished cache and refuse it if it was made for something else or is corrupted.

        Args:
            path: the HDF5 file written by :func:`build_cache`.
            expected_fingerprint: the training dataset's fingerprint (``meta.json``).
            num_classes: the training dataset's class count.
            teacher_sha256: SHA-256 of the teacher checkpoint the cache must come from.
            verify: check the tables against the recorded checksum (:meth:`check`, trusting
                the record of an earlier verification of this very file).
            form: the :class:`CacheForm` the caller expects; ``None`` takes either.

        Raises:
            UserError: missing, incomplete or foreign file, a mismatch (another form included),
                attributes that contradict the tables, or tables that do not match their
                checksum; the message names what differs and how to rebuild.
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
                layouts = {name: (ds.shape, ds.dtype, ds.id.get_offset(), ds.chunks, ds.compression)
                           for name, ds in f.items() if isinstance(ds, h5py.Dataset)}
        except OSError as err:
            raise UserError(f"{path} is not a readable HDF5 file ({err}): {rebuild}") from err
        if attrs.get("format") != CACHE_FORMAT or not ({LOGITS, TOPK_LOGITS} & set(layouts)):
            raise UserError(f"{path} is not a fasttarget target cache: {rebuild}")
        if attrs.get("format_version") not in READABLE_VERSIONS:
            raise UserError(f"{path} has cache format version {attrs.get('format_version')}, this fasttarget "
                            f"reads {' and '.join(map(str, READABLE_VERSIONS))}: {rebuild}")
        stored = _stored_form(path, attrs, layouts, rebuild)
        names = [LOGITS] if stored.top_k is None else [TOPK_LOGITS, TOPK_CLASSES]
        for name in names:
            _, _, offset, chunks, compression = layouts[name]
            if offset is None or chunks is not None or compression is not None:
                raise UserError(f"{path}: its {name} are chunked or compressed and cannot be memory-mapped: {rebuild}")
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
        if form is not None and form != stored:
            flags = "" if form.top_k is None else f" --top-k {form.top_k}"
            raise UserError(f"target cache {path} holds {stored.label} logits, expected {form.label}: rebuild it with "
                            f"`fasttarget cache build --data DIR --teacher CKPT --out {path} --dtype {form.dtype}{flags}`")
        # Copy-on-write ("c") rather than read-only: torch wants a writable array, the file stays untouched.
        tables = [np.memmap(path, dtype=layouts[n][1], mode="c", offset=layouts[n][2], shape=layouts[n][0])
                  for n in names]
        cache = cls(path, attrs, stored, tables)
        if verify:
            cache.check()
        return cache

    def verify(self, use_record: bool = False) -> bool:
        """Whether the tables still hash to the checksum recorded when the cache was built.

        A match is recorded in :func:`verified_path`; a mismatch removes the record.

        Args:
            use_record: answer from that record, without hashing, when it was written for
                this file as it is now (same size, mtime, ctime and inode).
        """
        checksum = self.attrs.get("logits_sha256")
        if use_record and checksum is not None and _recorded_verified(self.path, checksum):
            return True
        if _sha256_rows(*(t.array for t in self._tables)) == checksum:
            _record_verified(self.path, checksum)
            return True
        with contextlib.suppress(OSError):
            verified_path(self.path).unlink(missing_ok=True)
        return False

    def check(self, use_record: bool = True) -> None:
        """:meth:`verify`, refusing a mismatch.

        Raises:
            UserError: the tables do not hash to the recorded checksum.
        """
        if not self.verify(use_record):
            raise UserError(f"target cache {self.path}: logits checksum does not match the one recorded when it was "
                            "built (the file is corrupted or was modified): rebuild it with "
                            f"`fasttarget cache build --data DIR --teacher CKPT --out {self.path}`")

    def gather(self, indices: torch.Tensor | np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
        """The stored logits rows of the given sample indices, in the stored dtype, on ``device``.

        Rows are gathered from the memory map on the host with ``np.take`` (zero-copy up to
        the gathered rows); for a CUDA device they land in a pinned buffer and are copied with
        ``non_blocking=True`` on the current stream. CUDA indices into a cache table of at
        most :data:`DEVICE_TABLE_BYTES` are gathered on their GPU from a copy of the table made
        on first use.

        Args:
            indices: int ``[B]`` sample indices (tensor on any device, or array; CUDA indices are
                copied to the host).
            device: where the result goes.

        Returns:
            ``[B, C]`` logits (full form) or ``[B, K+1]`` top-k logits and tail logit (top-k form).

        Raises:
            IndexError: an index of ``N`` or more. Negative indices count from the end, as in
                numpy: checking for them would cost a third of a 128-row CPU gather.
        """
        return self._tables[0].gather(indices, device)

    def gather_classes(self, indices: torch.Tensor | np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
        """The top-k form's class indices ``[B, K]`` of the given samples (as :meth:`gather`).

        Raises:
            ValueError: the cache holds the full form.
        """
        if self.classes is None:
            raise ValueError(f"{self.path} holds the full logits: it has no top-k classes")
        return self._tables[1].gather(indices, device)

    def __repr__(self) -> str:
        return (f"TargetCache({str(self.path)!r}, rows={self.num_samples}, classes={self.num_classes}, "
                f"form={self.form.label!r})")


def _stored_form(path: Path, attrs: dict[str, Any], layouts: dict[str, tuple], rebuild: str) -> CacheForm:
    """The form a cache's attributes say it holds, refused where its tables say otherwise."""
    form = attrs.get("form", "full")  # version 1 files hold the full form and do not say so
    names = {"full": [LOGITS], "top-k": [TOPK_LOGITS, TOPK_CLASSES]}.get(form)
    if names is None or any(n not in layouts for n in names):
        raise UserError(f"{path}: its attributes say form {form!r} but it holds tables {sorted(layouts)} "
                        f"(corrupted or foreign): {rebuild}")
    dtype = str(layouts[names[0]][1])
    if dtype not in DTYPES or attrs.get("dtype", dtype) != dtype:
        raise UserError(f"{path}: its logits are {dtype} but its attributes say {attrs.get('dtype')!r} "
                        f"(corrupted or foreign): {rebuild}")
    if form == "full":
        return CacheForm(None, dtype)
    k, classes = attrs.get("top_k"), attrs.get("num_classes")
    (rows, width), (class_rows, class_width) = layouts[TOPK_LOGITS][0], layouts[TOPK_CLASSES][0]
    if not (isinstance(k, int) and isinstance(classes, int) and 1 <= k < classes
            and (width, class_rows, class_width) == (k + 1, rows, k)):
        raise UserError(f"{path}: its attributes say top-{k} of {classes} classes but its tables are "
                        f"{rows}x{width} logits and {class_rows}x{class_width} classes (corrupted): {rebuild}")
    return CacheForm(k, dtype)
