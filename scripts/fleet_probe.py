"""Throughput probe: training N students fused into one network vs N solo runs back to back.

Every timed call trains each of N students ``--steps`` optimizer steps (forward, separation
loss, backward, AdamW) on the same batches, either as N solo runs one after another (the
baseline: ``fasttarget train`` run N times) or as one fleet:

- ``fused``: :class:`fasttarget.fused.FusedStudent` (grouped convolutions, HFTA) stepped by
  :class:`fasttarget.fused.FleetStep`, in contiguous and in channels_last memory format;
- ``vmap``: ``torch.func.stack_module_state`` + ``vmap(functional_call)``. vmap rejects
  BatchNorm's in-place running-statistics updates, so its BatchNorms here track none: it
  does less work than a real fleet, and its number is an upper bound on that approach;
- ``compiled``: ``fused`` with its forward (and so its backward) compiled by inductor's C++
  backend, which fuses BatchNorm, ReLU and the residual adds around oneDNN's convolutions;
- ``parallel``: no fusion, the members' solo steps run concurrently, one Python thread per
  core with one intra-op thread each (the cores' parallelism spent across members instead of
  inside each narrow kernel).

Each row pairs one fleet variant with the solo runs in one memory format (channels_last is
what ``fasttarget train`` uses; contiguous is measured too): calls alternate order and the
ratio is the median of the per-pair ratios (``fasttarget.bench.measure``), so drift of a
shared machine falls on both sides. Numbers are measured here, never assumed.

    .venv/bin/python scripts/fleet_probe.py --n 1 2 4 8 --threads 2 1 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from fasttarget.bench import Comparison, measure
from fasttarget.fused import FleetStep, FusedStudent
from fasttarget.losses import build_student, hard_targets, loss_terms
from fasttarget.models import ModelConfig
from fasttarget.train import build_optimizer

FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
TEMPERATURE = 2.0
WARMUP = 1


def students(n: int, width: float, fmt: torch.memory_format) -> list[nn.Module]:
    """N students seeded 0 … N-1 (as N solo runs with those seeds would build them)."""
    built = []
    for seed in range(n):
        torch.manual_seed(seed)
        built.append(build_student(ModelConfig(width=width), "separation").to(memory_format=fmt))
    return built


def batches(batch: int, size: int, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A few synthetic ``(images, one-hot labels)`` batches (Strategy A: targets are the labels)."""
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, size, size, generator=gen),
             hard_targets(torch.randint(0, 10, (batch,), generator=gen), 10)) for _ in range(count)]


def solo_runs(n: int, width: float, fmt: torch.memory_format, data: Sequence, steps: int) -> Callable[[], None]:
    """N solo runs one after another, ``steps`` steps each."""
    nets = students(n, width, fmt)
    optimizers = [build_optimizer(net, 1e-3, 0.01) for net in nets]

    def run() -> None:
        for net, optimizer in zip(nets, optimizers):
            for images, onehot in itertools.islice(itertools.cycle(data), steps):
                logits_g, logits_h = net(images.contiguous(memory_format=fmt))
                terms = loss_terms(logits_g, logits_h, onehot, onehot, TEMPERATURE)
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                optimizer.step()

    return run


def fused_fleet(n: int, width: float, fmt: torch.memory_format, data: Sequence, steps: int,
                compile: bool = False) -> Callable[[], None]:
    """One :class:`FusedStudent` of N members on its grouped kernels (what this probe measures; a CPU
    fleet's default runs the solo kernels), ``steps`` steps; its forward ``torch.compile``'d if ``compile``."""
    net = FusedStudent(students(n, width, fmt), kernels="grouped").to(memory_format=fmt)
    step = FleetStep(net, build_optimizer(net, 1e-3, 0.01), TEMPERATURE,
                     forward=torch.compile(net) if compile else None)

    def run() -> None:
        for images, onehot in itertools.islice(itertools.cycle(data), steps):
            step(images.contiguous(memory_format=fmt), onehot.expand(n, *onehot.shape), onehot)

    return run


def vmap_fleet(n: int, width: float, fmt: torch.memory_format, data: Sequence, steps: int) -> Callable[[], None]:
    """N students as one ``vmap`` over stacked parameters (BatchNorms without running statistics)."""
    from torch.func import functional_call, stack_module_state, vmap

    members = students(n, width, torch.contiguous_format)
    params, _ = stack_module_state(members)
    base = copy.deepcopy(members[0]).to("meta")
    for module in base.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.track_running_stats = False
            module.running_mean = module.running_var = module.num_batches_tracked = None
    forward = vmap(lambda p, x: functional_call(base, p, (x,)), in_dims=(0, None))
    optimizer = torch.optim.AdamW(params.values(), lr=1e-3, weight_decay=0.01)

    def run() -> None:
        for images, onehot in itertools.islice(itertools.cycle(data), steps):
            logits_g, logits_h = forward(params, images.contiguous(memory_format=fmt))
            loss = sum(loss_terms(logits_g[i], logits_h[i], onehot, onehot, TEMPERATURE)["loss"] for i in range(n))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def parallel_fleet(n: int, width: float, fmt: torch.memory_format, data: Sequence, steps: int) -> Callable[[], None]:
    """The members' solo runs side by side: as many worker threads as intra-op threads, one intra-op thread each."""
    from concurrent.futures import ThreadPoolExecutor

    workers = torch.get_num_threads()
    shares = [solo_runs(len(range(w, n, workers)), width, fmt, data, steps) for w in range(min(workers, n))]
    pool = ThreadPoolExecutor(len(shares))

    def run() -> None:
        torch.set_num_threads(1)
        try:
            list(pool.map(lambda share: share(), shares))
        finally:
            torch.set_num_threads(workers)

    return run


def compiled_fleet(n: int, width: float, fmt: torch.memory_format, data: Sequence, steps: int) -> Callable[[], None]:
    """:func:`fused_fleet` with an inductor-compiled forward (its compilation falls in the warm-up call)."""
    return fused_fleet(n, width, fmt, data, steps, compile=True)


FLEETS = {"fused": fused_fleet, "vmap": vmap_fleet, "parallel": parallel_fleet, "compiled": compiled_fleet}
# Compiling ResNet-18's training graph takes minutes on two cores: asked for by name only.
DEFAULT_FLEETS = ["fused", "vmap", "parallel"]


class CpuTimed:
    """A callable that also records the process CPU seconds of each call.

    Wall time on a machine shared with other jobs counts their time slices too; with one
    thread, CPU time is the work done, so its ratio is the steadier one there.
    """

    def __init__(self, fn: Callable[[], None]):
        self.fn, self.seconds = fn, []

    def __call__(self) -> None:
        start = time.process_time()
        self.fn()
        self.seconds.append(time.process_time() - start)


def comparisons(args: argparse.Namespace, n: int) -> Iterator[Comparison]:
    data = batches(args.batch, args.size)
    work = n * args.steps * args.batch
    for name in args.variants:
        for fmt_name in args.formats:
            fmt = FORMATS[fmt_name]
            if name == "vmap" and fmt_name != "contiguous":
                continue  # stacked 5-d weights have no channels_last layout
            yield Comparison(f"{name} {fmt_name}", "img/s", work,
                             CpuTimed(FLEETS[name](n, args.width, fmt, data, args.steps)),
                             f"{n} solo {fmt_name}", CpuTimed(solo_runs(n, args.width, fmt, data, args.steps)))
    if n == 1 and len(args.formats) > 1:
        yield Comparison("solo contiguous", "img/s", work,
                         CpuTimed(solo_runs(1, args.width, FORMATS["contiguous"], data, args.steps)),
                         "solo channels_last", CpuTimed(solo_runs(1, args.width, FORMATS["channels_last"], data, args.steps)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8], help="fleet sizes")
    parser.add_argument("--width", type=float, default=0.125, help="ResNet-18 width multiplier")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed pairs per row (median ratio)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per member per timed call")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_FLEETS, choices=list(FLEETS))
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    args = parser.parse_args()
    print(f"ResNet-18 width {args.width}, batch {args.batch}, {args.size} px, {args.steps} steps per member "
          f"per call, {args.repeats} pairs per row, CPU float32, torch {torch.__version__}")
    print(f"{'threads':>7} {'N':>3}  {'fleet':<22} {'img/s':>8}  {'baseline':<22} {'img/s':>8}  {'ratio':>6}"
          f"  {'cpu-time ratio':>14}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for n in args.n:
            for comp in comparisons(args, n):
                row = measure(comp, repeats=args.repeats, warmup=WARMUP)
                # measure() calls both sides once per pair, so the recorded calls pair up in order.
                cpu = statistics.median(b / o for o, b in zip(comp.run.seconds[WARMUP:],
                                                              comp.baseline_run.seconds[WARMUP:]))
                print(f"{threads:>7} {n:>3}  {row.name:<22} {row.value:>8.0f}  {row.baseline:<22} "
                      f"{row.baseline_value:>8.0f}  {row.ratio:>5.2f}x  {cpu:>13.2f}x", flush=True)


if __name__ == "__main__":
    main()
