"""Fused students against the solo students they were built from.

Every check compares the fleet with N independent solo :class:`~fasttarget.models.Student`
runs (the same initialization, the same batches): forward outputs and BatchNorm statistics,
gradients, AdamW steps, 50 training steps, state dicts and resume, a failing member, and
fused teachers. Tiny shapes (width 0.125, batch 16, 16 px) keep it fast.

Both ways a fused network runs (``fused.KERNELS``) are checked on CPU: ``grouped`` (what CUDA
runs) and ``solo`` (what CPU runs, the default there). Tolerances: the grouped kernels (grouped
convolutions, batched matmuls) sum in another order than the solo ones, so float32 results agree
to rounding (~1e-7 relative per step), not bit for bit. Over a free-running 50-step trajectory
that rounding is amplified the way any perturbation is (one ulp changed in one layer of a solo
run moves its loss terms by percents within 10 steps), so grouped float32 runs are compared step
by step from the same state, and the free-running trajectory is compared in float64, where
rounding stays far below 1e-8. The solo kernels are the solo runs' bit for bit, free-running
float32 included.
"""

from __future__ import annotations

import math

import pytest
import torch

from fasttarget.errors import UserError
from fasttarget.fused import FleetStep, FusedClassifier, FusedStudent, by_member
from fasttarget.losses import build_student, hard_targets, loss_terms
from fasttarget.models import Classifier, ModelConfig
from fasttarget.targets import TeacherModel

# One intra-op thread: two spin against each other on the shared 2-core machine, and these shapes are tiny.
pytestmark = pytest.mark.usefixtures("one_thread")

N, BATCH, SIZE, K, T = 3, 16, 16, 10, 2.0
FORMATS = [torch.contiguous_format, torch.channels_last]
KERNELS = pytest.mark.parametrize("kernels", ["grouped", "solo"])


def solo_students(n: int = N, loss: str = "separation", size: int = SIZE, **config) -> list:
    """Members seeded 0 … n-1, as n solo runs with those seeds build them."""
    built = []
    for seed in range(n):
        torch.manual_seed(seed)
        built.append(build_student(ModelConfig(width=0.125, image_size=size, **config), loss))
    return built


def batch(step: int, n: int = N, size: int = SIZE, dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    """Batch ``step``: images, per-member soft targets ``[n,B,K]`` and one-hot labels."""
    gen = torch.Generator().manual_seed(step)
    images = torch.randn(BATCH, 3, size, size, generator=gen, dtype=dtype)
    soft = torch.softmax(3 * torch.randn(n, BATCH, K, generator=gen, dtype=dtype), -1)
    return images, soft, hard_targets(torch.randint(0, K, (BATCH,), generator=gen), K).to(dtype)


def solo_step(net, optimizer, images, soft, hard) -> dict[str, torch.Tensor]:
    """One step of a solo run (as ``fasttarget.train`` does it on CPU)."""
    logits_g, logits_h = net(images)
    terms = loss_terms(logits_g, logits_h, soft, hard, T)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizer.step()
    return terms


def adamw(net, **kwargs) -> torch.optim.AdamW:
    return torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01, **kwargs)


def fleet_of(students, fmt=torch.contiguous_format, kernels="grouped") -> tuple[FusedStudent, FleetStep]:
    net = FusedStudent(students, kernels).to(memory_format=fmt)
    return net, FleetStep(net, adamw(net), T)


def assert_member_is(net: FusedStudent, i: int, solo, **tol) -> None:
    torch.testing.assert_close(net.member_state_dict(i), solo.state_dict(), **tol)


@KERNELS
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_forward_and_batchnorm_statistics_match_solo_students(fmt, kernels):
    students = [s.to(memory_format=fmt) for s in solo_students()]
    net = FusedStudent(students, kernels).to(memory_format=fmt)
    for step in range(3):  # train mode: batch statistics, and the running ones move
        images = batch(step)[0].contiguous(memory_format=fmt)
        fused = net(images)
        for i, solo in enumerate(students):
            torch.testing.assert_close((fused[0][i], fused[1][i]), solo(images), rtol=1e-5, atol=1e-6)
    for i, solo in enumerate(students):
        assert_member_is(net, i, solo, rtol=1e-5, atol=1e-6)
        assert solo.backbone.stem[1].num_batches_tracked == 3
    net.eval()
    images = batch(9)[0]
    per_member = torch.stack([batch(10 + i)[0] for i in range(N)])  # [N,B,3,H,W]: one input each
    fused, separate = net(images), net(per_member)
    for i, solo in enumerate(students):
        solo.eval()
        torch.testing.assert_close((fused[0][i], fused[1][i]), solo(images), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close((separate[0][i], separate[1][i]), solo(per_member[i]), rtol=1e-5, atol=1e-6)


@KERNELS
@pytest.mark.parametrize("loss", ["separation", "coupled"])
def test_each_member_gets_its_solo_gradient(loss, kernels):
    students = solo_students(loss=loss)
    net = FusedStudent(students, kernels)
    images, soft, hard = batch(0)
    logits_g, logits_h = net(images)
    sum(loss_terms(logits_g[i], logits_h[i], soft[i], hard, T)["loss"] for i in range(N)).backward()
    for i, solo in enumerate(students):
        logits = solo(images)
        loss_terms(*logits, soft[i], hard, T)["loss"].backward()
        for name, p in solo.named_parameters():
            fused = by_member(net.get_parameter(name).grad, N)[i].reshape(p.shape)
            torch.testing.assert_close(fused, p.grad, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("impl, tol", [
    ({"foreach": False}, 0.0),
    ({"foreach": True}, 0.0),
    # The fused CPU kernel rounds a vector's tail elements differently, and a member's elements
    # sit at other offsets in the concatenated tensor than alone: equal to an ulp, not bitwise.
    ({"fused": True}, 1e-6),
], ids=["single-tensor", "foreach", "fused"])
def test_one_adamw_over_the_fleet_is_n_adamws(impl, tol):
    """AdamW is elementwise: over concatenated parameters it steps each member as alone."""
    students = solo_students()
    net = FusedStudent(students)
    fleet_optimizer, solo_optimizers = adamw(net, **impl), [adamw(s, **impl) for s in students]
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        for solo in students:
            for p in solo.parameters():
                p.grad = torch.randn(p.shape, generator=gen) * 10 ** torch.randint(-6, 1, (), generator=gen)
        for name, p in net.named_parameters():
            p.grad = torch.cat([s.get_parameter(name).grad.reshape(-1) for s in students]).reshape(p.shape)
        fleet_optimizer.step()
        for optimizer in solo_optimizers:
            optimizer.step()
    for i, solo in enumerate(students):
        assert_member_is(net, i, solo, rtol=tol, atol=tol * 1e-6)
        member_state = net.member_optimizer_state(fleet_optimizer.state_dict(), i)["state"]
        torch.testing.assert_close(member_state, solo_optimizers[i].state_dict()["state"], rtol=tol, atol=tol * 1e-6)


def test_fifty_steps_match_solo_runs_step_by_step():
    """float32, the grouped kernels: at each of 50 steps, every member's loss terms and updated state
    equal a solo run's started from the member's state (its checkpoint), within 1e-5. (The solo
    kernels' 50 steps are bit for bit without resynchronizing: the free-running test below.)"""
    n = 2
    students = solo_students(n)
    net, fleet_step = fleet_of(students)
    solo_optimizers = [adamw(s) for s in students]
    worst = 0.0
    for step in range(50):
        for i, (solo, optimizer) in enumerate(zip(students, solo_optimizers)):
            solo.load_state_dict(net.member_state_dict(i))
            optimizer.load_state_dict(net.member_optimizer_state(fleet_step.optimizer.state_dict(), i))
        images, soft, hard = batch(step, n)
        fused = fleet_step(images, soft, hard)
        for i, (solo, optimizer) in enumerate(zip(students, solo_optimizers)):
            terms = solo_step(solo, optimizer, images, soft[i], hard)
            for key, value in terms.items():
                worst = max(worst, abs(fused[key][i].item() - value.item()) / abs(value.item()))
            for name, p in solo.named_parameters():  # the fleet's loss is the members' sum, not their mean
                torch.testing.assert_close(by_member(net.get_parameter(name).grad, n)[i].reshape(p.shape), p.grad,
                                           rtol=1e-5, atol=1e-7)
            assert_member_is(net, i, solo, rtol=1e-5, atol=1e-6)
    assert worst <= 1e-5


def test_fifty_free_running_steps_match_solo_runs_in_float64():
    """The fleet and N independent solo runs, 50 steps each, no resynchronization: equal to rounding."""
    n, size = 2, 8
    students = [s.double() for s in solo_students(n, size=size)]
    net, fleet_step = fleet_of(students)
    solo_optimizers = [adamw(s) for s in students]
    for step in range(50):
        images, soft, hard = batch(step, n, size, torch.float64)
        fused = fleet_step(images, soft, hard)
        for i, (solo, optimizer) in enumerate(zip(students, solo_optimizers)):
            terms = solo_step(solo, optimizer, images, soft[i], hard)
            torch.testing.assert_close({k: v[i] for k, v in fused.items()}, terms, rtol=1e-9, atol=0)
    for i, solo in enumerate(students):
        assert_member_is(net, i, solo, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_solo_kernels_train_free_running_float32_members_bit_for_bit_as_solo_runs(fmt):
    """What a CPU fleet runs (``kernels="auto"`` there): 50 float32 steps, no resynchronization,
    every loss term, state tensor and optimizer state equal to the solo runs' bits."""
    n = 2
    students = [s.to(memory_format=fmt) for s in solo_students(n)]
    net, fleet_step = fleet_of(students, fmt, kernels="auto")
    assert net._solo_kernels(torch.zeros(1))
    solo_optimizers = [adamw(s) for s in students]
    for step in range(50):
        images, soft, hard = batch(step, n)
        images = images.contiguous(memory_format=fmt)
        fused = fleet_step(images, soft, hard)
        for i, (solo, optimizer) in enumerate(zip(students, solo_optimizers)):
            terms = solo_step(solo, optimizer, images, soft[i], hard)
            torch.testing.assert_close({k: v[i] for k, v in fused.items()}, terms, rtol=0, atol=0)
    for i, (solo, optimizer) in enumerate(zip(students, solo_optimizers)):
        assert_member_is(net, i, solo, rtol=0, atol=0)
        torch.testing.assert_close(net.member_optimizer_state(fleet_step.optimizer.state_dict(), i)["state"],
                                   optimizer.state_dict()["state"], rtol=0, atol=0)
    net.eval()
    for solo in students:
        solo.eval()
    images = batch(99, n)[0].contiguous(memory_format=fmt)
    g, h = net(images)  # eval mode reaches the solo code: running statistics, none updated
    for i, solo in enumerate(students):
        torch.testing.assert_close((g[i], h[i]), solo(images), rtol=0, atol=0)
    assert_member_is(net, 0, students[0], rtol=0, atol=0)


class SavedBytes:
    """Bytes of the tensors autograd holds for the backward pass, now and at most (while active)."""

    def __init__(self):
        self.now = self.peak = 0

    def pack(self, t: torch.Tensor):
        size = t.numel() * t.element_size()
        self.now += size
        self.peak = max(self.peak, self.now)
        return _Held(t, size, self)

    def unpack(self, held: "_Held") -> torch.Tensor:
        return held.tensor


class _Held:
    def __init__(self, tensor, size, owner):
        self.tensor, self.size, self.owner = tensor, size, owner

    def __del__(self):
        self.owner.now -= self.size


def test_solo_kernels_hold_one_members_activations_at_a_time():
    """A fleet on the solo kernels runs forward, loss and backward member by member: what autograd
    holds at its peak is one solo step's, where one backward of the summed loss holds N members'."""
    students = solo_students()
    net, fleet_step = fleet_of(solo_students(), kernels="solo")
    grouped, grouped_step = fleet_of(solo_students(), kernels="grouped")
    images, soft, hard = batch(0)
    peaks = {}
    for name, step in (("solo run", lambda: solo_step(students[0], adamw(students[0]), images, soft[0], hard)),
                       ("fleet", lambda: fleet_step(images, soft, hard)),
                       ("grouped fleet", lambda: grouped_step(images, soft, hard))):
        saved = SavedBytes()
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
            step()
        assert saved.now == 0  # every graph freed by its backward
        peaks[name] = saved.peak
    assert peaks["fleet"] <= 1.05 * peaks["solo run"], peaks
    assert peaks["grouped fleet"] > 2 * peaks["solo run"], peaks  # the measure sees all N members held


@KERNELS
def test_member_checkpoints_round_trip_and_resume_the_fleet(kernels):
    students = solo_students()
    net, fleet_step = fleet_of(solo_students(), kernels=kernels)
    for i, solo in enumerate(students):  # built from the solo students: exactly their state, every key
        assert_member_is(net, i, solo, rtol=0, atol=0)
    for step in range(3):
        fleet_step(*batch(step))
    members = [net.member_state_dict(i) for i in range(N)]
    optimizer_states = [net.member_optimizer_state(fleet_step.optimizer.state_dict(), i) for i in range(N)]
    assert members[0]["backbone.stem.1.num_batches_tracked"].item() == 3
    for state in members:
        torch.save(state, "/dev/null")  # contiguous copies, not views of the fused tensors

    resumed, resumed_step = fleet_of(solo_students(), kernels=kernels)  # another initialization, then the checkpoints
    for i, state in enumerate(members):
        resumed.load_member_state_dict(i, state)
    resumed_step.optimizer.load_state_dict(resumed.fuse_optimizer_states(optimizer_states))
    for step in range(3, 6):
        torch.testing.assert_close(resumed_step(*batch(step)), fleet_step(*batch(step)), rtol=0, atol=0)
    for i in range(N):
        torch.testing.assert_close(resumed.member_state_dict(i), net.member_state_dict(i), rtol=0, atol=0)

    solo = students[1]  # a member's checkpoint is a solo run's: loading one member leaves the others
    resumed.load_member_state_dict(1, solo.state_dict())
    assert_member_is(resumed, 1, solo, rtol=0, atol=0)
    torch.testing.assert_close(resumed.member_state_dict(2), net.member_state_dict(2), rtol=0, atol=0)


@KERNELS
def test_a_member_with_a_nan_loss_stops_and_the_others_train_on(kernels):
    """Member 1's targets turn NaN at step 3: from then on its state is its state after step 2,
    bit for bit, and members 0 and 2 train exactly as in a fleet where nothing failed."""
    net, fleet_step = fleet_of(solo_students(), kernels=kernels)
    reference, reference_step = fleet_of(solo_students(), kernels=kernels)
    for step in range(6):
        images, soft, hard = batch(step)
        reference_step(images, soft, hard)
        if step >= 3:
            soft[1] = float("nan")
        terms = fleet_step(images, soft, hard)
        if step == 2:
            frozen = net.member_state_dict(1)
    assert fleet_step.active.tolist() == [True, False, True]
    assert math.isnan(terms["loss"][1].item()) and terms["loss"][[0, 2]].isfinite().all()
    torch.testing.assert_close(net.member_state_dict(1), frozen, rtol=0, atol=0)
    assert frozen["backbone.stem.1.num_batches_tracked"].item() == 3
    for i in (0, 2):
        torch.testing.assert_close(net.member_state_dict(i), reference.member_state_dict(i), rtol=0, atol=0)


def test_a_compiled_forward_steps_the_fleet_as_the_plain_one():
    """``forward=torch.compile(net)`` (what a compiled fleet run passes) is taken as given, not
    truth-tested (a compiled module's ``__len__`` raises), and steps the fleet as ``net`` does."""
    net, fleet_step = fleet_of(solo_students())
    reference, reference_step = fleet_of(solo_students())
    compiled = torch.compile(net, backend="eager")  # dynamo's graph capture, no code generation: fast
    fleet_step = FleetStep(net, fleet_step.optimizer, T, forward=compiled)
    assert fleet_step.forward is compiled
    images, soft, hard = batch(0)
    torch.testing.assert_close(fleet_step(images, soft, hard), reference_step(images, soft, hard), rtol=0, atol=0)
    for i in range(N):
        torch.testing.assert_close(net.member_state_dict(i), reference.member_state_dict(i), rtol=0, atol=0)


@KERNELS
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_nan_weights_of_one_member_do_not_reach_the_others(fmt, kernels):
    """A diverged member (NaN weights, so NaN activations in the fused kernels) stops changing,
    and its neighbours' outputs and updates are bit for bit those of a healthy fleet."""
    net, fleet_step = fleet_of(solo_students(), fmt, kernels)
    reference, reference_step = fleet_of(solo_students(), fmt, kernels)
    with torch.no_grad():
        by_member(net.get_parameter("backbone.layer2.0.conv1.weight"), N)[1].fill_(float("nan"))
    diverged = net.member_state_dict(1)
    for step in range(3):
        images, soft, hard = batch(step)
        terms, expected = fleet_step(images, soft, hard), reference_step(images, soft, hard)
        for key in terms:
            torch.testing.assert_close(terms[key][[0, 2]], expected[key][[0, 2]], rtol=0, atol=0)
    assert fleet_step.active.tolist() == [True, False, True]
    torch.testing.assert_close(net.member_state_dict(1), diverged, rtol=0, atol=0, equal_nan=True)
    for i in (0, 2):
        torch.testing.assert_close(net.member_state_dict(i), reference.member_state_dict(i), rtol=0, atol=0)


def test_fused_teachers_score_like_each_teacher():
    teachers = []
    for seed in range(N):
        torch.manual_seed(seed)
        teachers.append(Classifier(ModelConfig(width=0.125, image_size=SIZE)))
    for net in teachers:  # trained teachers have moved statistics: give each its own
        net.train()(batch(20)[0] * (1 + teachers.index(net)))
    mean, std, teacher_mean, teacher_std = (0.5,) * 3, (0.25,) * 3, (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    fused = TeacherModel(FusedClassifier(teachers), mean, std, teacher_mean, teacher_std)
    images = batch(21)[0]
    logits = fused(images)
    assert logits.shape == (N, BATCH, K) and logits.dtype == torch.float32
    for i, net in enumerate(teachers):
        torch.testing.assert_close(logits[i], TeacherModel(net, mean, std, teacher_mean, teacher_std)(images),
                                   rtol=1e-5, atol=1e-5)


def test_members_of_different_shapes_or_unfusable_layers_are_refused():
    with pytest.raises(UserError, match="share one architecture, width and loss"):
        FusedStudent(solo_students(1) + [build_student(ModelConfig(width=0.25, image_size=SIZE), "separation")])
    with pytest.raises(UserError, match="share one architecture, width and loss"):
        FusedStudent(solo_students(1) + solo_students(1, loss="coupled"))
    with pytest.raises(UserError, match=r"cannot fuse .* layers .*fleets train resnet18 or resnet50"):
        FusedStudent(solo_students(2, arch="vit_s"))


def test_checkpoints_that_do_not_fit_are_refused():
    net, fleet_step = fleet_of(solo_students())
    wider = build_student(ModelConfig(width=0.25, image_size=SIZE), "separation")
    with pytest.raises(UserError, match="state dict for member 1 does not fit the fleet .*same architecture"):
        net.load_member_state_dict(1, wider.state_dict())
    fleet_step(*batch(0))
    states = [net.member_optimizer_state(fleet_step.optimizer.state_dict(), i) for i in range(N)]
    with pytest.raises(UserError, match="has 3 members but got 2 optimizer states"):
        net.fuse_optimizer_states(states[:2])
    fleet_step(*batch(1))
    later = net.member_optimizer_state(fleet_step.optimizer.state_dict(), 2)
    with pytest.raises(UserError, match="disagree on 'step'"):
        net.fuse_optimizer_states(states[:2] + [later])


def test_a_fleet_takes_its_members_memory_format_where_channels_last_would_crash():
    """Narrow members at 64 px run contiguous on CPU as their solo runs do (torch 2.14 segfaults in
    channels_last there); the fused network has no ``nn.Conv2d`` of its own to decide it."""
    from fasttarget.models import place

    students = solo_students(2, size=64)
    with pytest.warns(RuntimeWarning, match="contiguous memory"):
        net = place(FusedStudent(students), "cpu", 64, like=students[0])
    weight = net.get_parameter("backbone.layer1.0.conv1.weight")
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)
    g, _ = net(torch.zeros(2, 3, 64, 64).contiguous(memory_format=torch.channels_last))
    assert g.shape == (2, 2, K)
    wide = solo_students(2)  # 16 px: channels_last, as a solo run
    assert place(FusedStudent(wide), "cpu", SIZE, like=wide[0]).get_parameter(
        "backbone.layer1.0.conv1.weight").is_contiguous(memory_format=torch.channels_last)
