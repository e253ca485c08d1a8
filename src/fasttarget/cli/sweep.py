"""``fasttarget sweep`` and ``fasttarget report``: experiment grids and their paper-style report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fasttarget.sweep import SweepConfig, default_workers, describe_plan, run_sweep


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
    app.command("report")(report)


def sweep(
    config: Path = typer.Argument(..., help="Sweep configuration (TOML), e.g. configs/cpu-small.toml."),
    out: Path = typer.Option(..., "--out", help="Sweep directory (created; an existing one is resumed)."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="Runs trained at once, in processes (default: one per visible GPU, else 1)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (what is done, what would run) and exit."),
) -> None:
    """Train every run of a grid (teachers and caches once, shared); resumable and idempotent."""
    cfg = SweepConfig.from_toml(config)
    if dry_run:
        typer.echo(describe_plan(cfg, out))
        return
    summary = run_sweep(cfg, out, workers=workers or default_workers(cfg), log=typer.echo)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    typer.echo(f"sweep {cfg.name}: {counts}; index {out / 'results.sqlite'}, table {out / 'results.csv'}")
    for run_id, error in summary.failed.items():
        typer.echo(f"  failed {run_id}: {error}", err=True)
    if summary.failed:
        raise typer.Exit(1)


def report(
    directory: Path = typer.Argument(..., help="Sweep directory (holds results.sqlite)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write report.md and the figures (default: DIRECTORY)."),
) -> None:
    """Write report.md (paper tables, claim check) and PNG figures from a sweep's results index."""
    from fasttarget.report import write_report

    written = write_report(directory, out or directory)
    for path in written:
        typer.echo(f"wrote {path}")
