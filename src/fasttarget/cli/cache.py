"""``fasttarget cache build`` / ``fasttarget cache inspect``: the Strategy C logits cache."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fasttarget.choices import DTYPES
from fasttarget.cli.options import dataset_meta
from fasttarget.config import CacheBuildConfig

cache_app = typer.Typer(help="Build and inspect the teacher-logits cache of Strategy C.", no_args_is_help=True,
                        rich_markup_mode=None)  # plain help, as the app (fasttarget.cli)


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")


@cache_app.command("build")
def build(
    data: Path = typer.Option(..., "--data", help="Converted dataset directory; its train split is scored."),
    teacher: str = typer.Option(..., "--teacher", help="Teacher checkpoint (.pt written by fasttarget), or "
                                                      "torchvision:NAME[@SIZE]=FILE / timm:NAME[@SIZE]=FILE."),
    out: Path = typer.Option(..., "--out", help="HDF5 file to write (e.g. targets.h5)."),
    temperature: float = typer.Option(2.0, "--temperature", help="Default temperature recorded in the file."),
    dtype: str = typer.Option("float16", "--dtype", help=f"Logit storage type: {' or '.join(DTYPES)}."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Keep each sample's K largest logits and their "
                                        "classes (FKD's compact form; the rest smoothed evenly). Default: all."),
    res: Optional[int] = typer.Option(None, "--res", help="Resolution of the scored center-crop view "
                                      "(default: the loader's; fixed-size data: its own size)."),
    batch_size: int = typer.Option(512, "--batch-size", help="Images per teacher forward."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    compile: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile the teacher (CUDA only)."),
) -> None:
    """Run the teacher once over every training sample's center-crop view and write its logits (streamed, atomic, resumable)."""
    meta = dataset_meta(data)
    cfg = CacheBuildConfig(
        data=data, teacher=teacher, out=out, temperature=temperature, dtype=dtype, top_k=top_k, res=res,
        batch_size=batch_size, device=device, compile=compile,
    )
    cfg.check_data(meta)
    from fasttarget.cache import build_cache

    report = build_cache(cfg)
    resumed = f", resumed after {report.rows_resumed} rows" if report.rows_resumed else ""
    typer.echo(f"wrote {report.path}: {report.rows} rows{resumed}, {report.images_per_second:.0f} img/s")


@cache_app.command("inspect")
def inspect(
    path: Path = typer.Argument(..., help="The cache file."),
    data: Optional[Path] = typer.Option(None, "--data", help="Also check it was built for this dataset directory."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Also check it was built from this teacher."),
) -> None:
    """Print a cache's attributes and verify its checksum (exit code 2 on a mismatch or a bad checksum)."""
    meta = dataset_meta(data) if data is not None else None
    from fasttarget.cache import TargetCache, teacher_sha256

    cache = TargetCache.open(
        path,
        expected_fingerprint=meta.fingerprint if meta else None,
        num_classes=meta.num_classes if meta else None,
        teacher_sha256=teacher_sha256(teacher) if teacher is not None else None,
        verify=False,  # checked below by hashing, whatever an earlier verification recorded
    )
    typer.echo(f"{path}")
    typer.echo(f"  form: {cache.form.label}, {cache.num_samples} samples x {cache.num_classes} classes")
    for key, value in sorted(cache.attrs.items()):
        typer.echo(f"  {key}: {value}")
    cache.check(use_record=False)
    typer.echo("  checksum: ok")
