"""The sweep driver: walk the dependency graph, hand ready units to an executor, keep the index.

The driver alone writes the results index. It finds what is done by looking at the sweep
directory (a run's ``final.json``, a ladder's ``rungs.json``, a cache file), so a rerun after
a killed driver, a lost worker or a failure picks up exactly where the work stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fasttarget.results import CSV_FILE, INDEX_FILE, ResultsIndex, read_run_dir
from fasttarget.sweep.config import SweepConfig
from fasttarget.sweep.executors import BackendConfig, Executor, Task, build_executor, local_free_memory
from fasttarget.sweep.graph import UnitGraph
from fasttarget.sweep.plan import SweepLayout, expand_grid, fleet_size, plan_sweep
from fasttarget.sweep.stages import Stages
from fasttarget.sweep.units import Blocked, SweepContext, Unit, build_units, first_line, sync_run


@dataclass(frozen=True)
class SweepSummary:
    """Outcome of :func:`run_sweep`: run counts by status, the runs trained now, the failed ones."""

    counts: dict[str, int]
    trained: tuple[str, ...]
    failed: dict[str, str]


def _needed(units: list[Unit], ctx: SweepContext) -> list[Unit]:
    """The units still to run: unfinished runs and diagnostics and the unfinished units they
    depend on, in order."""
    by_key = {u.key: u for u in units}
    keep: set[str] = set()
    stack = [u.key for u in units if u.wanted and not u.done(ctx)]
    while stack:
        key = stack.pop()
        if key in keep:
            continue
        keep.add(key)
        stack.extend(d for d in by_key[key].deps(ctx) if d in by_key and not by_key[d].done(ctx))
    return [u for u in units if u.key in keep]


def sweep_fleet_size(ctx: SweepContext, max_fleet: int | None) -> int:
    """The most members of a fleet in this sweep (see :func:`~fasttarget.sweep.plan.fleet_size`).

    On CUDA the estimate of one member's memory needs the dataset's image size and classes; before
    the dataset is converted it assumes 224 px and 1000 classes (smaller fleets, never too large).
    """
    cfg = ctx.cfg
    if cfg.device != "cuda" or max_fleet == 1:
        return fleet_size(cfg.device, max_fleet)
    from fasttarget.fused import member_bytes
    from fasttarget.models import ModelConfig

    meta = ctx.data_dir / "meta.json"
    shape, classes = (224, 1000)
    if meta.is_file():
        from fasttarget.dataset import DatasetMeta

        loaded = DatasetMeta.load(ctx.data_dir)
        shape, classes = (loaded.image_shape[0] if loaded.image_shape else 224), loaded.num_classes
    need = member_bytes(ModelConfig(arch=cfg.arch, width=cfg.width, num_classes=classes, image_size=shape),
                        cfg.batch_size)
    return fleet_size("cuda", max_fleet, need, local_free_memory())


def _clock(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}" if minutes >= 60 else f"{minutes}:{s:02d}"


def run_sweep(
    cfg: SweepConfig,
    out: Path,
    backend: BackendConfig | Executor = BackendConfig(),
    retries: int = 1,
    stages: Stages = Stages(),
    log: Callable[[str], None] = lambda _msg: None,
    progress: Callable[[int, int], None] = lambda _done, _total: None,
    max_fleet: int | None = 1,
) -> SweepSummary:
    """Execute (or resume) a sweep into ``out``; see :mod:`fasttarget.sweep`.

    Args:
        cfg: the sweep.
        out: sweep directory (created; reused when it exists). Every worker must see it.
        backend: where units run (:class:`BackendConfig`: local processes, Ray, SLURM), or
            an :class:`Executor` of the caller's (closed by the sweep).
        retries: attempts after the first before a failing unit is recorded failed.
        stages: the functions that convert data, train ladders, cache and train runs.
        log: receives one line per event: a unit finished, failed or is retried.
        progress: called with ``(units settled, units to settle)`` after each.
        max_fleet: most student runs trained together as one fleet (:mod:`fasttarget.fleet`):
            1 trains every run alone; ``None`` sizes fleets by the device
            (:func:`sweep_fleet_size`). Either way each run has its own directory and row.

    Returns:
        A :class:`SweepSummary`; failures are in it and in the index, never raised.
    """
    if retries < 0:
        raise ValueError(f"retries must be ≥ 0, got {retries}")
    out = Path(out)
    layout = SweepLayout(out)
    plan = plan_sweep(cfg)
    ctx = SweepContext(cfg=cfg, plan=plan, layout=layout, stages=stages, index=ResultsIndex(out / INDEX_FILE))
    trained: list[str] = []
    try:
        ctx.index.set_meta("config", cfg.to_json())
        ctx.index.set_meta("budgets", list(plan.budgets))
        size = sweep_fleet_size(ctx, max_fleet)
        units = build_units(ctx, size)
        runs = [r for u in units for r in u.runs]
        done_runs = sum(sync_run(ctx, u) == "done" for u in runs)
        todo = _needed(units, ctx)
        where = backend.kind if isinstance(backend, BackendConfig) else type(backend).__name__
        fleets = [len(u.runs) for u in todo if len(u.runs) > 1]
        grouped = f" ({len(fleets)} fleets of {'/'.join(map(str, fleets))} runs, at most {size})" if fleets else ""
        log(f"sweep {cfg.name}: {len(runs)} runs, {done_runs} already done; {len(todo)} units to run on "
            f"{where}{grouped}")
        if todo:
            trained = _drive(ctx, todo, backend, retries, log, progress)
        elif isinstance(backend, Executor):
            backend.close()
        if ctx.class_counts():
            ctx.index.set_meta("dataset_ipc", min(ctx.class_counts()))
            ctx.index.set_meta("class_counts", ctx.class_counts())
        counts: dict[str, int] = {}
        for u in runs:
            status = ctx.index.runs(run_id=u.spec.run_id)[0].status
            counts[status] = counts.get(status, 0) + 1
        failed = {r.run_id: r.error for r in ctx.index.runs(status="failed")
                  if r.run_id in {u.spec.run_id for u in runs}}
        return SweepSummary(counts=counts, trained=tuple(trained), failed=failed)
    finally:
        ctx.index.write_csv(out / CSV_FILE)
        ctx.index.close()


def _drive(ctx: SweepContext, todo: list[Unit], backend: BackendConfig | Executor, retries: int,
           log: Callable[[str], None], progress: Callable[[int, int], None]) -> list[str]:
    """Run ``todo`` to the end; return the ids of the runs that finished."""
    by_key = {u.key: u for u in todo}
    graph = UnitGraph({u.key: u.deps(ctx) for u in todo}, partial={u.key for u in todo if u.partial})
    attempts = dict.fromkeys(by_key, 0)
    started: dict[str, float] = {}
    t0, settled, trained = time.monotonic(), 0, []

    def settle(unit: Unit, status: str, error: str | None = None) -> None:
        nonlocal settled
        settled += 1
        wall = time.monotonic() - started[unit.key] if unit.key in started else None
        detail = unit.record(ctx, status, attempts[unit.key], error=error, wall_s=wall)
        elapsed = time.monotonic() - t0
        eta = elapsed / settled * (len(todo) - settled)
        log(f"[{settled}/{len(todo)}] {status:6s} {unit.label}{detail}  ({_clock(elapsed)}, ETA {_clock(eta)})")
        progress(settled, len(todo))
        if status == "done":
            trained.extend(r.spec.run_id for r in unit.runs if r.done(ctx))

    def fail(unit: Unit, error: str) -> None:
        settle(unit, "failed", error)
        for key in graph.fail(unit.key):
            settle(by_key[key], "failed", f"{unit.label} failed: {first_line(error)}")

    progress(0, len(todo))
    cfg = ctx.cfg
    if isinstance(backend, BackendConfig):
        backend = build_executor(backend, ctx.layout.out, cfg.device, cfg.unit_resources("run"))
    with backend as executor:
        in_flight = 0
        while not graph.settled:
            tasks = []
            for key in graph.ready():
                if executor.slots is not None and in_flight + len(tasks) >= executor.slots:
                    break
                unit = by_key[key]
                try:
                    request = unit.request(ctx)
                except Blocked as blocked:
                    fail(unit, str(blocked))
                    continue
                graph.start(key)
                attempts[key] += 1
                started[key] = time.monotonic()
                unit.record(ctx, "running", attempts[key])
                tasks.append(Task(key, unit.job(ctx.stages), request, unit.resources(ctx)))
            if tasks:
                executor.submit(tasks)
                in_flight += len(tasks)
            if not in_flight:
                continue  # everything ready was blocked; what they blocked is settled too
            for outcome in executor.wait():
                in_flight -= 1
                unit = by_key[outcome.key]
                error = outcome.error
                if outcome.ok and not unit.done(ctx):
                    error = f"{unit.label} returned without leaving its result on disk"
                if error is None:
                    graph.finish(unit.key)
                    settle(unit, "done")
                elif attempts[unit.key] <= retries:
                    log(f"retry {attempts[unit.key]}/{retries} {unit.label}: {first_line(error)}")
                    graph.retry(unit.key)
                else:
                    fail(unit, error)
    return trained


# -- dry run ---------------------------------------------------------------------------


def describe_plan(cfg: SweepConfig, out: Path, max_fleet: int | None = 1, estimate: bool = True,
                  workers: int | None = None) -> str:
    """The plan in words for ``--dry-run``: what exists, what would be trained (and in which
    fleets, see :func:`run_sweep`'s ``max_fleet``) and, with ``estimate``, how long it would take
    here (:mod:`fasttarget.sweep.estimate`). Writes nothing.

    Raises:
        UserError: a path the sweep reads does not exist.
    """
    from fasttarget.dataset import DatasetMeta

    out = Path(out)
    cfg.check_paths()
    layout = SweepLayout(out)
    ctx = SweepContext(cfg=cfg, plan=plan_sweep(cfg), layout=layout, stages=Stages())
    lines = [f"sweep {cfg.name} → {out}"]
    if cfg.data_dir is not None:
        lines.append(f"data: {cfg.data_dir} (converted)")
    else:
        lines.append(f"data: convert {cfg.dataset} from {cfg.data_source} into {layout.data}")
    units = build_units(ctx, sweep_fleet_size(ctx, max_fleet))
    for unit in units:
        if unit.kind not in ("data", "diagnostics") and not unit.runs:
            lines.append(f"{unit.label}: {'done' if unit.done(ctx) else 'to run'}")
    diagnostics = [u for u in units if u.kind == "diagnostics"]
    if diagnostics:
        left = sum(not u.done(ctx) for u in diagnostics)
        lines.append(f"diagnostics: {left} of {len(diagnostics)} units to run (teacher scores, then one per run)")
    fleet_of = {r.spec.run_id: unit.fleet_id for unit in units if len(unit.runs) > 1 for r in unit.runs}
    states: dict[str, int] = {}
    steps_left = 0
    run_lines = []
    for unit in (r for u in units for r in u.runs):
        spec, run_dir = unit.spec, layout.run_dir(unit.spec)
        final, metrics = read_run_dir(run_dir)
        if unit.done(ctx):
            state = "done"
        elif (run_dir / "checkpoints" / "last.pt").is_file():
            state = "resume"
            steps_left += spec.steps - (metrics[-1]["step"] if metrics else 0)
        else:
            state = "new"
            steps_left += spec.steps
        states[state] = states.get(state, 0) + 1
        fleet = f"  (fleet {fleet_of[spec.run_id]})" if spec.run_id in fleet_of else ""
        run_lines.append(f"  {state:6s} {spec.run_id}{fleet}")
    summary = ", ".join(f"{v} {k}" for k, v in states.items())
    lines.append(f"runs: {len(ctx.plan.runs)} ({summary}); {steps_left} student steps to train"
                 + (f", {len(set(fleet_of.values()))} fleets" if fleet_of else ""))
    for grid in cfg.grids:
        n = len(expand_grid(grid, cfg.budgets_from_one_run))
        lines.append(f"  grid {grid.name}: {n} runs; budgets {', '.join(map(str, grid.steps))}")
    if estimate:
        from fasttarget.sweep.estimate import estimate_lines

        data = cfg.data_dir or layout.data
        meta = DatasetMeta.load(data) if (Path(data) / "meta.json").is_file() else None
        lines += estimate_lines(cfg, ctx.plan, meta, workers)
    return "\n".join(lines + run_lines)
