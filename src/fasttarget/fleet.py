"""Fleet training: N students of one shape on one loader pass, each writing its own run directory.

``fasttarget train --member A --member B=teachers/t30.pt --member C=caches/t30.h5 --out DIR``
trains the members side by side: one loader pass, one gather and one augmentation per batch,
the students fused into one network (:class:`fasttarget.fused.FusedStudent`), the B members'
teachers too (:func:`fuse_teachers`), and for each
member its own targets, loss terms, AdamW state, evaluation, checkpoints and metrics. Member
``name`` writes ``DIR/<name>/`` exactly as ``fasttarget train --strategy … --out DIR/<name>``
would (``config.json`` is that solo run's, ``metrics.jsonl``, ``checkpoints/last.pt``,
``final.json``), so ``report`` and every other tool read it unchanged, and ``DIR/fleet.json``
lists the members in order.

Members share everything but their targets: data, subset, seed (so initialization, data order
and augmentation parameters, as paired solo runs of one seed do), architecture, width, loss,
temperature, batch size, steps and optimizer settings. A member trains like its solo run up to
float32 summation order (see ``docs/design.md``, "Fused students").

A member whose loss turns non-finite is stopped by :class:`~fasttarget.fused.FleetStep` on the
device; at the next evaluation its ``final.json`` says ``"status": "failed"`` with the step and
the reason, and the others train on untouched. Every evaluation reads the members' state once
(the evaluation is a host sync anyway), so no step waits on the host.

Resume (``--resume``) after a kill continues every member from its ``checkpoints/last.pt``; the
members' checkpoints of one step are all written before any of them replaces the previous one,
so a kill leaves them at one step (see :func:`_save_checkpoints`).

Example:
    >>> parse_members(["A", "t30=B=teachers/t30.pt"], check_files=False)[1]
    Member(name='t30', strategy='B', teacher=PosixPath('teachers/t30.pt'), cache=None, dir=None)
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fasttarget.config import FleetConfig, Member, parse_members  # noqa: F401 (re-exported)
from fasttarget.errors import UserError
from fasttarget.losses import hard_targets
from fasttarget.models import place, read_checkpoint
from fasttarget.progress import Progress
from fasttarget.train import (
    BAR_EVERY, CHECKPOINT, CHECKPOINT_FIX, RUN_FORMAT, TERMS, Throughput, autocast,
    build_optimizer, build_run_student, checkpoint_entries, claimed, distributed_info, eval_loader_config,
    iterate_steps, open_run, resolve_device, save_final_model, set_rng_state, start_run, temporary_path,
    train_loader_config, training_subset, write_json,
)

FLEET_FORMAT = "fasttarget-fleet/1"
FLEET_FILE = "fleet.json"


@dataclass(frozen=True)
class FusedTeachers:
    """The teachers of some Strategy B members as one network: ``teacher`` (a
    :class:`~fasttarget.targets.TeacherModel` over a :class:`~fasttarget.fused.FusedClassifier`)
    scores a view for all of them at once, ``[len(members), B, K]``."""

    members: tuple[int, ...]
    teacher: Any
    temperature: float


def fuse_teachers(runs: Sequence[Any], meta, device: torch.device, compiled: bool) -> list[FusedTeachers]:
    """The B members' teachers fused, one network per architecture and normalization shared by two or more.

    A member whose teacher shares neither with another keeps its own provider. Each fused
    teacher scores exactly what its solo teachers would (``tests/test_fleet.py``).
    """
    from fasttarget.fused import FusedClassifier
    from fasttarget.models import load_classifier
    from fasttarget.targets import TeacherModel

    groups: dict[tuple, list[tuple[int, Any]]] = {}
    for i, run in enumerate(runs):
        if run.cfg.strategy == "B" and run.final is None:
            net, info = load_classifier(run.cfg.teacher, device)
            groups.setdefault((info.model, info.mean, info.std), []).append((i, net))
    return [FusedTeachers(tuple(i for i, _ in group),
                          TeacherModel(FusedClassifier([net for _, net in group]), meta.mean, meta.std, mean, std,
                                       compile=compiled),
                          runs[group[0][0]].cfg.temperature)
            for (_, mean, std), group in groups.items() if len(group) > 1]


class FleetTargets:
    """Every member's targets of one batch, ``[N, B, K]``: each member's provider on the shared view,
    except members of ``teachers``, which their fused teacher scores in one forward pass."""

    def __init__(self, providers: Sequence[Any], teachers: Sequence[FusedTeachers] = ()):
        self.providers = list(providers)
        self.teachers = list(teachers)
        self.num_classes = self.providers[0].num_classes

    def __call__(self, batch) -> torch.Tensor:
        fused: dict[int, torch.Tensor] = {}
        for group in self.teachers:
            fused.update(zip(group.members, torch.softmax(group.teacher(batch.images) / group.temperature, dim=2)))
        return torch.stack([fused[i] if i in fused else provider(batch) for i, provider in enumerate(self.providers)])


@torch.no_grad()
def evaluate_fleet(net: torch.nn.Module, loader, device: torch.device) -> tuple[list[float], list[float]]:
    """Each member's top-1 accuracy of ``g`` and of ``h`` over ``loader``: ``(acc_g [N], acc_h [N])``."""
    was_training = net.training
    net.eval()
    correct, total = None, 0
    for batch in loader:
        with autocast(device):
            logits_g, logits_h = net(batch.images)
        hits = torch.stack([(logits.argmax(2) == batch.labels).sum(1) for logits in (logits_g, logits_h)])
        correct = hits if correct is None else correct + hits
        total += batch.labels.numel()
    net.train(was_training)
    if correct is None:
        raise UserError("the test split is empty: reconvert the dataset with a test split")
    acc_g, acc_h = (correct.double() / total).tolist()
    return acc_g, acc_h


def train_fleet(cfg: FleetConfig) -> dict[str, dict[str, Any]]:
    """Train the fleet and write its members' run directories; returns each member's ``final.json``.

    Raises:
        UserError: as :func:`fasttarget.train.train`, for any member; a fleet started under
            ``torchrun``; a fleet to resume with other members, or whose checkpoints disagree.
    """
    if distributed_info()[1] > 1:
        raise UserError("fleets train in one process: start `fasttarget train --member …` without torchrun")
    with contextlib.ExitStack() as stack:
        stack.enter_context(claimed(cfg.base.out))
        for member in cfg.members:
            stack.enter_context(claimed(cfg.member_config(member).out))
        return _train_fleet(cfg)


def _check_fleet_file(cfg: FleetConfig) -> None:
    """A fleet resumes with the members it started with, in their order (they index the fused state)."""
    path = cfg.base.out / FLEET_FILE
    names = [m.name for m in cfg.members]
    if cfg.base.resume and path.is_file():
        saved = json.loads(path.read_text()).get("members") or []
        if saved != names:
            raise UserError(f"{cfg.base.out} holds a fleet of members {', '.join(saved)}, not {', '.join(names)}: "
                            "resume with the same --member options in the same order, or pass --force")


def _train_fleet(cfg: FleetConfig) -> dict[str, dict[str, Any]]:
    from fasttarget.dataset import DatasetMeta
    from fasttarget.fused import FleetStep, FusedStudent
    from fasttarget.loader import build_loader

    base, n = cfg.base, len(cfg.members)
    _check_fleet_file(cfg)
    device = resolve_device(base.device)
    compiled = base.compile if base.compile is not None else device.type == "cuda"
    meta = DatasetMeta.load(base.data)
    runs = [open_run(cfg.member_config(m), device, compiled, 0, meta) for m in cfg.members]
    if all(run.final is not None for run in runs):
        return {m.name: run.final for m, run in zip(cfg.members, runs)}
    write_json(base.out / FLEET_FILE, {"format": FLEET_FORMAT, "members": [m.name for m in cfg.members]})

    students = [build_run_student(run.cfg, meta) for run in runs]
    # A solo run's memory format (and CPU width check): on CPU the members run the solo kernels,
    # which must be the solo run's to train as it does, and stay contiguous where channels_last crashes.
    net = place(FusedStudent(students), device, students[0].config.image_size, like=students[0])
    del students
    forward = torch.compile(net) if compiled else net
    optimizer = build_optimizer(net, base.lr, base.weight_decay)
    step = FleetStep(net, optimizer, base.temperature, forward=forward, autocast=lambda: autocast(device))

    live = [i for i, run in enumerate(runs) if run.final is None]
    for i in set(range(n)) - set(live):  # ended (failed) before: kept stopped
        step.stop(i)
    start_step, wall_before = _resume(cfg, runs, live, net, optimizer) if base.resume else (0, 0.0)
    last = {i: start_run(runs[i], start_step, 0) for i in live}

    subset = training_subset(base.ipc, base.fraction, base.subset_seed)
    loader = build_loader(train_loader_config(base.data, base.batch_size, base.aug, base.seed, device, subset, base.res,
                                              base.stream),
                          targets=FleetTargets([run.targets for run in runs],
                                               fuse_teachers(runs, meta, device, compiled)))
    test_loader = build_loader(eval_loader_config(base.data, device, res=base.res))

    started = time.perf_counter() - wall_before
    throughput = Throughput(device)
    sums, count = torch.zeros(n, len(TERMS), device=device), 0
    failed_at = torch.zeros(n, dtype=torch.long, device=device)
    acc = {i: (last[i].get("test_acc_g"), last[i].get("test_acc_h")) for i in live}
    progress = Progress(base.steps, start_step, f"fleet of {n}", base.progress)
    try:
        for step_no, batch in iterate_steps(loader, start_step, base.steps):
            was_active = step.active.clone()
            terms = step(batch.images, batch.targets, hard_targets(batch.labels, meta.num_classes, batch.record))
            failed_at = torch.where(was_active & ~step.active, step_no, failed_at)
            sums += torch.stack([terms[k].float() for k in TERMS], 1)
            count += 1
            throughput.images += base.batch_size
            if step_no % BAR_EVERY == 0:
                progress.update(step_no, _live_mean(terms["loss"], step.active), throughput.rate())
            if step_no % base.eval_every and step_no != base.steps:
                continue
            throughput.pause()
            active, failed_steps = step.active.tolist(), failed_at.tolist()
            acc_g, acc_h = evaluate_fleet(net, test_loader, device)
            means = (sums / count).tolist()
            wall_s = time.perf_counter() - started
            for i in list(live):
                if not active[i]:
                    live.remove(i)
                    write_json(runs[i].cfg.out / "final.json", {
                        "status": "failed", "step": failed_steps[i], "test_acc_h": acc[i][1],
                        "test_acc_g": acc[i][0], "wall_s": wall_s,
                        "error": f"the loss became non-finite at step {failed_steps[i]}: the member was stopped "
                                 "there (the rest of the fleet trained on)"})
                    continue
                acc[i] = (acc_g[i], acc_h[i])
                row = {"step": step_no, "images_seen": step_no * base.batch_size, "test_acc_h": acc_h[i],
                       "test_acc_g": acc_g[i], **dict(zip(TERMS, means[i])), "img_per_s": throughput.rate(),
                       "wall_s": wall_s}
                with open(runs[i].cfg.out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            if live and (step_no % base.checkpoint_every == 0 or step_no == base.steps):
                _save_checkpoints(runs, live, net, optimizer, step_no, wall_s, len(loader))
            progress.evaluated(step_no, _live_mean(terms["loss"], step.active), throughput.rate(),
                               " ".join(f"{acc_h[i]:.0%}" for i in live) or "-")
            if not live:
                break
            sums.zero_()
            count = 0
            throughput.reset()
    finally:
        progress.close()
    wall_s = time.perf_counter() - started
    for i in live:
        final = {"status": "done", "step": base.steps, "test_acc_h": acc[i][1], "test_acc_g": acc[i][0],
                 "wall_s": wall_s}
        member = build_run_student(runs[i].cfg, meta)
        member.load_state_dict(net.member_state_dict(i))
        save_final_model(runs[i].cfg, meta, member, final)  # final.pt, as a solo run's
        write_json(runs[i].cfg.out / "final.json", final)
    return {m.name: json.loads((run.cfg.out / "final.json").read_text()) for m, run in zip(cfg.members, runs)}


def _live_mean(loss: torch.Tensor, active: torch.Tensor) -> float:
    """The mean loss of the members still training (for the progress bar; a host sync)."""
    return torch.where(active, loss, torch.nan).nanmean().item()


def _save_checkpoints(runs, live: list[int], net, optimizer, step: int, wall_s: float, batches: int) -> None:
    """Each live member's ``last.pt``, exactly a solo run's entries.

    All are written under temporary names before the first replaces its ``last.pt``: a kill
    while saving leaves every member at the previous checkpoint, and one between the renames
    (microseconds) is refused on resume (:func:`_resume`).
    """
    state = optimizer.state_dict()
    written = []
    for i in live:
        path = runs[i].cfg.out / CHECKPOINT
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(path)
        torch.save(checkpoint_entries(runs[i].cfg, step, wall_s, batches, net.member_state_dict(i),
                                      net.member_optimizer_state(state, i)), tmp)
        written.append((tmp, path))
    for tmp, path in written:
        tmp.replace(path)


def _resume(cfg: FleetConfig, runs, live: list[int], net, optimizer) -> tuple[int, float]:
    """Load the live members' checkpoints into the fleet; returns ``(step, wall_s)`` (0 without any).

    Stopped members take a live member's optimizer state as a stand-in: they are never stepped
    nor written again.

    Raises:
        UserError: a checkpoint that is unreadable or does not fit, or members at different steps.
    """
    paths = {i: runs[i].cfg.out / CHECKPOINT for i in live}
    states = {i: read_checkpoint(path, RUN_FORMAT, CHECKPOINT_FIX) for i, path in paths.items() if path.is_file()}
    if not states:
        return 0, 0.0
    steps = {i: int(states[i]["step"]) if i in states else 0 for i in live}
    if len(set(steps.values())) > 1:
        shown = ", ".join(f"{cfg.members[i].name} at step {s}" for i, s in steps.items())
        raise UserError(f"the checkpoints of the fleet in {cfg.base.out} are at different steps ({shown}): "
                        "pass --force to start the fleet over")
    stand_in = states[live[0]]["optimizer"]
    try:
        for i, state in states.items():
            net.load_member_state_dict(i, state["student"])
        optimizer.load_state_dict(net.fuse_optimizer_states(
            [states[i]["optimizer"] if i in states else stand_in for i in range(len(runs))]))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"the checkpoints in {cfg.base.out} do not fit this fleet ({err.__class__.__name__}): "
                        f"{CHECKPOINT_FIX}") from err
    first = states[live[0]]
    set_rng_state(first["rng"])
    return int(first["step"]), float(first["wall_s"])
