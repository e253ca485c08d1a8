"""``fasttarget bench``: run the benchmark suites and print (or save) one table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from fasttarget.choices import SUITES


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


def bench(
    suites: Optional[list[str]] = typer.Argument(
        None, help=f"Suites to run: {', '.join(SUITES)} or all (default all).", show_default=False
    ),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Converted dataset directory (train.beton, meta.json); default: the bundled CIFAR-10 sample."
    ),
    source: Optional[Path] = typer.Option(
        None, "--source", help="CIFAR-10 source the convert suite converts; default: the bundled sample."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    repeats: int = typer.Option(5, "--repeats", help="Timed repetitions per measurement (median, min–max)."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed calls before timing (JIT, compile, caches)."),
    batches: int = typer.Option(8, "--batches", help="Training steps per timed call in the step suite."),
    width: float = typer.Option(0.125, "--width", help="ResNet-18 width of the step suite's student and teacher."),
    imagenet: Optional[Path] = typer.Option(
        None, "--imagenet", help="ImageNet train-folder layout the imagenet suite repeats into its bench beton."
    ),
    scratch: Optional[Path] = typer.Option(
        None, "--scratch", help="Keep the imagenet suite's bench data here between runs (default: a temporary directory)."
    ),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the table as JSON to this file."),
) -> None:
    """Measure fasttarget against the code users would write instead, in the same run."""
    from fasttarget.bench import BenchConfig, format_table, machine_info, run_benchmarks

    cfg = BenchConfig(
        suites=tuple(suites or ("all",)), data=data, source=source, device=device, repeats=repeats,
        warmup=warmup, batches=batches, width=width, imagenet=imagenet, scratch=scratch,
    )
    rows, notes = run_benchmarks(cfg, progress=lambda msg: typer.echo(msg, err=True))
    machine = machine_info()
    typer.echo(format_table(rows, machine))
    for note in notes:
        typer.echo(f"note: {note}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": machine, "rows": [row.to_dict() for row in rows]}
        json_out.write_text(json.dumps(payload, indent=2) + "\n")
