"""The ``imagenet`` suite: decode-time crops of variable-size JPEGs against FFCV's decoders and torchvision.

Data, built once and kept in ``BenchConfig.scratch`` (or the run's temporary directory): the
real photos of ``BenchConfig.imagenet`` (an ImageNet train-folder layout, e.g. the 334-photo
sample) repeated into :data:`BENCH_SAMPLES` files (symlinks, one folder per class), written by
FFCV's own ``DatasetWriter`` with ``RGBImageField(write_mode='jpg', max_resolution=500,
jpeg_quality=90)`` into one beton, and (for the ``build_loader`` row) converted by
``fasttarget convert imagefolder`` with the same settings.

Each timed call is one epoch over the same :data:`EPOCH_IMAGES` random rows, batch
:data:`BATCH`, in random order, with every core decoding (``num_workers`` = the usable cores):

- ``imagenet train rrc224``: :class:`~fasttarget.decode.PlannedCropDecoder` in an ffcv ``Loader``,
  the epoch's boxes drawn first by fasttarget's planner (:meth:`fasttarget.augment.ResizedCrop.plan`,
  torchvision's RRC rule, scale (0.08, 1), ratio (3/4, 4/3)) and counted in the time; against FFCV's
  ``RandomResizedCropRGBImageDecoder((224, 224))`` in the same ``Loader`` setup (goal ≥ 1.5×), and
  against torchvision's ``ImageFolder`` + ``DataLoader(num_workers=2)`` with PIL decode,
  ``RandomResizedCrop(224)`` and ``PILToTensor`` over the same photos' source files (goal ≥ 4×);
- ``imagenet test center224``: the planned decoder with :func:`~fasttarget.augment.center_crop_boxes`
  against FFCV's ``CenterCropRGBImageDecoder((224, 224), 224/256)`` (goal ≥ 1×);
- ``imagenet build_loader crop224``: fasttarget's whole train path, ``build_loader`` with
  ``augment="crop"``, ``res=224`` over :data:`SUBSET_IPC` images per class, ``uint8_batches``
  (plan, decode, copy out), against the same FFCV RRC ``Loader``.

Notes (printed under the table): the peak resident memory (``VmHWM``, reset before each) of this
process while one epoch of each ffcv pipeline streams, and each row's img/s per core beside
FFCV's published 31k img/s on 96 vCPUs (323 per vCPU).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from fasttarget.bench.context import BenchContext
from fasttarget.bench.goals import FFCV_CENTER, FFCV_RRC, TORCHVISION_FOLDER
from fasttarget.bench.timing import Comparison, Row
from fasttarget.errors import UserError

BENCH_SAMPLES = 10_000  # at least this many files in the bench beton
EPOCH_IMAGES = 1_024  # rows of one timed epoch (4 batches: a shared 2-core machine has to finish the run)
BATCH = 256
OUT = 224
SUBSET_IPC = 8  # images per class of the build_loader row's epoch (334 classes: 2,672)
FFCV_PUBLISHED_PER_VCPU = 31_000 / 96


def imagenet_comparisons(ctx: BenchContext) -> Iterator[Comparison]:
    """The suite's comparisons (see the module docstring); none, with a note, without the photos."""
    sample = ctx.cfg.imagenet
    if sample is None or not (Path(sample) / "train").is_dir():
        ctx.notes.append(f"imagenet skipped: pass --imagenet with an ImageNet train-folder layout (got {sample})")
        return
    from fasttarget.convert import usable_cores

    cores = usable_cores()
    scratch = Path(ctx.cfg.scratch or ctx.workdir)
    folder, files = bench_folder(Path(sample), scratch / "imagenet-bench-files", BENCH_SAMPLES)
    beton = bench_beton(files, scratch / f"imagenet-bench-{len(files)}.beton", ctx.say)
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(files), EPOCH_IMAGES, replace=False))
    ctx.say(f"imagenet: {len(files):,} JPEGs, {EPOCH_IMAGES:,} per epoch, {cores} decoding threads")

    ours_train = planned_epochs(beton, rows, "train", cores)
    ffcv_train = ffcv_epochs(beton, rows, "train", cores)
    ctx.notes += memory_notes({"planned RRC": ours_train, "ffcv RRC": ffcv_train})
    yield Comparison(f"imagenet train rrc{OUT}", "img/s", len(rows), ours_train, FFCV_RRC, ffcv_train)
    yield Comparison(f"imagenet train rrc{OUT}", "img/s", len(rows), ours_train, TORCHVISION_FOLDER,
                     torchvision_epochs(folder, rows))
    ours_test, ffcv_test = planned_epochs(beton, rows, "test", cores), ffcv_epochs(beton, rows, "test", cores)
    ctx.notes += memory_notes({"planned center": ours_test, "ffcv center": ffcv_test})
    yield Comparison(f"imagenet test center{OUT}", "img/s", len(rows), ours_test, FFCV_CENTER, ffcv_test)
    data = bench_dataset(folder, scratch / "imagenet-bench-data", ctx.say)
    full, n = build_loader_epochs(data, cores)
    same_work = np.sort(rng.choice(len(files), n, replace=False))
    yield Comparison(f"imagenet build_loader crop{OUT}", "img/s", n, full, FFCV_RRC,
                     ffcv_epochs(beton, same_work, "train", cores))


def per_core_notes(rows: list[Row]) -> list[str]:
    """Each row's img/s per usable core, beside FFCV's published 31k img/s on 96 vCPUs."""
    from fasttarget.convert import usable_cores

    cores = usable_cores()
    return [f"{r.name} vs {r.baseline}: {r.value / cores:,.0f} img/s per core (baseline {r.baseline_value / cores:,.0f}; "
            f"FFCV's published ImageNet figure: {FFCV_PUBLISHED_PER_VCPU:,.0f} per vCPU)" for r in rows
            if r.name.startswith("imagenet")]


def bench_folder(sample: Path, out: Path, n: int) -> tuple[Path, list[Path]]:
    """``out/train/<class>/<k>_<name>`` symlinks repeating the sample's photos to at least ``n``
    files, and ``out/val/<class>/`` one link per photo (the layout ``convert imagefolder`` reads).

    Returns:
        ``out`` and the train files in sorted order (the bench beton's row order).
    """
    sources = sorted(p for p in (sample / "train").glob("*/*") if p.is_file())
    if not sources:
        raise UserError(f"no photos under {sample / 'train'}: pass --imagenet with train/<class>/* files")
    repeats = -(-n // len(sources))
    for split, copies in (("train", repeats), ("val", 1)):
        for k in range(copies):
            for src in sources:
                link = out / split / src.parent.name / f"{k}_{src.name}"
                if not link.exists():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(src.resolve())
    return out, sorted((out / "train").glob("*/*"))


def bench_beton(files: list[Path], path: Path, say: Callable[[str], None]) -> Path:
    """``files`` written once by FFCV's own ``DatasetWriter`` (all JPEG, max side 500, quality 90)."""
    if path.exists():
        return path
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from PIL import Image

    from fasttarget.convert import usable_cores

    classes = sorted({f.parent.name for f in files})
    index = {c: i for i, c in enumerate(classes)}

    class Photos:
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int):
            with Image.open(files[i]) as image:
                return np.asarray(image.convert("RGB")), index[files[i].parent.name]

    say(f"writing the bench beton {path} ({len(files):,} photos, FFCV DatasetWriter)")
    tmp = path.with_suffix(".tmp")
    fields = {"image": RGBImageField(write_mode="jpg", max_resolution=500, jpeg_quality=90), "label": IntField()}
    DatasetWriter(str(tmp), fields, num_workers=usable_cores()).from_indexed_dataset(Photos())
    os.replace(tmp, path)
    return path


def bench_dataset(folder: Path, out: Path, say: Callable[[str], None]) -> Path:
    """``folder`` converted once by ``fasttarget convert imagefolder`` (max side 500, quality 90, all JPEG)."""
    if (out / "meta.json").exists():
        return out
    from fasttarget.convert import ConvertConfig, convert

    say(f"converting {folder} for the build_loader row")
    convert(ConvertConfig("imagefolder", folder, out, force=True, max_side=500, jpeg_quality=90,
                          compress_probability=1.0, progress=False))
    return out


def _epochs(make_loader: Callable[[], object], before: Callable[[int], None] | None = None) -> Callable[[], None]:
    """One whole epoch of the loader per call (``before(epoch)`` runs first, inside the timing)."""
    loader = make_loader()
    epochs = iter(range(1 << 62))

    def one_epoch() -> None:
        epoch = next(epochs)
        if before is not None:
            before(epoch)
        for _ in loader:
            pass

    return one_epoch


def _ffcv_loader(beton: Path, rows: np.ndarray, decoder, cores: int):
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption

    return Loader(str(beton), batch_size=BATCH, num_workers=cores, order=OrderOption.RANDOM, indices=rows,
                  drop_last=False, pipelines={"image": [decoder], "label": [IntDecoder()]}, seed=0)


def planned_epochs(beton: Path, rows: np.ndarray, view: str, cores: int) -> Callable[[], None]:
    """Epochs of the planned decoder; train views' boxes drawn per epoch by fasttarget's planner."""
    import torch

    from fasttarget.augment import ResizedCrop, center_crop_boxes
    from fasttarget.decode import PlannedCropDecoder, stored_sizes

    sizes = stored_sizes(beton)
    boxes = center_crop_boxes(torch.from_numpy(sizes)).numpy() if view == "test" else np.zeros((len(sizes), 4), np.int32)
    planner = ResizedCrop(1.0, (0.08, 1.0), (3 / 4, 4 / 3))
    picked = torch.from_numpy(sizes[rows])

    def plan(epoch: int) -> None:
        boxes[rows] = planner.plan(picked, torch.Generator().manual_seed(epoch))["boxes"].numpy()

    decoder = PlannedCropDecoder(boxes, (OUT, OUT))
    return _epochs(lambda: _ffcv_loader(beton, rows, decoder, cores), plan if view == "train" else None)


def ffcv_epochs(beton: Path, rows: np.ndarray, view: str, cores: int) -> Callable[[], None]:
    """Epochs of FFCV's own RRC (train) or center-crop (test) decoder in the same Loader setup."""
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder

    decoder = (RandomResizedCropRGBImageDecoder((OUT, OUT)) if view == "train"
               else CenterCropRGBImageDecoder((OUT, OUT), 224 / 256))
    return _epochs(lambda: _ffcv_loader(beton, rows, decoder, cores))


def torchvision_loader(folder: Path, rows: np.ndarray):
    """torchvision's ImageFolder + DataLoader (2 persistent workers, shuffled, PIL decode,
    RandomResizedCrop(224), PILToTensor) over the files of the beton's ``rows``."""
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.RandomResizedCrop(OUT), transforms.PILToTensor()])
    dataset = datasets.ImageFolder(str(folder / "train"), transform=tf)
    # ImageFolder lists files sorted by class then name, as the beton's rows are.
    subset = torch.utils.data.Subset(dataset, rows.tolist())
    return torch.utils.data.DataLoader(subset, batch_size=BATCH, shuffle=True, num_workers=2, persistent_workers=True)


def torchvision_epochs(folder: Path, rows: np.ndarray) -> Callable[[], None]:
    """Epochs of :func:`torchvision_loader`."""
    return _epochs(lambda: torchvision_loader(folder, rows))


def build_loader_epochs(data: Path, cores: int) -> tuple[Callable[[], None], int]:
    """Epochs of ``build_loader(augment="crop", res=224)``'s ``uint8_batches`` and the images in one."""
    from fasttarget.loader import LoaderConfig, build_loader
    from fasttarget.subsets import SubsetConfig

    cfg = LoaderConfig(data, batch_size=BATCH, augment="crop", backend="ffcv", res=OUT, num_workers=cores,
                       subset=SubsetConfig(ipc=SUBSET_IPC), drop_last=False)
    loader = build_loader(cfg)
    epochs = iter(range(1 << 62))

    def one_epoch() -> None:
        for _ in loader.uint8_batches(next(epochs)):
            pass

    return one_epoch, loader.num_samples


def peak_rss_bytes(fn: Callable[[], None]) -> tuple[int, int] | None:
    """This process's resident-memory high-water mark while ``fn`` runs, and its resident memory
    just before (Linux: ``VmHWM`` after a reset through ``/proc/self/clear_refs``); ``None`` where
    the kernel offers neither."""

    def status(key: str) -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key))
        return int(line.split()[1]) * 1024

    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = status("VmRSS:")
        fn()
        return status("VmHWM:"), before
    except (OSError, StopIteration):
        return None


def memory_notes(epochs: dict[str, Callable[[], None]]) -> list[str]:
    """One note per pipeline: the peak RSS of this (the loading) process over one epoch."""
    notes = []
    for name, epoch in epochs.items():
        epoch()  # the first epoch compiles; measure a steady one
        peak = peak_rss_bytes(epoch)
        shown = ("unavailable here" if peak is None else
                 f"{peak[0] / 2**20:,.0f} MiB, {(peak[0] - peak[1]) / 2**20:,.0f} MiB above its RSS before the epoch")
        notes.append(f"imagenet peak RSS of the loading process, one epoch of {name}: {shown}")
    return notes
