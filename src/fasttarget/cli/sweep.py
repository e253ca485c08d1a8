"""``fasttarget sweep`` and ``fasttarget report``: experiment grids and their paper-style report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from fasttarget.choices import SWEEP_BACKENDS


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
    app.command("report")(report)


def sweep(
    config: Path = typer.Argument(..., help="Sweep configuration (TOML), e.g. configs/smoke.toml."),
    out: Path = typer.Option(..., "--out", help="Sweep directory (created; an existing one is resumed). "
                             "On a cluster: storage every worker sees."),
    backend: str = typer.Option("local", "--backend", help=f"Where units run: {', '.join(SWEEP_BACKENDS)}."),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="local: worker processes (default: one per visible GPU, else CPU cores / "
        "[resources.run] num_cpus; 1 runs units in this process). slurm: most jobs at once."),
    retries: int = typer.Option(1, "--retries", help="Attempts after the first before a failing unit is recorded failed."),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="Ray cluster to join (default: `auto` if one is running, else a local Ray)."),
    slurm_partition: Optional[str] = typer.Option(None, "--slurm-partition", help="SLURM partition of every job."),
    slurm_account: Optional[str] = typer.Option(None, "--slurm-account", help="SLURM account charged."),
    slurm_gpus_per_task: Optional[int] = typer.Option(
        None, "--slurm-gpus-per-task", help="GPUs of each GPU unit's job (default: its num_gpus rounded up)."),
    slurm_time: Optional[str] = typer.Option(
        None, "--slurm-time", help="Time limit of each job: minutes, H:MM:SS or D-HH:MM:SS (default 4:00:00)."),
    slurm_cluster: Optional[str] = typer.Option(
        None, "--slurm-cluster", help="slurm (default), or local: submitit's local executor, jobs as processes here."),
    max_fleet: Optional[int] = typer.Option(
        None, "--max-fleet", help="Most runs trained together as one fleet (runs sharing data, subset, seed, "
        "student aug, steps and batch; one loader pass, fused students). 1 trains each run alone. Default: "
        "from free GPU memory on CUDA (at most 32); 1 on CPU, where a fleet trains bit for bit as its runs alone but no faster."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (what is done, what would run) and exit."),
) -> None:
    """Train every run of a grid (teachers and caches once, shared); resumable and idempotent."""
    from fasttarget.errors import UserError
    from fasttarget.sweep import BackendConfig, SlurmSettings, SweepConfig, describe_plan

    if retries < 0:
        raise UserError(f"--retries must be ≥ 0, got {retries}")
    if max_fleet is not None and max_fleet < 1:
        raise UserError(f"--max-fleet must be ≥ 1 (1 trains each run alone), got {max_fleet}")
    slurm_given = {k: v for k, v in dict(partition=slurm_partition, account=slurm_account,
                                         gpus_per_task=slurm_gpus_per_task, time=slurm_time,
                                         cluster=slurm_cluster).items() if v is not None}
    slurm = SlurmSettings(**slurm_given) if slurm_given or backend == "slurm" else None
    backend_cfg = BackendConfig(kind=backend, workers=workers, ray_address=ray_address, slurm=slurm)
    cfg = SweepConfig.from_toml(config)
    if dry_run:
        typer.echo(describe_plan(cfg, out, max_fleet, workers=workers))
        return
    summary = _run_with_bar(cfg, out, backend_cfg, retries, max_fleet)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    typer.echo(f"sweep {cfg.name}: {counts}; index {out / 'results.sqlite'}, table {out / 'results.csv'}")
    for run_id, error in summary.failed.items():
        typer.echo(f"  failed {run_id}: {error}", err=True)
    if summary.failed:
        raise typer.Exit(1)


def _run_with_bar(cfg: SweepConfig, out: Path, backend: BackendConfig, retries: int, max_fleet: int | None):
    """Run the sweep with one line per unit on stdout and an overall bar (units, ETA) on stderr."""
    from tqdm import tqdm

    from fasttarget.sweep import run_sweep

    bar = tqdm(total=0, unit="unit", desc="sweep", file=sys.stderr, disable=None, dynamic_ncols=True)

    def log(line: str) -> None:
        tqdm.write(line, file=sys.stdout)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        return run_sweep(cfg, out, backend=backend, retries=retries, log=log, progress=progress,
                         max_fleet=max_fleet)
    finally:
        bar.close()


def report(
    directory: Path = typer.Argument(..., help="Sweep directory (holds results.sqlite)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write report.md and the figures (default: DIRECTORY)."),
) -> None:
    """Write report.md (paper tables, claim check) and PNG figures from a sweep's results index."""
    from fasttarget.report import write_report

    written = write_report(directory, out or directory)
    for path in written:
        typer.echo(f"wrote {path}")
