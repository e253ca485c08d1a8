"""Batches of normalized, augmented images with labels, sample indices and targets.

One API, two backends behind it:

- **resident** (:class:`ResidentLoader`): the split is decoded once into one uint8 tensor
  ``[N,H,W,3]`` on the target device; an epoch is a permutation and one row gather per
  batch (``index_select`` on the GPU, ``np.take`` on CPU), with no worker processes (as
  airbench does). For data that fits
  ``memory_budget_bytes`` (CIFAR, Tiny-ImageNet).
- **ffcv** (:class:`FfcvLoader`): streams the beton with ``ffcv.loader.Loader`` (numba-compiled
  decode, ``os_cache``) and copies each uint8 batch to the device without blocking. For data
  larger than memory, and for variable-size data (ImageNet).

Variable-size data (images of their own sizes, ``meta.image_shape`` is ``None``) is cut to
``res x res`` as it is decoded: every crop box is drawn here, before decoding, from each
sample's stored size (read from the beton's metadata) and the batch's seeded generator, and
the decoder (:class:`fasttarget.decode.PlannedCropDecoder`) cuts and resizes those boxes. An
augmentation with a crop (``crop``, ``stdaug``) draws a RandomResizedCrop per sample; one
without takes the center crop of the test view (:func:`fasttarget.augment.center_crop_boxes`).
The boxes go into the batch's record (``record.params["rrc.boxes"]`` or ``["center.boxes"]``,
int32 ``(x0, y0, w, h)``), and the rest of the augmentation (flip, color, grayscale, mixes) runs
batched on the device as for fixed-size data; :meth:`FfcvLoader.decode_views` decodes a
record's boxes again.

Both walk the same epoch plan (:func:`epoch_rows`), so with one seed they yield the same
sample indices in the same batches, and share one tail: uint8 → float in ``[0,1]``,
augmentation (:mod:`fasttarget.augment`), normalization by the dataset's mean/std,
``channels_last``, and the optional target provider.

Randomness: the order of epoch ``e`` comes from ``(seed, e)``; the augmentation generator of
batch ``k`` of epoch ``e`` is seeded from ``(seed, e, k)``, and so is its decode-time crop
generator (another stream). A batch can therefore be
recomputed alone, and :meth:`state_dict` / :meth:`load_state_dict` resume mid-epoch without
computing the skipped batches.

Epochs: each pass over the loader (each ``iter()``) is the next epoch, starting at 0;
``set_epoch(e)`` makes the next pass epoch ``e`` (``DistributedSampler`` style).

Example:
    >>> import numpy as np
    >>> images = np.zeros((10, 8, 8, 3), np.uint8)
    >>> cfg = LoaderConfig(batch_size=4, drop_last=True, augment="flip")
    >>> loader = ResidentLoader.from_arrays(images, np.arange(10) % 2, cfg,
    ...                                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    >>> len(loader), [b.images.shape[0] for b in loader]
    (2, [4, 4])
    >>> batch = next(iter(loader))
    >>> batch.images.is_contiguous(memory_format=torch.channels_last), float(batch.images.min())
    (True, -2.0)
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from fasttarget.augment import AugmentConfig, AugRecord, Augment, ResizedCrop, build_augment, center_crop_boxes
from fasttarget.dataset import DatasetMeta, check_split, read_image_sizes, read_labels, read_split
from fasttarget.errors import UserError
from fasttarget.order import permuted, stream_batches, stream_rows
from fasttarget.threads import kept_threads

if TYPE_CHECKING:
    from fasttarget.subsets import SubsetConfig

BACKENDS = ("auto", "resident", "ffcv")
# Tiny-ImageNet's train split (100k x 64 x 64 x 3 = 1.2 GB) fits, ImageNet's does not.
DEFAULT_MEMORY_BUDGET = 4 * 2**30

# First word of the augmentation's seed sequences (the order's is fasttarget.order.ORDER_STREAM).
_AUGMENT_STREAM = 0xA6
_CROP_STREAM = 0xC5
#: The output side of variable-size data when ``LoaderConfig.res`` is not set.
DEFAULT_RES = 224

TargetFn = Callable[["Batch"], Tensor]


@dataclass(frozen=True)
class LoaderConfig:
    """How to load one split.

    Args:
        data_dir: a converted dataset directory (``fasttarget convert``); required by
            :func:`build_loader`, unused by :meth:`ResidentLoader.from_arrays`.
        split: ``"train"`` or ``"test"``.
        batch_size: samples per batch (per rank).
        shuffle: a new random order each epoch; ``False`` keeps index order.
        drop_last: drop the last incomplete batch (the paper trains with it).
        seed: seeds the order of every epoch and the augmentation of every batch.
        augment: augmentation name such as ``"stdaug+mixup"`` (see :mod:`fasttarget.augment`)
            or an :class:`~fasttarget.augment.AugmentConfig`.
        backend: ``"resident"``, ``"ffcv"``, or ``"auto"``: resident when the decoded split
            fits ``memory_budget_bytes``.
        device: where batches are delivered (``"cpu"``, ``"cuda"``, ``"cuda:1"`` …).
        subset: an IPC or fraction subset of the split (:class:`~fasttarget.subsets.SubsetConfig`).
        memory_budget_bytes: the largest decoded split ``"auto"`` keeps resident.
        num_workers: ffcv decoding threads.
        os_cache: ffcv reads through the OS page cache (shared by processes on one machine)
            instead of its own process cache.
        quasi_random: ffcv's page-local random order (``OrderOption.QUASI_RANDOM``), which
            reads far less from disk when the beton does not fit in memory (pair it with
            ``os_cache=False``). Implies the ffcv backend; one process only; still
            deterministic per ``(seed, epoch)``, but not the order the resident backend walks.
        rank, world_size: this process's shard; both ``None`` takes them from an initialized
            ``torch.distributed`` process group, else a single process.
        res: output side in pixels. Variable-size data is cut to ``res x res`` at decode time
            (default :data:`DEFAULT_RES`); fixed-size data is delivered at its own size, which
            ``res`` may only repeat.
        stream: cut batches from a stream of per-epoch permutations (:mod:`fasttarget.order`),
            across epoch boundaries, so a subset smaller than a batch still trains with the
            full batch (the paper's batch 128 at IPC 10); a pass is then about one epoch.
    """

    data_dir: str | Path | None = None
    split: str = "train"
    batch_size: int = 128
    shuffle: bool = True
    drop_last: bool = True
    seed: int = 0
    augment: str | AugmentConfig = "noaug"
    backend: str = "auto"
    device: str | torch.device = "cpu"
    subset: SubsetConfig | None = None
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET
    num_workers: int = 2
    os_cache: bool = True
    quasi_random: bool = False
    rank: int | None = None
    world_size: int | None = None
    res: int | None = None
    stream: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"batch_size={self.batch_size} must be >= 1: pass e.g. 128")
        if self.backend not in BACKENDS:
            raise UserError(f"unknown loader backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.seed < 0:
            raise UserError(f"seed={self.seed} must be >= 0")
        if self.num_workers < 1:
            raise UserError(f"num_workers={self.num_workers} must be >= 1")
        if (self.rank is None) != (self.world_size is None):
            raise UserError("rank and world_size go together: pass both, or neither to use torch.distributed")
        if self.world_size is not None and not 0 <= self.rank < self.world_size:  # type: ignore[operator]
            raise UserError(f"rank={self.rank} is not in [0, world_size={self.world_size})")
        if self.res is not None and not 8 <= self.res <= 4096:
            raise UserError(f"res={self.res} is not an image side: pass e.g. 224 (between 8 and 4096)")
        if self.quasi_random and (self.backend == "resident" or not self.shuffle):
            raise UserError("quasi_random is a shuffled ffcv order: use it with backend 'ffcv' or 'auto' and shuffle=True")
        if self.quasi_random and self.stream:
            raise UserError("stream and quasi_random are two sample orders: pick one")
        build_augment(self.augment)  # raises UserError on an unknown name

    def shard(self) -> tuple[int, int]:
        """``(rank, world_size)``: the configured ones, else the initialized process group's."""
        if self.world_size is not None:
            return self.rank, self.world_size  # type: ignore[return-value]
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1


@dataclass
class Batch:
    """One batch as a training loop consumes it.

    It unpacks like an ``(x, y)`` pair, ``images, targets = batch``: ``y`` is ``targets`` when the
    loader has a target provider (already mixed like the images: do not mix it again), else ``labels``.

    Attributes:
        images: float32 ``[B,3,H,W]``, augmented, normalized with the dataset's mean/std,
            ``channels_last``, on the loader's device.
        labels: int64 ``[B]`` true labels (mix them with ``record.mix`` for mixed batches).
        indices: int64 ``[B]`` row numbers of the samples in the split (the key of the
            Strategy C cache).
        record: the augmentation's parameters (:class:`~fasttarget.augment.AugRecord`).
        targets: ``[B,K]`` probabilities from the target provider, or ``None`` without one.
    """

    images: Tensor
    labels: Tensor
    indices: Tensor
    record: AugRecord
    targets: Tensor | None = None

    def __iter__(self) -> Iterator[Tensor]:
        yield self.images
        yield self.labels if self.targets is None else self.targets


@dataclass
class RawBatch:
    """A batch before augmentation: what the backends produce and the benchmarks time.

    Attributes:
        images: uint8 ``[B,H,W,3]`` on the loader's device.
        labels: int64 ``[B]``.
        indices: int64 ``[B]`` row numbers in the split.
        number: the batch's position in its epoch (seeds its augmentation).
        params: what was drawn before decoding (the crop boxes of variable-size data), keyed
            as in :class:`~fasttarget.augment.AugRecord`; it joins the batch's record.
    """

    images: Tensor
    labels: Tensor
    indices: Tensor
    number: int
    params: dict[str, Tensor] = dataclasses.field(default_factory=dict)


def seeded_generator(*words: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of non-negative integers.

    The tuple is hashed by ``numpy.random.SeedSequence``, so nearby tuples such as
    ``(seed, epoch)`` and ``(seed, epoch + 1)`` give unrelated streams.

    Example:
        >>> a = torch.rand(2, generator=seeded_generator(0, 1, 2))
        >>> torch.equal(a, torch.rand(2, generator=seeded_generator(0, 1, 2)))
        True
    """
    state = np.random.SeedSequence(list(words)).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


def epoch_rows(
    pool: np.ndarray, *, seed: int, epoch: int, shuffle: bool, batch_size: int, drop_last: bool,
    rank: int = 0, world_size: int = 1, stream: bool = False,
) -> np.ndarray:
    """The split rows one rank visits in one epoch, in order.

    Every rank draws the same permutation of ``pool`` from ``(seed, epoch)`` and takes every
    ``world_size``-th element from its rank on, so shards are disjoint and together cover the
    pool. All ranks get the same length, so they run the same number of steps: with
    ``drop_last`` the permutation's last ``len(pool) % world_size`` samples sit this epoch out
    and every shard is cut to whole batches; without it the permutation wraps around so that
    ``-len(pool) % world_size`` samples appear twice, as in ``DistributedSampler``.

    The plan is made on the host with numpy (a 50,000-row permutation takes a millisecond;
    torch's CPU index kernels were 10-20x slower on a 2-core machine).

    With ``stream`` the epoch is pass ``epoch`` of :func:`fasttarget.order.stream_rows`
    instead (batches cut across epoch boundaries; ``drop_last`` does not apply).

    Args:
        pool: int64 ``[M]`` the rows to draw from (the whole split, or a subset).

    Returns:
        int64 rows, a new array.

    Example:
        >>> pool = np.arange(10)
        >>> shards = [epoch_rows(pool, seed=0, epoch=0, shuffle=True, batch_size=2,
        ...                      drop_last=False, rank=r, world_size=2) for r in range(2)]
        >>> sorted(np.concatenate(shards).tolist()) == list(range(10))
        True
    """
    if stream:
        return stream_rows(pool, seed=seed, epoch=epoch, shuffle=shuffle, batch_size=batch_size, rank=rank,
                           world_size=world_size)
    pool = permuted(pool, seed=seed, epoch=epoch, shuffle=shuffle)
    if drop_last:
        per_rank = len(pool) // world_size
        shard = pool[: per_rank * world_size][rank::world_size]
        return shard[: len(shard) // batch_size * batch_size].copy()
    per_rank = -(-len(pool) // world_size)
    wrapped = np.tile(pool, -(-per_rank * world_size // len(pool)))[: per_rank * world_size]
    return wrapped[rank::world_size].copy()


def _tensors(obj: Any) -> Iterator[Tensor]:
    """Every tensor inside a batch (dataclass fields, dict values, sequences)."""
    if isinstance(obj, Tensor):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


class _Loader(abc.ABC):
    """What both backends share: the epoch plan, augmentation, normalization, prefetch, resume."""

    def __init__(
        self, cfg: LoaderConfig, *, pool: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
        targets: TargetFn | None,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device {cfg.device!r} was asked for but CUDA is not available: pass device='cpu'")
        self.rank, self.world_size = cfg.shard()
        if len(pool) < self.world_size:
            raise UserError(f"{len(pool)} samples cannot be shared by {self.world_size} ranks: use a larger subset")
        self.augment = build_augment(cfg.augment)
        self.targets = targets
        self._pool = pool
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._epoch = 0  # epoch of the next pass
        self._start = 0  # batch the next pass starts at (set by load_state_dict)
        self._current: tuple[int, int] | None = None  # (epoch, batches yielded) of the pass in progress
        if len(self) == 0:
            # Worded for both doors: the CLI's options, then the library's.
            raise UserError(f"{len(pool)} samples on {self.world_size} rank(s) make no full batch of "
                            f"{cfg.batch_size}: lower --batch-size to {self.num_samples} or raise --ipc/--fraction "
                            f"(library: LoaderConfig(batch_size={self.num_samples}) or drop_last=False)")

    # The dataset's meta.json; set by build_loader (None for a loader over arrays).
    meta: DatasetMeta | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names in label order (from ``meta.json``)."""
        if self.meta is None:
            raise UserError("a loader built from arrays has no class names: build it with build_loader(cfg)")
        return self.meta.classes

    @property
    def num_classes(self) -> int:
        """K: the dataset's class count, else the target provider's."""
        if self.meta is None and self.targets is None:
            raise UserError("a loader built from arrays without targets has no class count: "
                            "build it with build_loader(cfg)")
        return self.meta.num_classes if self.meta is not None else self.targets.num_classes

    @property
    def num_samples(self) -> int:
        """Samples this rank draws from per epoch (before ``drop_last``)."""
        return len(self._pool) // self.world_size if self.cfg.drop_last else -(-len(self._pool) // self.world_size)

    def __len__(self) -> int:
        n, b = self.num_samples, self.cfg.batch_size
        if self.cfg.stream:
            return stream_batches(len(self._pool), b, self.world_size)
        return n // b if self.cfg.drop_last else math.ceil(n / b)

    def set_epoch(self, epoch: int) -> None:
        """Makes the next pass epoch ``epoch``, from its first batch."""
        self._epoch, self._start = epoch, 0

    def state_dict(self) -> dict[str, int]:
        """Where the loader stands: the epoch and the number of batches already handed out.

        Taken mid-pass (or after leaving a pass early), it counts the batches that pass
        yielded; after a finished pass, it points at the start of the next epoch. A new
        ``iter()`` always starts the next epoch; only :meth:`load_state_dict` continues one.
        """
        epoch, batch = self._current if self._current is not None else (self._epoch, self._start)
        return {"epoch": epoch, "batch": batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Makes the next pass continue epoch ``state["epoch"]`` at batch ``state["batch"]``,
        without computing the batches before it."""
        if not 0 <= state["batch"] <= len(self):
            raise UserError(f"loader state {state} is past the {len(self)} batches of an epoch: "
                            "was it saved with another batch size or subset?")
        # A finished epoch continues at the start of the next, not with an empty pass.
        self._epoch, self._start = divmod(state["epoch"] * len(self) + state["batch"], len(self))

    def rows(self, epoch: int) -> np.ndarray:
        """The split rows this rank visits in ``epoch``, in batch order."""
        cfg = self.cfg
        return epoch_rows(self._pool, seed=cfg.seed, epoch=epoch, shuffle=cfg.shuffle, batch_size=cfg.batch_size,
                          drop_last=cfg.drop_last, rank=self.rank, world_size=self.world_size, stream=cfg.stream)

    @abc.abstractmethod
    def uint8_batches(self, epoch: int, start: int = 0) -> Iterator[RawBatch]:
        """The batches of ``epoch`` from batch ``start`` on, before augmentation."""

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self._epoch, self._start
        self._epoch, self._start = epoch + 1, 0
        self._current = (epoch, start)
        for handed_out, batch in enumerate(self._prefetched(self.uint8_batches(epoch, start), epoch), start + 1):
            self._current = (epoch, handed_out)
            yield batch
        self._current = None

    def finish(self, raw: RawBatch, epoch: int) -> Batch:
        """Augments and normalizes one uint8 batch and asks the target provider for its targets."""
        with torch.no_grad():
            # NHWC uint8 permuted to NCHW is already channels_last, and .float() keeps the strides.
            images = raw.images.permute(0, 3, 1, 2).float().div_(255)
            images, record = self.augment(images, seeded_generator(_AUGMENT_STREAM, self.cfg.seed, epoch, raw.number))
            record.params.update({k: v.to(self.device) for k, v in raw.params.items()})
            images = ((images - self._mean) / self._std).contiguous(memory_format=torch.channels_last)
            batch = Batch(images, raw.labels, raw.indices, record)
            if self.targets is not None:
                batch.targets = self.targets(batch)
        return batch

    def _prefetched(self, raws: Iterator[RawBatch], epoch: int) -> Iterator[Batch]:
        if self.device.type != "cuda":
            for raw in raws:
                yield self.finish(raw, epoch)
            return
        # timm's PrefetchLoader pattern: batch n+1's gather, copy, augmentation and targets are
        # launched on a side stream before batch n is handed over, so they overlap the caller's
        # work on batch n; the caller's stream waits only for batch n's own work.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        pending: tuple[Batch, torch.cuda.Event] | None = None
        raws = iter(raws)
        while True:
            with torch.cuda.stream(side):
                raw = next(raws, None)
                ready = None if raw is None else (self.finish(raw, epoch), side.record_event())
            if pending is not None:
                yield self._hand_over(*pending)
            if ready is None:
                return
            pending = ready

    def _hand_over(self, batch: Batch, done: torch.cuda.Event) -> Batch:
        current = torch.cuda.current_stream(self.device)
        current.wait_event(done)
        # Made on the side stream, used and freed on the caller's: keep the allocator from
        # reusing their memory before the caller's stream is done with them.
        for t in _tensors(batch):
            if t.device.type == "cuda":
                t.record_stream(current)
        return batch


def _place(images: Tensor, device: torch.device) -> Tensor:
    if device.type == "cuda":
        return images.to(device)
    # Page-locked, so that the resident set or slices of it can be copied to a GPU asynchronously.
    return images.pin_memory() if torch.cuda.is_available() else images


class ResidentLoader(_Loader):
    """The whole split in one uint8 tensor on the device; an epoch is permutation + gathers.

    Build it with :func:`build_loader` (from a converted dataset) or :meth:`from_arrays`.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, cfg: LoaderConfig, *, mean: tuple[float, ...],
        std: tuple[float, ...], targets: TargetFn | None = None, pool: np.ndarray | None = None,
    ) -> None:
        super().__init__(cfg, pool=np.arange(len(images)) if pool is None else pool, mean=mean, std=std,
                         targets=targets)
        self._images = _place(images, self.device)
        self._labels = labels.to(self.device)

    @classmethod
    def from_arrays(
        cls, images: np.ndarray | Tensor, labels: np.ndarray | Tensor, cfg: LoaderConfig, *,
        mean: tuple[float, ...], std: tuple[float, ...], targets: TargetFn | None = None,
    ) -> ResidentLoader:
        """A loader over in-memory arrays (no beton, no ffcv); ``cfg.data_dir`` is ignored.

        Args:
            images: uint8 ``[N,H,W,3]``.
            labels: integer ``[N]``.
            cfg: batch size, order, augmentation, device, subset, shard.
            mean, std: per-channel statistics on the 0..1 scale.
            targets: optional target provider (``Batch -> [B,K]``).
        """
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels).to(torch.int64)
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise UserError(f"images must be uint8 [N,H,W,3], got {images.dtype} {list(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise UserError(f"{len(labels)} labels for {len(images)} images: pass one label per image")
        pool = None if cfg.subset is None else _subset_rows(labels.numpy(), cfg.subset)
        return cls(images, labels, cfg, mean=mean, std=std, targets=targets, pool=pool)

    def uint8_batches(self, epoch: int, start: int = 0) -> Iterator[RawBatch]:
        b = self.cfg.batch_size
        if self.device.type == "cpu":
            # np.take copies whole uint8 rows 5-15x faster than torch's CPU index kernels
            # (CIFAR-sized rows, 2 cores).
            images, labels, rows = self._images.numpy(), self._labels.numpy(), self.rows(epoch)
            for k in range(start, len(self)):
                index = rows[k * b : (k + 1) * b]
                yield RawBatch(torch.from_numpy(np.take(images, index, axis=0)),
                               torch.from_numpy(np.take(labels, index)), torch.from_numpy(index), k)
            return
        rows = torch.from_numpy(self.rows(epoch)).to(self.device)
        for k in range(start, len(self)):
            index = rows[k * b : (k + 1) * b]
            yield RawBatch(self._images.index_select(0, index), self._labels.index_select(0, index), index, k)


class FfcvLoader(_Loader):
    """Streams a beton with ``ffcv.loader.Loader``; uint8 batches go to the device without blocking.

    ffcv walks this loader's own epoch plan (:func:`epoch_rows`), so the order, shards and
    determinism are those of :class:`ResidentLoader`. Variable-size data is cut to
    ``res x res`` at decode time along boxes this loader draws (see the module docstring).
    """

    def __init__(
        self, cfg: LoaderConfig, meta: DatasetMeta, *, pool: np.ndarray | None = None,
        targets: TargetFn | None = None,
    ) -> None:
        path = check_split(cfg.data_dir, cfg.split, meta=meta)
        with kept_threads():  # ffcv resets torch's and numba's thread counts (fasttarget.threads)
            self._build(path, cfg, meta, pool, targets)

    def _build(self, path: Path, cfg: LoaderConfig, meta: DatasetMeta, pool: np.ndarray | None,
               targets: TargetFn | None) -> None:
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import SimpleRGBImageDecoder
        from ffcv.loader import Loader
        from ffcv.transforms import ToTensor

        if pool is None:
            pool = np.arange(meta.count(cfg.split))
        super().__init__(cfg, pool=pool, mean=meta.mean, std=meta.std, targets=targets)
        self.res = resolve_res(meta, cfg.res)
        self._sizes: np.ndarray | None = None  # stored (height, width) per row, for variable-size data
        decoder: Any = SimpleRGBImageDecoder()
        if meta.image_shape is None:
            from fasttarget.decode import PlannedCropDecoder

            self._sizes = read_image_sizes(cfg.data_dir, cfg.split, meta=meta)
            # The decoder reads each row's box from this table, filled for the coming epoch.
            self._boxes = np.zeros((meta.count(cfg.split), 4), np.int32)
            self._crop, self.augment = _decode_time_crop(self.augment)
            decoder = self._decoder = PlannedCropDecoder(self._boxes, (self.res, self.res))
        if cfg.quasi_random and self.world_size > 1:
            raise UserError("ffcv's quasi_random order runs in one process only: drop quasi_random under torch.distributed")
        self._quasi: Any = None
        # ffcv sizes every epoch by the plan it sees at construction; all epochs share that length.
        self._order = _planned_order(self.rows(0))
        self._ffcv = Loader(
            str(path), batch_size=cfg.batch_size, num_workers=cfg.num_workers,
            os_cache=cfg.os_cache, order=self._order, distributed=self.world_size > 1,
            # unused by the planned order, but without it ffcv draws one from numpy's global RNG
            seed=cfg.seed,
            indices=None if cfg.subset is None else pool,
            # The plan already drops the incomplete batch; ffcv must not cut it again.
            drop_last=False,
            pipelines={"image": [decoder, ToTensor()], "label": [IntDecoder(), ToTensor()],
                       "index": [IntDecoder(), ToTensor()]},
        )
        self._fields = list(self._ffcv.pipeline_specs)
        if cfg.quasi_random:
            from ffcv.traversal_order import QuasiRandom

            self._quasi = QuasiRandom(self._ffcv)
            self._pages = self._quasi.page_to_samples_array.copy()

    def rows(self, epoch: int) -> np.ndarray:
        if self._quasi is None:
            return super().rows(epoch)
        # ffcv seeds the order from (seed, epoch) but shuffles its page table in place, so each
        # epoch would depend on the ones drawn before it: start every epoch from the same table.
        self._quasi.page_to_samples_array = self._pages.copy()
        order = self._quasi.sample_order(epoch)
        b = self.cfg.batch_size
        return order[: len(order) // b * b] if self.cfg.drop_last else order

    def uint8_batches(self, epoch: int, start: int = 0) -> Iterator[RawBatch]:
        rows, b = self.rows(epoch), self.cfg.batch_size
        plan = self._plan_crops(rows, epoch, start) if self._sizes is not None else None
        self._order.plan = rows[start * b :]
        with kept_threads():
            epoch_iterator = iter(self._ffcv)
        try:
            for k, out in enumerate(epoch_iterator, start):
                fields = dict(zip(self._fields, out))
                params = {}
                if plan is not None:
                    self._decoder.check()  # a sample that failed to decode came out black: say so
                    # Copies: a view would keep (and torch.save would write) the whole epoch's plan.
                    params = {key: v[(k - start) * b : (k - start + 1) * b].clone() for key, v in plan.items()}
                yield RawBatch(self._copy(fields["image"]), self._copy(fields["label"]).view(-1),
                               self._copy(fields["index"]).view(-1), k, params)
        finally:
            epoch_iterator.close()

    def _plan_crops(self, rows: np.ndarray, epoch: int, start: int) -> dict[str, Tensor]:
        """Draw the crop boxes of batches ``start…`` of ``epoch`` into the decoder's table; returns
        the record entries of those batches, concatenated in batch order.

        Batch ``k``'s boxes come from its own generator, seeded from ``(seed, epoch, k)``, so
        they do not depend on where the pass started; only the draws loop over batches, the
        boxes of the whole epoch are computed at once (:meth:`ResizedCrop.plan_batches`).
        """
        b = self.cfg.batch_size
        rows = rows[start * b : len(self) * b]
        sizes = torch.from_numpy(self._sizes[rows])
        if self._crop is None:
            prefix, plan = "center", {"boxes": center_crop_boxes(sizes)}
        else:
            generators = [seeded_generator(_CROP_STREAM, self.cfg.seed, epoch, k) for k in range(start, len(self))]
            prefix, plan = "rrc", self._crop.plan_batches(sizes, generators, b)
        # A row drawn twice in one epoch (a wrapped shard) is decoded with the box drawn for its
        # last occurrence, the one the table keeps: every occurrence records that box.
        last = np.full(len(self._boxes), -1, np.int64)
        np.maximum.at(last, rows, np.arange(len(rows)))
        boxes = plan["boxes"].numpy()[last[rows]]
        self._boxes[rows] = boxes
        plan["boxes"] = torch.from_numpy(boxes)
        return {f"{prefix}.{key}": value for key, value in plan.items()}

    def decode_views(self, indices: Tensor, boxes: Tensor) -> Tensor:
        """Decodes rows ``indices`` cut at ``boxes`` again: a batch's views from its record.

        Args:
            indices: int ``[B]`` rows of the split (``batch.indices``).
            boxes: int ``[B, 4]`` ``(x0, y0, w, h)`` (``batch.record.params["rrc.boxes"]``).

        Returns:
            uint8 ``[B, res, res, 3]`` on the loader's device, as the batch was decoded.

        Raises:
            UserError: the loader's data has one image size (nothing is cut at decode time).
        """
        if self._sizes is None:
            raise UserError("decode_views replays decode-time crops, which only variable-size data has")
        rows = np.asarray(indices.cpu(), np.int64)
        kept = self._boxes[rows].copy()
        self._boxes[rows] = boxes.cpu().numpy()
        self._order.plan = rows
        try:
            with kept_threads():
                views = torch.cat([self._copy(dict(zip(self._fields, out))["image"]) for out in self._ffcv])
            self._decoder.check()
            return views
        finally:
            self._boxes[rows] = kept

    def _copy(self, t: Tensor) -> Tensor:
        # ffcv reuses its output buffers, so each batch is copied out before the next is decoded.
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        # numpy's single-threaded copy: torch's clone wakes its OpenMP pool, which fights ffcv's
        # decoding threads for the cores (on 2 cores: 7k img/s with clone, 360k with this).
        return torch.from_numpy(t.numpy().copy())


def _planned_order(plan: np.ndarray) -> Any:
    """An ffcv traversal order that returns whatever plan the loader set for the coming epoch."""
    from ffcv.traversal_order.base import TraversalOrder

    class PlannedOrder(TraversalOrder):
        # ffcv 1.0 accepts a TraversalOrder *instance* and calls it with the loader.
        def __init__(self) -> None:
            self.plan = plan

        def __call__(self, loader: Any) -> PlannedOrder:
            return self

        def sample_order(self, epoch: int) -> np.ndarray:
            return self.plan

    return PlannedOrder()


def _decode_time_crop(augment: Augment) -> tuple[ResizedCrop | None, Augment]:
    """An augmentation's crop, cut at decode time, and the rest of it, run on the decoded batch."""
    crop = next((op for op in augment.ops if isinstance(op, ResizedCrop)), None)
    return crop, Augment(augment.config, tuple(op for op in augment.ops if op is not crop))


def resolve_res(meta: DatasetMeta, res: int | None) -> int:
    """The side of the images a loader over ``meta``'s data delivers (``LoaderConfig.res`` resolved).

    Variable-size data: ``res``, by default :data:`DEFAULT_RES`. Fixed-size data: its own side.

    Raises:
        UserError: ``res`` asks fixed-size data for another size.
    """
    if meta.image_shape is None:
        return res or DEFAULT_RES
    height, width = meta.image_shape[:2]
    if res is not None and (res, res) != (height, width):
        raise UserError(f"--res {res} asks for {res}x{res} images, but this dataset's are all {height}x{width} "
                        f"and are delivered at that size: drop --res (or reconvert the source without a fixed size)")
    return height


def _subset_rows(labels: np.ndarray, subset: SubsetConfig) -> np.ndarray:
    from fasttarget.subsets import select_subset

    return np.asarray(select_subset(labels, subset), np.int64)


def decoded_bytes(meta: DatasetMeta, split: str) -> int | None:
    """Bytes of the decoded uint8 split, or ``None`` when its images differ in size."""
    if meta.image_shape is None:
        return None
    return meta.count(split) * math.prod(meta.image_shape)


def choose_backend(cfg: LoaderConfig, meta: DatasetMeta) -> str:
    """``cfg.backend``, with ``"auto"`` resolved: resident when the decoded split fits the budget."""
    if cfg.backend != "auto":
        return cfg.backend
    if cfg.quasi_random:
        return "ffcv"
    size = decoded_bytes(meta, cfg.split)
    return "resident" if size is not None and size <= cfg.memory_budget_bytes else "ffcv"


def build_loader(cfg: LoaderConfig, targets: TargetFn | None = None) -> ResidentLoader | FfcvLoader:
    """Builds the loader ``cfg`` asks for over a converted dataset.

    Args:
        cfg: the split, batching, order, augmentation, device, backend and shard.
        targets: optional target provider, ``Batch -> [B,K]`` (filled into ``batch.targets``).

    Both backends first check the beton against ``meta.json`` (:func:`fasttarget.dataset.check_split`:
    size, fields, rows, image sizes, label range, truncation; no decoding, no full checksum).

    Raises:
        UserError: no ``data_dir``, not a converted dataset, unknown split, a beton that does
            not hold what ``meta.json`` records, bad values.

    Example:
        >>> loader = build_loader(LoaderConfig("data/cifar10", augment="stdaug"))  # doctest: +SKIP
        >>> for batch in loader:  # doctest: +SKIP
        ...     loss = criterion(model(batch.images), batch.labels)
    """
    if cfg.data_dir is None:
        raise UserError("LoaderConfig.data_dir is not set: pass a directory written by `fasttarget convert`")
    meta = DatasetMeta.load(cfg.data_dir)
    loader = _build_loader(cfg, meta, targets)
    loader.meta = meta
    return loader


def _build_loader(cfg: LoaderConfig, meta: DatasetMeta, targets: TargetFn | None) -> ResidentLoader | FfcvLoader:
    # Before anything reads the split; the readers below find the file remembered as checked.
    check_split(cfg.data_dir, cfg.split, meta=meta)
    backend = choose_backend(cfg, meta)
    resolve_res(meta, cfg.res)  # before anything is read
    if backend == "resident":
        if meta.image_shape is None:
            raise UserError(f"{cfg.data_dir} holds images of different sizes, which the resident backend "
                            "cannot hold in one tensor: use backend='ffcv' (or 'auto'), which crops them as it decodes")
        images, labels = read_split(cfg.data_dir, cfg.split, num_workers=cfg.num_workers, meta=meta)
        return ResidentLoader.from_arrays(images, labels, cfg, mean=meta.mean, std=meta.std, targets=targets)
    pool = None if cfg.subset is None else _subset_rows(read_labels(cfg.data_dir, cfg.split, meta=meta), cfg.subset)
    return FfcvLoader(cfg, meta, pool=pool, targets=targets)


def build_loaders(cfg: LoaderConfig, targets: TargetFn | None = None) -> tuple[ResidentLoader | FfcvLoader,
                                                                               ResidentLoader | FfcvLoader]:
    """The training loader ``cfg`` describes and its dataset's test loader, in one call.

    The test loader walks the whole test split in order, unaugmented, without targets, with
    ``cfg``'s batch size, device and backend (``subset`` applies to training only).

    Example:
        >>> train, test = build_loaders(LoaderConfig("data/cifar10", augment="stdaug"))  # doctest: +SKIP
        >>> for images, labels in train: ...  # doctest: +SKIP
    """
    test = dataclasses.replace(cfg, split="test", shuffle=False, drop_last=False, augment="noaug", subset=None,
                               quasi_random=False)
    return build_loader(cfg, targets), build_loader(test)


__all__ = [
    "BACKENDS",
    "Batch",
    "DEFAULT_MEMORY_BUDGET",
    "DEFAULT_RES",
    "FfcvLoader",
    "LoaderConfig",
    "RawBatch",
    "ResidentLoader",
    "build_loader",
    "build_loaders",
    "choose_backend",
    "decoded_bytes",
    "epoch_rows",
    "resolve_res",
    "seeded_generator",
]
