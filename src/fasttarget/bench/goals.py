"""The baselines' names and the goal each comparison is measured against."""

from __future__ import annotations

from dataclasses import dataclass

from fasttarget.bench.timing import Row


@dataclass(frozen=True)
class Goal:
    """A target an issue set for one measurement: a lowest ratio or a lowest value.

    Args:
        text: the goal as the issue words it.
        min_ratio: lowest acceptable ``Row.ratio``.
        min_value: lowest acceptable ``Row.value``.
        cuda_only: the goal is about CUDA runs (a CPU run reports the number without a verdict).
    """

    text: str
    min_ratio: float | None = None
    min_value: float | None = None
    cuda_only: bool = False

    def met(self, row: Row) -> bool:
        return (self.min_ratio is None or row.ratio >= self.min_ratio) and (
            self.min_value is None or row.value >= self.min_value)


# Baselines named in more than one place (suites, goals, tests).
STAGED = "student step on pre-staged tensors"
PER_SAMPLE_LOADER = "DataLoader per sample, 2 workers"
BATCHED_LOADER = "DataLoader BatchSampler"
BARE_GATHER = "bare gather"
KORNIA = "kornia chain"
KORNIA_RESAMPLE = "kornia chain, resample crop"
H5PY_FANCY = "h5py fancy indexing"
H5PY_IN_MEMORY = "h5py read once, in memory"
FFCV_RRC = "ffcv RandomResizedCropRGBImageDecoder"
FFCV_CENTER = "ffcv CenterCropRGBImageDecoder"
TORCHVISION_FOLDER = "torchvision ImageFolder + DataLoader, 2 workers"

# The goals of the issues, keyed by (Row.name, Row.baseline). Each comparison against the
# strongest fair baseline has one; the typical baselines keep the goals they were given.
GOALS: dict[tuple[str, str], Goal] = {
    ("convert cifar10 → beton", "ffcv DatasetWriter on arrays"): Goal("≤ 2× the writer's time", min_ratio=0.5),
    **{(f"loader resident b{b}", PER_SAMPLE_LOADER): Goal("≥ 10× DataLoader", min_ratio=10) for b in (128, 512)},
    # Same work in the same process plus a sampler and a fetcher: the loader must not lose to it.
    **{(f"loader resident b{b}", BATCHED_LOADER): Goal("≥ 1× batched DataLoader", min_ratio=1) for b in (128, 512)},
    # The resident loader is that gather plus bookkeeping (plan, RawBatch): at most 10 % may go to it.
    **{(f"loader resident b{b}", BARE_GATHER): Goal("≥ 0.9× bare gather", min_ratio=0.9) for b in (128, 512)},
    ("augment stdaug b256", KORNIA): Goal("≥ 2× Kornia chain", min_ratio=2),
    ("augment stdaug b256", KORNIA_RESAMPLE): Goal("≥ 2× Kornia chain", min_ratio=2),
    ("cache gather b128", H5PY_FANCY): Goal("≥ 10× h5py", min_ratio=10),
    # A memory map whose pages are cached is an in-memory array: within 10 % of indexing one.
    ("cache gather b128", H5PY_IN_MEMORY): Goal("≥ 0.9× in-memory gather", min_ratio=0.9),
    # When every read goes to the disk, the memory map must not be slower than h5py's reads.
    ("cache gather b128 cold", H5PY_FANCY): Goal("≥ 1× h5py (cold)", min_ratio=1),
    ("step A b128", STAGED): Goal("loader overhead ≤ 5 %", min_ratio=0.95),
    ("step C b128", STAGED): Goal("loader overhead ≤ 5 %", min_ratio=0.95),
    ("step C b128", "step A b128"): Goal("C step ≤ 1.02× A", min_ratio=1 / 1.02),
    ("step B b128", "step A b128"): Goal("B step ≤ 1.15× A (side stream)", min_ratio=1 / 1.15, cuda_only=True),
    ("student w1 b512 compile+bf16", "eager float32"): Goal("≥ 60k img/s on H200", min_value=60_000, cuda_only=True),
    # Issue 12: a fleet's aggregate img/s against its members trained one after another.
    ("fleet C x8 b128", "8 solo runs in turn"): Goal("≥ 2× at N = 8", min_ratio=2),
    ("fleet C x16 b128 w1 compile+bf16", "16 solo runs in turn"): Goal("≥ 4× at N = 16", min_ratio=4,
                                                                        cuda_only=True),
    # Issue 13: decode-time crops of variable-size JPEGs.
    ("imagenet train rrc224", FFCV_RRC): Goal("≥ 1.5× FFCV's RRC decoder", min_ratio=1.5),
    ("imagenet train rrc224", TORCHVISION_FOLDER): Goal("≥ 4× torchvision", min_ratio=4),
    ("imagenet test center224", FFCV_CENTER): Goal("≥ 1× FFCV's center decoder", min_ratio=1),
}
