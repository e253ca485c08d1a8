"""The end-to-end demo behind ``fasttarget demo``: named steps run in order over one state.

Steps today: ``convert`` the data (the CIFAR-10 sample shipped in ``data/cifar10-sample``
by default, or the full data given as ``source``) into ``out/data``, then ``inspect`` it.
Later stages append their own steps to :data:`STEPS`; each reads what earlier steps left
in :class:`DemoState` and adds its own results.

Example:
    >>> import tempfile, pathlib
    >>> state = run_demo(DemoConfig(out=pathlib.Path(tempfile.mkdtemp()), progress=False), echo=lambda s: None)
    >>> state.meta.count("train"), state.meta.count("test")
    (5000, 1000)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fasttarget.convert import ConvertConfig, convert, fingerprint
from fasttarget.dataset import META_FILE, DatasetMeta, check_dataset, describe
from fasttarget.errors import UserError
from fasttarget.sources import open_source

# The sample ships with the repository (``scripts/make_sample.py`` made it).
SAMPLE_SOURCE = Path(__file__).resolve().parents[2] / "data" / "cifar10-sample" / "cifar-10-batches-bin"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs on.

    Args:
        out: folder for everything the demo writes (the dataset lands in ``out/data``).
        source: CIFAR-10 folder to use instead of the bundled sample (e.g. the full data).
        force: redo every step even when its output is already there.
        progress: show progress bars.
    """

    out: Path = Path("runs/demo")
    source: Path | None = None
    force: bool = False
    progress: bool = True

    @property
    def data_source(self) -> Path:
        return self.source if self.source is not None else SAMPLE_SOURCE


@dataclass
class DemoState:
    """What the steps have produced so far."""

    data_dir: Path | None = None
    meta: DatasetMeta | None = None
    results: dict[str, object] = field(default_factory=dict)


Echo = Callable[[str], None]
DemoStep = Callable[[DemoConfig, DemoState, Echo], None]


def convert_step(cfg: DemoConfig, state: DemoState, echo: Echo) -> None:
    """Convert the demo's CIFAR-10 into ``out/data``, unless the same source is already converted there."""
    data_dir = cfg.out / "data"
    source = cfg.data_source
    if not source.is_dir():
        raise UserError(f"demo data not found at {source}: pass --source with a CIFAR-10 folder")
    if (data_dir / META_FILE).is_file() and not cfg.force:
        old = DatasetMeta.load(data_dir)
        found = open_source("cifar10", source)
        if old.fingerprint == fingerprint({"train": found.train, "test": found.test}):
            echo(f"convert: {data_dir} already holds {source}, reusing it (--force redoes it)")
            state.data_dir, state.meta = data_dir, old
            return
    echo(f"convert: {source} -> {data_dir}")
    state.meta = convert(ConvertConfig("cifar10", source, data_dir, force=True, progress=cfg.progress))
    state.data_dir = data_dir


def inspect_step(cfg: DemoConfig, state: DemoState, echo: Echo) -> None:
    """Check the converted betons against ``meta.json`` and print the summary."""
    state.meta = check_dataset(state.data_dir)
    echo(describe(state.meta))
    echo(f"inspect: {state.data_dir} OK")


STEPS: list[tuple[str, DemoStep]] = [("convert", convert_step), ("inspect", inspect_step)]


def run_demo(cfg: DemoConfig, echo: Echo = print) -> DemoState:
    """Run every step of :data:`STEPS` in order; returns the final state."""
    state = DemoState()
    for _, step in STEPS:
        step(cfg, state, echo)
    return state
