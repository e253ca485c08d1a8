"""The student training loop: Strategies A/B/C, checkpoints, bit-exact resume, DDP.

:func:`train` trains a :class:`~fasttarget.models.Student` for a number of optimizer steps
with the separation loss (or plain KD, ``loss="coupled"``), evaluates the classifier ``h``
and the soft-target head ``g`` on the test split every ``eval_every`` steps and writes the
run directory of ``docs/design.md``:

- ``config.json``: the :class:`TrainConfig` plus what it resolved to (dataset fingerprint,
  teacher SHA-256, cache file, world size, device);
- ``metrics.jsonl``: one object per evaluation (``step``, ``images_seen``, ``test_acc_h``,
  ``test_acc_g``, ``loss_b``, ``loss_h``, ``loss`` — means over the steps since the previous
  evaluation — ``img_per_s``, ``wall_s``); accuracies are fractions in ``[0, 1]``;
- ``checkpoints/last.pt``: student, optimizer, RNG states and loader position;
- ``final.pt``: the trained student's backbone and classifier ``h`` in the format of
  :func:`~fasttarget.models.save_classifier` (usable as ``--teacher`` and by ``load_classifier``);
- ``final.json``: ``{"status": "done", "step", "test_acc_h", "test_acc_g", "wall_s"}``.

One process writes a run directory at a time: :func:`train` holds ``.lock`` in it
(:func:`fasttarget.locking.exclusive_lock`) from start to end, and a second ``train`` on the
same ``out`` refuses at once. Holding it, a run removes the temporary files a killed one left.

Resume: the loader's batch ``k`` of epoch ``e`` depends only on ``(seed, e, k)``, and the
checkpoint holds everything else that evolves (weights, BatchNorm statistics, AdamW
moments, RNG states), so a run killed at any moment and resumed writes the same
``metrics.jsonl`` on CPU as an uninterrupted one (``img_per_s`` and ``wall_s`` aside).
Evaluations after the last checkpoint are dropped and recomputed. What is compared on resume
is what the run is (its settings, and its dataset, teacher and cache by content), not where
anything lives, so a run directory that was moved or copied resumes.

Distributed: start under ``torchrun``; the caller initializes the process group
(:func:`init_distributed`). ``batch_size`` stays the global batch, each rank trains on
its share of every step's batch (rank ``r`` of ``W`` takes rows ``r, r+W, …`` of the
single-process batch), only rank 0 writes, and the logged losses are means over the whole
global batch.

Example:
    >>> cfg = TrainConfig(data="data/cifar10", out="runs/a", strategy="A", width=0.25, steps=500)
    >>> cfg.checkpoint_every, cfg.compile
    (100, None)
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from fasttarget.config import TrainConfig, check_hyperparameters, training_subset  # noqa: F401 (re-exported)
from fasttarget.errors import UserError
from fasttarget.locking import exclusive_lock
from fasttarget.losses import build_student, hard_targets, loss_terms
from fasttarget.models import ModelConfig, _unwrap, place, read_checkpoint
from fasttarget.progress import Progress
from fasttarget.zoo import teacher_file, teacher_sha256

RUN_FORMAT = "fasttarget-run/1"
CHECKPOINT = Path("checkpoints") / "last.pt"
# What `--force` deletes: the files a run writes (the lock is held meanwhile).
FINAL_MODEL = Path("final.pt")
RUN_FILES = (Path("config.json"), Path("metrics.jsonl"), Path("final.json"), FINAL_MODEL, CHECKPOINT)
LOCK_FILE = ".lock"
TERMS = ("loss_b", "loss_h", "loss")
# The end of every message refusing a run's checkpoint.
CHECKPOINT_FIX = "restore a backup of it, or pass --force to start the run over"
# Host syncs for the progress bar happen this often (a sync per step would stall CUDA).
BAR_EVERY = 10
# Fields that may differ between a run and its resumption: where its inputs and outputs live (the
# inputs are compared by content instead, see _SETTINGS) and how, not what, it trains.
_WHERE_AND_HOW = ("out", "data", "teacher", "cache", "resume", "force", "progress", "device", "compile")


# ---------------------------------------------------------------- pieces shared with the teacher ladder


def resolve_device(name: str | None) -> torch.device:
    """``"cpu"``/``"cuda"``/``None`` (CUDA when available) → a device; under DDP, the local GPU."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was requested but no CUDA device is visible: pass --device cpu")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing on CPU (bf16 convolutions there are slow, and CPU runs resume bit-exactly)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(net: nn.Module, device: torch.device, compile: bool | None) -> tuple[nn.Module, nn.Module]:
    """Move ``net`` to ``device`` in channels_last (contiguous where that crashes); returns ``(net, forward)``.

    ``forward`` trains ``net``: wrapped in ``DistributedDataParallel`` when a process group
    is initialized, then ``torch.compile``'d when ``compile`` (default: on CUDA). Both share
    parameters; evaluate and save ``net``.

    Raises:
        UserError: on CPU, a network too narrow to train (:func:`fasttarget.models.memory_format`).
    """
    config = getattr(net, "config", None)
    net = place(net, device, config.image_size if config is not None else 0)
    forward = net
    if distributed_info()[1] > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if compile if compile is not None else device.type == "cuda":
        forward = torch.compile(forward)
    return net, forward


def build_optimizer(net: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over every parameter (the paper uses Lightning's default AdamW: lr 1e-3, wd 0.01)."""
    return torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)


def distributed_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialized process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str | None = None) -> None:
    """Join the ``torchrun`` process group (NCCL with CUDA, gloo on CPU).

    ``torch.distributed`` reads ``MASTER_ADDR``/``RANK``/``WORLD_SIZE`` itself; on CUDA the
    local GPU is picked from ``LOCAL_RANK`` by the caller, see :func:`fasttarget.cli.train`.
    """
    use_cuda = device != "cpu" and torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")


@torch.no_grad()
def evaluate(net: nn.Module, loader, device: torch.device) -> tuple[float, ...]:
    """Top-1 accuracy of each of ``net``'s outputs over ``loader``, in ``[0, 1]``.

    ``net`` returns logits or a tuple of logits (the student's ``(g, h)``).
    """
    was_training = net.training
    net.eval()
    correct, total = None, 0
    for batch in loader:
        with autocast(device):
            outputs = net(batch.images)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        hits = torch.stack([(out.argmax(1) == batch.labels).sum() for out in outputs])
        correct = hits if correct is None else correct + hits
        total += batch.labels.numel()
    net.train(was_training)
    if correct is None:
        raise UserError("the test split is empty: reconvert the dataset with a test split")
    return tuple((correct.double() / total).tolist())


def iterate_steps(loader, start_step: int, stop_step: int) -> Iterator[tuple[int, Any]]:
    """Yield ``(step, batch)`` for steps ``start_step+1 … stop_step`` across epochs.

    Step ``s`` trains on batch ``(s-1) mod len(loader)`` of epoch ``(s-1) // len(loader)``;
    resuming skips the done batches of the current epoch without computing them.
    """
    epoch, skip = divmod(start_step, len(loader))
    loader.load_state_dict({"epoch": epoch, "batch": skip})
    step = start_step
    while step < stop_step:
        for batch in loader:  # each pass is the next epoch
            step += 1
            yield step, batch
            if step >= stop_step:
                return


class Throughput:
    """Images per second of training alone (evaluation and checkpoint time excluded)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.images, self.seconds, self._start = 0, 0.0, time.perf_counter()

    def pause(self) -> None:
        """Stop the clock (until :meth:`reset`): what follows, an evaluation say, is not training."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - self._start
        self._start = None

    def rate(self) -> float:
        running = 0.0 if self._start is None else time.perf_counter() - self._start
        return self.images / max(self.seconds + running, 1e-9)

    def reset(self) -> None:
        self.images, self.seconds, self._start = 0, 0.0, time.perf_counter()


def train_loader_config(data: Path, batch_size: int, aug: str, seed: int, device: torch.device, subset=None,
                        res: int | None = None, stream: bool = False):
    """The loader config of a training split: shuffled, augmented, ``drop_last``, this rank's share.

    Args:
        subset: a :class:`~fasttarget.subsets.SubsetConfig` or ``None`` for the whole split.
        res: ``LoaderConfig.res`` (``None``: the dataset's default).
        stream: batches cut across epoch boundaries (``LoaderConfig.stream``).
    """
    from fasttarget.loader import LoaderConfig

    _, world = distributed_info()
    if batch_size % world:
        raise UserError(f"--batch-size {batch_size} is not divisible by the {world} processes: pick a multiple")
    return LoaderConfig(data_dir=data, split="train", batch_size=batch_size // world, shuffle=True, drop_last=True,
                        seed=seed, augment=aug, device=device, subset=subset, res=res, stream=stream)


def eval_loader_config(data: Path, device: torch.device, batch_size: int = 1000, res: int | None = None):
    """The evaluation loader: the whole test split on every rank, in order, no augmentation.

    Resident when it fits memory (``backend="auto"``); variable-size data streams, center-cropped to ``res``.
    """
    from fasttarget.loader import LoaderConfig

    # rank 0 of 1: sharding would pad the split with repeated samples to even out the ranks.
    return LoaderConfig(data_dir=data, split="test", batch_size=batch_size, shuffle=False, drop_last=False,
                        augment="noaug", backend="auto", device=device, rank=0, world_size=1, res=res)


def rng_state() -> dict[str, Any]:
    """Every global RNG's state (the loader's are derived from the seed and need none)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def temporary_path(path: Path) -> Path:
    """Where an atomic write of ``path`` goes first (a kill can leave it behind: see _remove_temporaries)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name, then rename: a kill never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    torch.save(obj, tmp)
    tmp.replace(path)


def write_json(path: Path, obj: Any) -> None:
    """Write a JSON file atomically."""
    tmp = temporary_path(path)
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------- the student run


def default_cache_path(teacher: Path, fingerprint: str) -> Path:
    """Where Strategy C keeps the cache it builds for a teacher: next to it, named by both hashes."""
    file = teacher_file(teacher)
    return file.with_name(f"{file.stem}.cache-{teacher_sha256(teacher)[:12]}-{fingerprint[:12]}.h5")


def _ensure_cache(cfg: TrainConfig, meta, device: torch.device, progress: bool) -> Path:
    """Strategy C's cache file: the given one, or one built from ``cfg.teacher`` (once, by rank 0)."""
    if cfg.cache is not None:
        return cfg.cache
    from fasttarget.cache import CacheBuildConfig, build_cache

    path = default_cache_path(cfg.teacher, meta.fingerprint)
    rank, world = distributed_info()
    if rank == 0 and not path.is_file():
        build_cache(CacheBuildConfig(data=cfg.data, teacher=cfg.teacher, out=path, temperature=cfg.temperature,
                                     device=str(device), progress=progress, res=cfg.res))
    if world > 1:
        dist.barrier()
    return path


def _resolved(cfg: TrainConfig, meta, device: torch.device, compile: bool) -> dict[str, Any]:
    """``config.json``: the config (paths made absolute) plus what it resolved to.

    Strategy C's ``cache``, ``cache_sha256`` and ``teacher_sha256`` are added once its cache is
    open (:func:`_cache_identity`).
    """
    paths = {name: str(getattr(cfg, name).absolute()) if getattr(cfg, name) else None
             for name in ("data", "out", "teacher", "cache")}
    return {
        "format": RUN_FORMAT,
        **cfg.to_json(),
        **paths,
        "num_classes": meta.num_classes,
        "dataset": meta.dataset,
        "dataset_fingerprint": meta.fingerprint,
        "teacher_sha256": teacher_sha256(cfg.teacher) if cfg.teacher else None,
        "cache_sha256": None,
        "world_size": distributed_info()[1],
        "device_resolved": device.type,
        "compile_resolved": compile,
        "torch_version": torch.__version__,
    }


def _cache_identity(cache) -> dict[str, Any]:
    """What Strategy C's open cache adds to ``config.json``: its file, its logits checksum and the
    teacher it records (so a run names its teacher the same with or without ``--teacher``)."""
    return {"cache": str(cache.path.absolute()), "cache_sha256": cache.attrs.get("logits_sha256"),
            "teacher_sha256": cache.attrs.get("teacher_sha256")}


# What a run is, compared when it is resumed: these settings, and its data, teacher and targets by
# content (config.json's dataset_fingerprint, teacher_sha256 and cache_sha256), not by path.
_SETTINGS = tuple(f.name for f in fields(TrainConfig) if f.name not in _WHERE_AND_HOW)


def _check_same_run(saved: dict[str, Any], resolved: dict[str, Any], out: Path, keys: tuple[str, ...]) -> None:
    for key in keys:
        if saved.get(key) != resolved[key]:
            raise UserError(f"{out} holds a run with {key}={_shown(saved.get(key))}, not {_shown(resolved[key])}: "
                            "resume with the same settings and inputs, pass --force to start over, or choose "
                            "another --out")


def _shown(value: Any) -> str:
    """A config value for a one-line message: SHA-256 digests cut to 12 characters."""
    if isinstance(value, str) and len(value) == 64:
        return repr(value[:12] + "…")
    return repr(value)


@contextlib.contextmanager
def claimed(out: Path) -> Iterator[None]:
    """Create the run directory and hold its lock; then no other process writes it, and the
    temporary files of a killed run (``.NAME.PID.tmp``, see temporary_path) are removed.

    Raises:
        UserError: ``out`` is a file or cannot be created; another process holds the lock.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a run directory: choose another --out")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the run directory {out} ({err.strerror}): choose another --out") from None
    try:
        with exclusive_lock(out / LOCK_FILE, f"another fasttarget train is writing {out} (pid {{pid}}): "
                                             "wait for it or choose another --out"):
            for tmp in (*out.glob(".*.tmp"), *(out / CHECKPOINT.parent).glob(".*.tmp")):
                tmp.unlink(missing_ok=True)
            yield
    finally:
        if created:  # a run refused before it wrote anything leaves no empty directory behind
            with contextlib.suppress(OSError):
                out.rmdir()


def _saved_config(path: Path) -> dict[str, Any] | None:
    """The ``config.json`` of the run in a directory, ``None`` without one."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not valid JSON: restore it, or pass --force to start the run over") from None


def _read_metrics(path: Path, up_to_step: int) -> list[str]:
    """The complete lines of ``metrics.jsonl`` up to a step (a killed run may leave a torn last line)."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("step", 0) <= up_to_step:
            kept.append(line)
    return kept


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train a student and write its run directory; returns the contents of ``final.json``.

    Raises:
        UserError: bad data, teacher or cache; ``out`` a file, or written by another process;
            an existing run without ``resume`` or ``force``; a run to resume that was started
            with other settings or inputs, or whose checkpoint is unreadable.
    """
    rank, _ = distributed_info()
    # Only rank 0 writes the run directory, so only it claims it.
    with claimed(cfg.out) if rank == 0 else contextlib.nullcontext():
        return _train(cfg, rank)


@dataclass
class OpenedRun:
    """A run directory checked and its inputs opened (:func:`open_run`), before anything trains.

    Attributes:
        cfg: the run's config.
        meta: its dataset's :class:`~fasttarget.dataset.DatasetMeta`.
        resolved: what ``config.json`` holds (written when the run first starts).
        targets: its target provider.
        final: the ``final.json`` of a run that already ended (resumed: nothing left to do), else ``None``.
    """

    cfg: TrainConfig
    meta: Any
    resolved: dict[str, Any]
    targets: Any
    final: dict[str, Any] | None


def open_run(cfg: TrainConfig, device: torch.device, compiled: bool, rank: int, meta=None) -> OpenedRun:
    """Check ``cfg.out`` against ``cfg`` (fresh, ``--resume`` of the same run, or ``--force``) and
    open its dataset, teacher and cache; the caller holds the directory's lock (:func:`claimed`).

    Args:
        meta: ``cfg.data``'s :class:`~fasttarget.dataset.DatasetMeta` if already loaded.

    Raises:
        UserError: an existing run without ``resume`` or ``force``, one started with other
            settings or inputs, a missing teacher, a bad cache.
    """
    from fasttarget.dataset import DatasetMeta
    from fasttarget.targets import TargetConfig, build_targets

    out = cfg.out
    saved = _saved_config(out / "config.json")
    if saved is not None and not (cfg.resume or cfg.force):
        raise UserError(f"{out} already holds a run: pass --resume to continue it, --force to start it over, "
                        "or choose another --out")
    if cfg.force:
        saved = None
        if rank == 0:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
    if cfg.teacher is not None and not teacher_file(cfg.teacher).is_file():
        raise UserError(f"teacher checkpoint {teacher_file(cfg.teacher)} does not exist: "
                        "train one with `fasttarget teacher`")
    meta = meta if meta is not None else DatasetMeta.load(cfg.data)
    resolved = _resolved(cfg, meta, device, compiled)
    if saved is not None:  # before Strategy C's cache is built: resuming with another teacher fails at once
        _check_same_run(saved, resolved, out, tuple(k for k in _SETTINGS if k != "steps")
                        + ("dataset_fingerprint",) + (("teacher_sha256",) if cfg.teacher else ()))
        if cfg.steps < saved["steps"]:
            raise UserError(f"{out} holds a run of {saved['steps']} steps: --resume may raise --steps to extend it, "
                            f"not lower it to {cfg.steps}; pass --force to start over, or choose another --out")
    cache = _ensure_cache(cfg, meta, device, cfg.progress and rank == 0) if cfg.strategy == "C" else None
    targets = build_targets(
        TargetConfig(strategy=cfg.strategy, temperature=cfg.temperature, teacher=cfg.teacher, cache=cache,
                     compile=compiled),
        meta, device,
    )
    if cfg.strategy == "C":
        resolved.update(_cache_identity(targets.cache))
    final = None
    if saved is not None:
        _check_same_run(saved, resolved, out, ("teacher_sha256", "cache_sha256"))
        if (out / "final.json").is_file():
            final = json.loads((out / "final.json").read_text())
        if cfg.steps > saved["steps"]:
            _extend(out, saved, cfg.steps, rank)
            final = None
    return OpenedRun(cfg, meta, resolved, targets, final)


def _extend(out: Path, saved: dict[str, Any], steps: int, rank: int) -> None:
    """Make the run in ``out`` one of ``steps`` steps (``--resume --steps N`` above its count).

    It continues from its last checkpoint (a finished run's is its final step). The learning rate is
    constant and nothing else depends on the step count (the step's data comes from the seed and the
    step number), so the extended run computes what a run of ``steps`` from the start does; its
    ``metrics.jsonl`` keeps the old last row when that step was no multiple of ``eval_every``.
    ``config.json`` records the new count and the old ones (``extended_from``); ``final.json`` and
    ``final.pt`` go until the run finishes again.
    """
    if rank == 0:
        write_json(out / "config.json", {**saved, "steps": steps,
                                         "extended_from": [*saved.get("extended_from", []), saved["steps"]]})
        for name in ("final.json", FINAL_MODEL):
            (out / name).unlink(missing_ok=True)


def start_run(run: OpenedRun, start_step: int, rank: int) -> dict[str, Any]:
    """Write ``config.json`` (once) and cut ``metrics.jsonl`` back to ``start_step``; returns the
    latest kept evaluation (``{}`` without one)."""
    out = run.cfg.out
    kept = _read_metrics(out / "metrics.jsonl", start_step)
    if rank == 0:
        if not (out / "config.json").is_file():
            write_json(out / "config.json", run.resolved)
        (out / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
    return json.loads(kept[-1]) if kept else {}


def checkpoint_entries(cfg: TrainConfig, step: int, wall_s: float, batches_per_epoch: int,
                       student: dict[str, torch.Tensor], optimizer: dict[str, Any]) -> dict[str, Any]:
    """The contents of a run's ``checkpoints/last.pt`` (a fleet member's too)."""
    return {
        "format": RUN_FORMAT, "step": step, "wall_s": wall_s,
        "loader": dict(zip(("epoch", "batch"), divmod(step, batches_per_epoch))),
        "student": student, "optimizer": optimizer, "rng": rng_state(), "config": cfg.to_json(),
    }


def build_run_student(cfg: TrainConfig, meta) -> nn.Module:
    """The student of a run, initialized from its seed as every run of that seed is."""
    from fasttarget.loader import resolve_res

    torch.manual_seed(cfg.seed)
    model_cfg = ModelConfig(arch=cfg.arch, width=cfg.width, num_classes=meta.num_classes,
                            image_size=resolve_res(meta, cfg.res))
    return build_student(model_cfg, cfg.loss)


def _train(cfg: TrainConfig, rank: int) -> dict[str, Any]:
    from fasttarget.loader import build_loader

    device = resolve_device(cfg.device)
    compiled = cfg.compile if cfg.compile is not None else device.type == "cuda"
    run = open_run(cfg, device, compiled, rank)
    if run.final is not None:
        return run.final
    meta = run.meta
    subset = training_subset(cfg.ipc, cfg.fraction, cfg.subset_seed)
    loader = build_loader(train_loader_config(cfg.data, cfg.batch_size, cfg.aug, cfg.seed, device, subset, cfg.res,
                                              cfg.stream), targets=run.targets)
    test_loader = build_loader(eval_loader_config(cfg.data, device, res=cfg.res))

    student, forward = prepare_model(build_run_student(cfg, meta), device, cfg.compile)
    optimizer = build_optimizer(student, cfg.lr, cfg.weight_decay)

    ckpt_path = cfg.out / CHECKPOINT
    start_step, wall_before = 0, 0.0
    if cfg.resume and ckpt_path.is_file():
        start_step, wall_before = _load_checkpoint(ckpt_path, student, optimizer)
    last = start_run(run, start_step, rank)
    num_classes = meta.num_classes

    def step_fn(batch) -> dict[str, torch.Tensor]:
        with autocast(device):
            logits_g, logits_h = forward(batch.images)
        terms = loss_terms(logits_g, logits_h, batch.targets, hard_targets(batch.labels, num_classes, batch.record),
                           cfg.temperature)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        return terms

    def checkpoint(step: int, wall_s: float) -> None:
        atomic_torch_save(checkpoint_entries(cfg, step, wall_s, len(loader), _unwrap(student).state_dict(),
                                             optimizer.state_dict()), ckpt_path)

    final = _run_steps(cfg, loader, step_fn, lambda: evaluate(student, test_loader, device),
                       checkpoint, start_step, wall_before, device, rank, last)
    if rank == 0:
        save_final_model(cfg, meta, student, final)
        write_json(cfg.out / "final.json", final)
    return final


def save_final_model(cfg: TrainConfig, meta, student: nn.Module, final: dict[str, Any]) -> Path:
    """Write ``final.pt``: the student's φ and classifier ``h`` in the fasttarget model format, so
    :func:`~fasttarget.models.load_classifier` and ``--teacher`` take a trained student."""
    from fasttarget.models import CheckpointInfo, save_classifier, student_classifier

    net = student_classifier(student)
    info = CheckpointInfo(model=net.config, test_accuracy=final["test_acc_h"], dataset_fingerprint=meta.fingerprint,
                          mean=tuple(meta.mean), std=tuple(meta.std), step=final["step"],
                          extra={"run": cfg.to_json(), "test_acc_g": final["test_acc_g"]})
    return save_classifier(cfg.out / FINAL_MODEL, net, info)


def _load_checkpoint(path: Path, student: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
    """Restore ``last.pt`` into the student, optimizer and RNGs; returns ``(step, wall_s)``.

    Raises:
        UserError: the file is unreadable (truncated, corrupted) or does not fit this run.
    """
    fix = CHECKPOINT_FIX
    state = read_checkpoint(path, RUN_FORMAT, fix)
    try:
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        return int(state["step"]), float(state["wall_s"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"checkpoint {path} does not fit this run ({err.__class__.__name__}): {fix}") from err


def _run_steps(cfg: TrainConfig, loader, step_fn: Callable, eval_fn: Callable, checkpoint: Callable,
               start_step: int, wall_before: float, device: torch.device, rank: int,
               last: dict[str, Any]) -> dict[str, Any]:
    """The step loop: train, evaluate, log, checkpoint; ``last`` is the latest kept evaluation."""
    started = time.perf_counter() - wall_before
    throughput = Throughput(device)
    sums, count = torch.zeros(len(TERMS), device=device), 0
    progress = Progress(cfg.steps, start_step, f"train {cfg.strategy}", cfg.progress and rank == 0)
    metrics_path = cfg.out / "metrics.jsonl"
    world = distributed_info()[1]
    acc_h, acc_g = last.get("test_acc_h"), last.get("test_acc_g")
    try:
        for step, batch in iterate_steps(loader, start_step, cfg.steps):
            terms = step_fn(batch)
            sums += torch.stack([terms[k].detach().float() for k in TERMS])
            count += 1
            throughput.images += cfg.batch_size
            if step % BAR_EVERY == 0:
                progress.update(step, terms["loss"].item(), throughput.rate())
            if step % cfg.eval_every and step != cfg.steps:
                continue
            throughput.pause()
            acc_g, acc_h = eval_fn()
            if world > 1:  # each rank summed its share of the batches: log means over the global batch
                dist.all_reduce(sums)
                sums /= world
            means = (sums / count).tolist()
            row = {"step": step, "images_seen": step * cfg.batch_size, "test_acc_h": acc_h, "test_acc_g": acc_g,
                   **dict(zip(TERMS, means)), "img_per_s": throughput.rate(),
                   "wall_s": time.perf_counter() - started}
            progress.evaluated(step, means[2], throughput.rate(), f"{acc_h:.2%}")
            if rank == 0:
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    checkpoint(step, row["wall_s"])
            sums.zero_()
            count = 0
            throughput.reset()
    finally:
        progress.close()
    return {"status": "done", "step": cfg.steps, "test_acc_h": acc_h, "test_acc_g": acc_g,
            "wall_s": time.perf_counter() - started}
