"""``fasttarget convert`` / ``inspect`` / ``demo``: getting data into FFCV betons."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fasttarget.cli.options import FractionOption, IpcOption, SubsetSeedOption, subset_config
from fasttarget.choices import DATASETS


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
    app.command("inspect")(inspect)
    app.command("demo")(demo)


def convert(
    dataset: str = typer.Argument(..., help=f"One of: {', '.join(DATASETS)}."),
    source: Path = typer.Option(..., "--source", help="Folder with the data (the layout folder or its parent)."),
    out: Path = typer.Option(..., "--out", help="Directory to write train.beton, test.beton, meta.json into."),
    force: bool = typer.Option(False, "--force", help="Overwrite a converted dataset already in --out."),
    download: bool = typer.Option(False, "--download", help="Fetch cifar10/cifar100 into --source first (online)."),
    jpeg_quality: int = typer.Option(90, "--jpeg-quality", help="JPEG quality of the images stored as JPEG."),
    max_side: Optional[int] = typer.Option(
        None, "--max-side", help="Downscale images whose longer side exceeds this (default: 500 for imagenet, "
                                 "no cap otherwise; 0 = no cap). Images keep their own size otherwise."),
    compress_probability: Optional[float] = typer.Option(
        None, "--compress-probability", help="Store this share of the images as JPEG, the rest raw (FFCV's "
                                             "'proportion' mode; default: raw up to 64 px, JPEG above)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable image files (counted in meta.json)."),
    workers: int = typer.Option(0, "--workers", help="Encoding processes (0 = every core)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    val_fraction: Optional[float] = typer.Option(
        None, "--val-fraction", help="Hold out this share of every class as the test split (class folders without val/)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the images --val-fraction holds out."),
) -> None:
    """Convert a dataset into FFCV betons (atomic: an interrupted run leaves no finished-looking file)."""
    from fasttarget.convert import ConvertConfig
    from fasttarget.convert import convert as run_convert
    from fasttarget.dataset import describe

    meta = run_convert(ConvertConfig(
        dataset=dataset, source=source, out=out, force=force, download=download, jpeg_quality=jpeg_quality,
        max_side=max_side, compress_probability=compress_probability, skip_bad=skip_bad, num_workers=workers, progress=progress, val_fraction=val_fraction,
        seed=seed,
    ))
    typer.echo(describe(meta))
    typer.echo(f"wrote {out}")


def inspect(
    directory: Path = typer.Argument(..., help="A directory written by `fasttarget convert`."),
    ipc: IpcOption = None,
    fraction: FractionOption = None,
    subset_seed: SubsetSeedOption = 0,
    quick: bool = typer.Option(False, "--quick", help="Check the structure only, not each beton's SHA-256."),
) -> None:
    """Print a converted dataset's summary and check each beton against meta.json (exit 2 on mismatch):
    size, fields, rows, labels, and the SHA-256 recorded at convert time (skipped with --quick)."""
    from fasttarget.dataset import check_dataset, describe

    subset = subset_config(ipc, fraction, subset_seed)
    meta = check_dataset(directory, checksum=not quick)
    typer.echo(describe(meta))
    for info in meta.splits.values():
        if info.sha256 is None:
            state = "no checksum recorded (converted by an older fasttarget; reconvert with --force to record one)"
        else:
            state = "sha256 not checked (--quick)" if quick else "sha256 verified"
        typer.echo(f"{'checksum':<11} {info.file}: {state}")
    if not subset.is_full:
        import numpy as np

        from fasttarget.dataset import read_labels
        from fasttarget.subsets import select_subset

        labels = read_labels(directory, "train")
        counts = np.bincount(labels[select_subset(labels, subset)], minlength=meta.num_classes)
        typer.echo(f"subset      {subset.describe()}: {counts.sum()} train samples "
                   f"({counts.min()}..{counts.max()} per class)")
    typer.echo(f"OK: {directory}")


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for everything the demo writes."),
    source: Optional[Path] = typer.Option(
        None, "--source", help="CIFAR-10 folder to use instead of the bundled sample (e.g. the full data)."),
    force: bool = typer.Option(False, "--force", help="Redo steps whose output already exists."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    until: Optional[str] = typer.Option(
        None, "--until", help="Stop after this step: convert, inspect, teacher, cache, train or table."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
) -> None:
    """Run the end-to-end demo offline on the bundled CIFAR-10 sample (or --source):
    convert -> inspect -> teacher ladder -> cache -> students A, B, C -> table."""
    from fasttarget.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=out, source=source, force=force, progress=progress, until=until, device=device),
             echo=typer.echo)
