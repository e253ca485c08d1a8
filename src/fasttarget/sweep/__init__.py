"""Resumable experiment grids over strategies, teachers, augmentations, subsets and seeds.

A sweep configuration (TOML, see ``configs/``) names the dataset, the model, how to train
the teacher ladder, and one or more ``[[grid]]`` tables. Each grid is a Cartesian
product of its axes — strategies × teacher accuracies × teacher augmentations × student
augmentations × IPC values (or fractions) × step budgets × seeds — except that Strategy
A, which uses no teacher, is not multiplied by the teacher axes. Runs are identified by
their axes (:attr:`RunSpec.run_id`), so a run listed by two grids is trained once.

A sweep is a graph of **units** (:mod:`~fasttarget.sweep.units`): the dataset conversion
(``OUT/data``, unless the config names a converted one), one teacher ladder per teacher
augmentation (``OUT/teachers/<aug>/``), one logits cache per Strategy C teacher
(``OUT/caches/``), one student run per run id (``OUT/runs/<run_id>/``) and, with ``[report]
diagnostics`` (the default), the diagnostics of each finished run (:mod:`fasttarget.diagnostics`:
target entropy and teacher agreement, from one scoring per teacher in ``OUT/diagnostics/``). Each unit
declares the resources it needs (``[resources.<kind>]``) and runs on an executor
(:mod:`~fasttarget.sweep.executors`: local processes, Ray tasks or SLURM jobs through
submitit) as soon as the units it depends on have finished — a Strategy A run at once, a
B run when its ladder is done, a C run when its cache is; independent ladders in parallel.
The driver (:func:`run_sweep`) alone writes the index ``OUT/results.sqlite`` (and
``OUT/results.csv``), with paths relative to ``OUT``.

**Fleets.** With ``max_fleet`` > 1 (``fasttarget sweep --max-fleet N``; by default fleets sized
by the device) runs that share student augmentation, subset, seed, step budget, evaluation
interval and batch size — dataset, architecture and width are the sweep's — train together
as one fleet unit (:mod:`fasttarget.fleet`: one loader pass, the students fused). Each member
still writes ``runs/<run_id>/`` as a solo run would and has its own row in the index; a fleet
killed half-way resumes its members from their checkpoints, finished runs are never retrained.

It is idempotent: finished units are skipped (a run's ``final.json`` says ``done``), a run
killed half-way resumes from its last checkpoint, a failing unit is retried ``retries``
times and then recorded with its error (its dependents with it) while the others go on;
the next invocation tries it again.

**Paired runs.** A run's data order, subset and augmentation parameters all derive from
its ``seed`` alone; strategy and teacher never enter them. Runs that differ only in
strategy or teacher therefore see an identical sample stream, so A/B/C differences are
not sampling noise. Every unit runs with ``num_cpus`` torch/numba threads on every backend,
so a run's numbers do not depend on where it ran.

A subset smaller than a few batches (IPC 10 of CIFAR-10 is 100 images) keeps the sweep's
batch and streams across epoch boundaries (:mod:`fasttarget.order`), as the paper trains
it; with ``stream_small_subsets = false`` the batch is capped at the subset's size instead
(:func:`run_batch_size`), since ``drop_last`` would leave it no batch at all.

**Step budgets.** The optimizer runs at a constant learning rate (AdamW, as the paper),
so a run's evaluation at step ``s`` is what a run stopped at ``s`` would report. With
``budgets_from_one_run = true`` (the default) a grid's ``steps = [1950, 7800, 39000]``
trains once to 39,000 steps and reads the smaller budgets from its evaluations (each
budget must then be a multiple of the evaluation interval); ``false`` trains one run per
budget.

Example (a fake student so it runs instantly; the default trains for real):
    >>> import json, tempfile, pathlib
    >>> from fasttarget.sweep import BackendConfig, SweepConfig, Stages, run_sweep
    >>> cfg = SweepConfig.from_dict({"name": "demo", "data": {"dir": "/tmp/data"},
    ...     "grid": [{"strategies": ["A"], "student_augs": ["stdaug"], "steps": [10],
    ...               "eval_every": 5, "seeds": [0, 1]}]})
    >>> def fake_train(req):
    ...     req.run_dir.mkdir(parents=True, exist_ok=True)
    ...     (req.run_dir / "final.json").write_text(json.dumps(
    ...         {"status": "done", "step": 10, "test_acc_h": 0.5, "test_acc_g": 0.5, "wall_s": 0}))
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> run_sweep(cfg, out, BackendConfig(workers=1), stages=Stages(train_student=fake_train)).counts
    {'done': 2}
"""

from fasttarget.sweep.config import (
    DEVICES,
    STRATEGIES,
    UNIT_KINDS,
    GridConfig,
    Resources,
    SweepConfig,
    TeacherSettings,
)
from fasttarget.sweep.executors import BACKENDS, BackendConfig, Executor, SlurmSettings, default_workers
from fasttarget.sweep.plan import (
    RunSpec,
    SweepLayout,
    SweepPlan,
    expand_grid,
    fleet_size,
    group_fleets,
    plan_sweep,
    run_batch_size,
)
from fasttarget.sweep.run import SweepSummary, describe_plan, run_sweep
from fasttarget.sweep.stages import (
    CacheRequest,
    DataRequest,
    DiagnosticsRequest,
    FleetRequest,
    LadderRequest,
    RunRequest,
    ScoreRequest,
    Stages,
    TeacherCheckpoint,
    train_config,
)

__all__ = [
    "BACKENDS", "DEVICES", "STRATEGIES", "UNIT_KINDS", "BackendConfig", "CacheRequest", "DataRequest",
    "DiagnosticsRequest", "Executor", "FleetRequest", "GridConfig", "LadderRequest", "Resources", "RunRequest", "RunSpec", "ScoreRequest", "SlurmSettings",
    "Stages", "SweepConfig", "SweepLayout", "SweepPlan", "SweepSummary", "TeacherCheckpoint",
    "TeacherSettings", "default_workers", "describe_plan", "expand_grid", "fleet_size", "group_fleets", "plan_sweep",
    "run_batch_size", "run_sweep", "train_config",
]
