"""``fasttarget teacher`` (the teacher ladder) and ``fasttarget train`` (a student run).

Multi-GPU / multi-node: start ``fasttarget train`` under ``torchrun``; this module joins the
process group ``torchrun`` describes in the environment, and the library does the rest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from fasttarget.cli.options import FractionOption, IpcOption, SubsetSeedOption, dataset_meta
from fasttarget.config import FleetConfig, LadderConfig, TrainConfig, parse_members, resolve_res
from fasttarget.errors import UserError

ArchOption = typer.Option("resnet18", "--arch", help="resnet18 (CIFAR variant), resnet50, vit_s, or "
                                                     "torchvision:NAME, timm:NAME, module.path:factory.")
WidthOption = typer.Option(1.0, "--width", help="Multiplier of ResNet-18's base width 64 (0.25 = 16 channels).")
DeviceOption = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available).")
CompileOption = typer.Option(None, "--compile/--no-compile", help="torch.compile the network (default: on CUDA only).")
ProgressOption = typer.Option(True, "--progress/--no-progress",
                              help="Report progress: a bar on a terminal, else one line per evaluation.")


def register(app: typer.Typer) -> None:
    app.command("teacher", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(teacher)
    app.command("train")(train)


def teacher(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="Converted dataset directory."),
    out: Path = typer.Option(..., "--out", help="Directory for teacher-acc*.pt and ladder.json."),
    accuracies: Optional[list[float]] = typer.Option(
        None, "--accuracies", help="Target test accuracies as fractions: --accuracies 0.3 0.5 0.7"),
    aug: str = typer.Option("stdaug", "--aug", help="Augmentation of the teacher's training views."),
    arch: str = ArchOption,
    width: float = WidthOption,
    max_steps: int = typer.Option(20_000, "--max-steps", help="Give up on the remaining targets after this many steps."),
    eval_every: int = typer.Option(100, "--eval-every", help="The most steps between two evaluations."),
    tolerance: float = typer.Option(0.01, "--tolerance", help="How far above a target a saved teacher may land (evaluations are scheduled from the learning curve to cross by about half of it)."),
    random_init: bool = typer.Option(False, "--random-init", help="Also save the untrained network (the ~10% teacher)."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialization, data order and augmentation."),
    batch_size: int = typer.Option(128, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr"),
    weight_decay: float = typer.Option(0.01, "--weight-decay"),
    ipc: IpcOption = None,
    fraction: FractionOption = None,
    subset_seed: SubsetSeedOption = 0,
    device: Optional[str] = DeviceOption,
    compile: Optional[bool] = CompileOption,
    force: bool = typer.Option(False, "--force", help="Retrain a ladder already in --out."),
    progress: bool = ProgressOption,
    eval_subset: Optional[int] = typer.Option(
        None, "--eval-subset", help="Evaluate the schedule on about N test images (seeded, per class); "
        "each saved teacher is then measured on the whole test split."),
) -> None:
    """Train teachers with one-hot CE and save the first checkpoint reaching each target accuracy."""
    targets = list(accuracies or [])
    # click options take one value each; the rest of `--accuracies 0.3 0.5 0.7` arrives as extra args.
    for extra in ctx.args:
        try:
            targets.append(float(extra))
        except ValueError:
            raise UserError(f"unexpected argument {extra!r}: see `fasttarget teacher --help`") from None
    dataset_meta(data)
    cfg = LadderConfig(
        data=data, out=out, accuracies=tuple(targets), aug=aug, arch=arch, width=width, max_steps=max_steps,
        eval_every=eval_every, tolerance=tolerance, seed=seed, random_init=random_init,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, ipc=ipc, fraction=fraction,
        subset_seed=subset_seed, device=device, compile=compile, force=force, progress=progress,
        eval_subset=eval_subset,
    )
    from fasttarget.teacher import train_ladder

    result = train_ladder(cfg)
    for rung in result.rungs:
        target = "random" if rung.target is None else f"{rung.target * 100:g}%"
        on_subset = "" if rung.subset_accuracy is None else f" ({rung.subset_accuracy:.2%} on the evaluation subset)"
        typer.echo(f"target {target:>6}: {rung.path}  measured {rung.accuracy:.2%}{on_subset} at step {rung.step}")
    if result.missed:
        missed = ", ".join(f"{t * 100:g}%" for t in result.missed)
        typer.echo(f"missed {missed} within {result.steps} steps (best {result.best_accuracy:.2%}): "
                   "raise --max-steps or --width")


def train(
    data: Path = typer.Option(..., "--data", help="Converted dataset directory."),
    strategy: Optional[str] = typer.Option(
        None, "--strategy", help="A (one-hot), B (online teacher) or C (cached teacher); or use --member."),
    out: Path = typer.Option(..., "--out", help="Run directory (config.json, metrics.jsonl, checkpoints, final.json)."),
    teacher: Optional[str] = typer.Option(
        None, "--teacher", help="Teacher checkpoint, or torchvision:NAME[@SIZE]=FILE / timm:NAME[@SIZE]=FILE "
                                "(a state dict) (B; C builds its cache from it)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Strategy C's logits cache (fasttarget cache build)."),
    aug: str = typer.Option("stdaug", "--aug", help="Student augmentation, e.g. stdaug or stdaug+mixup."),
    steps: int = typer.Option(1000, "--steps", help="Optimizer steps."),
    eval_every: int = typer.Option(100, "--eval-every", help="Steps between test evaluations."),
    checkpoint_every: Optional[int] = typer.Option(
        None, "--checkpoint-every", help="Steps between checkpoints, a multiple of --eval-every (default: equal)."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialization, data order and augmentation."),
    ipc: IpcOption = None,
    fraction: FractionOption = None,
    subset_seed: SubsetSeedOption = 0,
    arch: str = typer.Option(
        "resnet18", "--student", "--arch",
        help="resnet18 (CIFAR variant), resnet50, vit_s, or torchvision:NAME, timm:NAME, module.path:factory "
             "(random init; see docs/loader.md)."),
    width: float = WidthOption,
    loss: str = typer.Option("separation", "--loss", help="separation (the paper's) or coupled (plain KD)."),
    temperature: float = typer.Option(2.0, "--temperature", help="Soft-target temperature T."),
    batch_size: int = typer.Option(128, "--batch-size", help="Global batch (split across torchrun processes)."),
    stream: bool = typer.Option(False, "--stream", help="Cut batches across epoch boundaries, so a subset smaller "
                                "than --batch-size trains with the full batch (as the paper's IPC 10)."),
    lr: float = typer.Option(1e-3, "--lr"),
    weight_decay: float = typer.Option(0.01, "--weight-decay"),
    res: Optional[int] = typer.Option(
        None, "--res", help="Image side to train at: variable-size data is cropped to it as it is decoded "
                            "(default 224); fixed-size data keeps its own size."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Start over: delete the run already in --out first."),
    device: Optional[str] = DeviceOption,
    compile: Optional[bool] = CompileOption,
    progress: bool = ProgressOption,
    member: Optional[list[str]] = typer.Option(
        None, "--member", help="Train a fleet instead: one student per --member [NAME=]A|B=TEACHER|C=CACHE.h5, "
                               "each writing --out/NAME as its solo run would (repeat the option)."),
) -> None:
    """Train a student on Strategy A, B or C targets and write its run directory (or a fleet: --member)."""
    if member and (strategy or teacher or cache):
        raise UserError("--member gives each fleet member its strategy and file: drop --strategy/--teacher/--cache")
    if not member and strategy is None:
        raise UserError("pass --strategy A|B|C (one run) or --member … (a fleet): see `fasttarget train --help`")
    resolve_res(dataset_meta(data), res)  # validates --res against the data's image size
    cfg = TrainConfig(
        data=data, out=out, strategy=(strategy or "A").upper(), teacher=teacher, cache=cache, aug=aug, steps=steps,
        eval_every=eval_every, checkpoint_every=checkpoint_every, seed=seed, ipc=ipc, fraction=fraction,
        subset_seed=subset_seed, arch=arch, width=width, loss=loss, temperature=temperature,
        batch_size=batch_size, stream=stream, lr=lr, weight_decay=weight_decay, res=res, device=device, compile=compile,
        resume=resume, force=force, progress=progress,
    )
    if member:
        _train_fleet(FleetConfig(cfg, parse_members(member)))
        return
    from fasttarget.train import distributed_info
    from fasttarget.train import train as run_train

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        _join_torchrun(device)
    try:
        final = run_train(cfg)
        rank = distributed_info()[0]
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank == 0:
        typer.echo(f"{out}: step {final['step']}  test top-1 h {final['test_acc_h']:.2%}  "
                   f"g {final['test_acc_g']:.2%}  ({final['wall_s']:.0f} s)")


def _train_fleet(cfg: FleetConfig) -> None:
    from fasttarget.fleet import train_fleet

    finals = train_fleet(cfg)
    for name, final in finals.items():
        accuracy = (f"test top-1 h {final['test_acc_h']:.2%}  g {final['test_acc_g']:.2%}"
                    if final["test_acc_h"] is not None else "no evaluation")
        typer.echo(f"{cfg.base.out / name}: {final['status']} at step {final['step']}  {accuracy}  "
                   f"({final['wall_s']:.0f} s)")


def _join_torchrun(device: str | None) -> None:
    """Join the process group ``torchrun`` describes, each process on its own GPU (``LOCAL_RANK``)."""
    import torch

    from fasttarget.train import init_distributed

    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    init_distributed(device)
