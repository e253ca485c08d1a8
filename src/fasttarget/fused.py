"""Fused students: N networks of one shape trained as one (issue 12, "fleet training").

A fleet trains N students of the same architecture and width on one loader pass, each with
its own targets. Running them one after another pays N times for every small kernel launch
and leaves narrow convolutions (8-64 channels at width 0.125) short of work; fusing them
horizontally (HFTA, Wang et al. 2021) runs each layer once for all members:

- ``Conv2d(C_in, C_out)`` → one convolution with ``groups=N`` over ``N·C_in → N·C_out``
  channels (the stem, whose input all members share, is an ordinary ``3 → N·C_out``
  convolution over the same weight tensor);
- ``BatchNorm2d(C)`` → one BatchNorm over ``N·C`` channels: its statistics are per channel,
  so per member, and each member counts its own ``num_batches_tracked``;
- ``Linear(D, K)`` → a batched matmul ``[N,B,D] @ [N,D,K]``.

Activations are laid out ``[B, N·C, H, W]`` (member ``i`` owns channels ``i·C … (i+1)·C-1``),
so torchvision's ``BasicBlock``/``Bottleneck`` run unchanged on the fused layers. Every
fused tensor is the members' tensors concatenated along dim 0 (stacked for scalars), which
makes member ``i`` of any of them ``t.unflatten(0, (N, -1))[i]``: that one rule maps state
dicts, optimizer states, gradients and masks between a fleet and its solo runs.

Nothing couples the members: each output channel of a fused layer reads only its member's
channels, and the fleet's loss is the *sum* of the members' mean losses, so member ``i``'s
gradient is its solo gradient. AdamW is elementwise, so one AdamW over the fused parameters
steps every member exactly as its own AdamW would (``tests/test_fused.py`` checks it). A
member whose loss turns non-finite is stopped by :class:`FleetStep` without a host sync:
its parameters and BatchNorm statistics are put back after every step (zeroing its gradient
would not do: AdamW's momentum and weight decay keep moving a parameter).

Only networks built from ``Conv2d``, ``BatchNorm2d``, ``Linear`` and parameter-free modules
fuse (``resnet18``, ``resnet50``); ``vit_s`` does not.

On CPU the fused layers are not what runs (:data:`KERNELS`): each member goes through the solo
network's own code over views of the fused tensors, which is bit for bit its solo run and
faster there than oneDNN's grouped kernels; the state layout above is the same either way.

Example:
    >>> import torch
    >>> from fasttarget.losses import build_student
    >>> from fasttarget.models import ModelConfig
    >>> students = []
    >>> for seed in range(3):
    ...     _ = torch.manual_seed(seed)
    ...     students.append(build_student(ModelConfig(width=0.125), "separation"))
    >>> fleet = FusedStudent(students)
    >>> g, h = fleet(torch.zeros(2, 3, 32, 32))
    >>> g.shape
    torch.Size([3, 2, 10])
    >>> sorted(fleet.member_state_dict(1)) == sorted(students[1].state_dict())
    True
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fasttarget.errors import UserError
from fasttarget.losses import build_student, loss_terms
from fasttarget.models import Classifier, ModelConfig, Student


#: How a fused network runs its members: ``grouped`` (one grouped convolution, one BatchNorm and one
#: batched matmul per layer for all members: few, wide kernels, what pays on CUDA), ``solo`` (the
#: solo network's kernels member by member, over views of the same fused tensors: bit for bit
#: the solo runs, and faster than grouped kernels on CPU), ``auto`` (solo on CPU, else grouped).
KERNELS = ("auto", "grouped", "solo")


def by_member(t: torch.Tensor, members: int) -> torch.Tensor:
    """View a fused tensor as ``[N, …]``: member ``i``'s part is ``by_member(t, N)[i]``."""
    return t.unflatten(0, (members, -1))


def member_inputs(x: torch.Tensor, members: int) -> list[torch.Tensor]:
    """Each member's input: ``x [B,3,H,W]`` is every member's, ``x [N,B,3,H,W]`` one each."""
    return list(x.unbind(0)) if x.dim() == 5 else [x] * members


def _cat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The fused layout of one tensor per member: concatenated along dim 0, scalars stacked."""
    return torch.stack(tensors) if tensors[0].dim() == 0 else torch.cat(tensors)


class FusedConv2d(nn.Module):
    """N ungrouped ``Conv2d`` of one shape as one grouped convolution.

    Shape:
        ``[B, N·C_in, H, W]`` (each member its own input) or ``[B, C_in, H, W]`` (one input
        for all members) → ``[B, N·C_out, H', W']``.
    """

    def __init__(self, convs: Sequence[nn.Conv2d]):
        super().__init__()
        first = convs[0]
        if first.groups != 1 or first.padding_mode != "zeros":
            raise UserError(f"cannot fuse {first}: only ungrouped, zero-padded convolutions fuse")
        self.members, self.in_channels = len(convs), first.in_channels
        self.stride, self.padding, self.dilation = first.stride, first.padding, first.dilation
        self.weight = nn.Parameter(_cat([c.weight.detach() for c in convs]))
        self.bias = None if first.bias is None else nn.Parameter(_cat([c.bias.detach() for c in convs]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A shared input is convolved with all N·C_out filters at once: the same weight tensor
        # is then an ordinary convolution's, and no member copy of the input is made.
        groups = 1 if x.shape[1] == self.in_channels else self.members
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, groups)


class FusedBatchNorm2d(nn.Module):
    """N ``BatchNorm2d`` of one shape as one over ``N·C`` channels (statistics stay per member)."""

    def __init__(self, norms: Sequence[nn.BatchNorm2d]):
        super().__init__()
        first = norms[0]
        if not (first.affine and first.track_running_stats and first.momentum is not None):
            raise UserError(f"cannot fuse {first}: only affine BatchNorm with running statistics and a momentum fuses")
        self.members, self.eps, self.momentum = len(norms), first.eps, first.momentum
        self.weight = nn.Parameter(_cat([m.weight.detach() for m in norms]))
        self.bias = nn.Parameter(_cat([m.bias.detach() for m in norms]))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, _cat([getattr(m, name) for m in norms]).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                            self.momentum, self.eps)


class FusedLinear(nn.Module):
    """N ``Linear`` of one shape as one batched matmul.

    Shape:
        ``[N, B, D] → [N, B, K]``.
    """

    def __init__(self, linears: Sequence[nn.Linear]):
        super().__init__()
        self.members = len(linears)
        self.weight = nn.Parameter(_cat([m.weight.detach() for m in linears]))
        self.bias = nn.Parameter(_cat([m.bias.detach() for m in linears]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = by_member(self.weight, self.members)
        return torch.baddbmm(by_member(self.bias, self.members).unsqueeze(1), x, weight.transpose(1, 2))


_FUSERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: FusedConv2d, nn.BatchNorm2d: FusedBatchNorm2d, nn.Linear: FusedLinear,
}


def fuse_modules(modules: Sequence[nn.Module]) -> nn.Module:
    """One module computing N copies of a network's structure, each with its member's weights.

    The first member's module tree is copied and each of its ``Conv2d``, ``BatchNorm2d`` and
    ``Linear`` replaced by the fused layer built from the members' layers of the same name;
    parameter-free modules are kept, so the copied ``forward`` code runs on fused activations.

    Raises:
        UserError: the members differ in structure, or hold a layer that does not fuse.
    """
    layers = [dict(m.named_modules()) for m in modules]
    if any(layers[0].keys() != other.keys() for other in layers[1:]):
        raise UserError("fused members must share one architecture: build them from one ModelConfig")
    fused = copy.deepcopy(modules[0])
    for name, layer in list(fused.named_modules()):
        fuser = _FUSERS.get(type(layer))
        if fuser is None:
            if next(layer.parameters(recurse=False), None) is not None or next(layer.buffers(recurse=False), None) is not None:
                raise UserError(f"cannot fuse {type(layer).__name__} layers ({name}): fleets train resnet18 or resnet50")
            continue
        parent, _, attr = name.rpartition(".")
        setattr(fused.get_submodule(parent), attr, fuser([member[name] for member in layers]))
    return fused


class _Fused(nn.Module):
    """What fused networks share: the member count and the member ↔ fleet state mapping.

    Subclasses build their fused layers between ``super().__init__(members)`` and
    :meth:`_record_solo_layout`.
    """

    def __init__(self, members: Sequence[nn.Module], kernels: str = "auto"):
        super().__init__()
        if len({(m.config, getattr(m, "coupled", None)) for m in members}) != 1:
            raise UserError("fused members must share one architecture, width and loss: build them from one "
                            "ModelConfig")
        if kernels not in KERNELS:
            raise UserError(f"unknown fused kernels {kernels!r}: choose one of {', '.join(KERNELS)}")
        self.members, self.config, self.kernels = len(members), members[0].config, kernels

    def _solo_kernels(self, x: torch.Tensor) -> bool:
        """Whether this forward runs member by member (see :meth:`_members_forward`)."""
        return self.kernels == "solo" or (self.kernels == "auto" and x.device.type == "cpu")

    def _record_solo_layout(self, solo: nn.Module) -> None:
        # A member's state and optimizer state are keyed like its solo network's: names, shapes, order.
        self._solo_shapes = {k: v.shape for k, v in solo.state_dict().items()}
        self._solo_params = [name for name, _ in solo.named_parameters()]
        if self._solo_params != [name for name, _ in self.named_parameters()]:
            raise AssertionError("fused parameters are not in the solo order")  # a bug here, not a user error
        # The solo network's code without tensors of its own (a plain attribute, so neither a
        # submodule nor state): the CPU forward runs it over each member's views.
        self.__dict__["_solo"] = copy.deepcopy(solo).to("meta")

    def _members_forward(self, x: torch.Tensor) -> list[Any]:
        """The solo network's forward once per member, over views of the fused tensors.

        What a fleet runs on CPU. There, oneDNN's grouped 1×1 convolutions and batched matmuls sum
        weight gradients in another order than the ungrouped kernels a solo run calls, so a fused
        fleet drifts from its solo runs by an ulp a step, and float32 training amplifies that into
        points of accuracy within a few hundred steps. Run member by member, every kernel is the
        solo run's, so a CPU fleet is bit for bit its solo runs (BatchNorm's running statistics are
        updated in place through the views). It is also faster per member on CPU than the grouped
        kernels (docs/design.md, "Fused students"); the fleet still shares one loader pass, one
        augmentation and one target gather.
        """
        views = {k: [v.view(self._solo_shapes[k]) for v in by_member(t, self.members).unbind(0)]
                 for k, t in [*self.named_parameters(), *self.named_buffers()]}
        inputs = member_inputs(x, self.members)
        return [self.member_forward({k: v[i] for k, v in views.items()}, inputs[i]) for i in range(self.members)]

    def member_forward(self, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> Any:
        """The solo network's forward on one member's ``tensors`` (solo keys and shapes, parameters
        and buffers: views of the fused ones, or leaves sharing their storage, see :meth:`member_leaves`).

        BatchNorm updates the running statistics it is given in place, so through views it updates
        the fleet's. Train/eval modes are the fleet's, layer by layer.
        """
        modes = {name: m.training for name, m in self.named_modules()}
        for name, m in self._solo.named_modules():
            m.training = modes[name]
        return torch.func.functional_call(self._solo, tensors, (x,), strict=True)

    def member_leaves(self, i: int) -> dict[str, torch.Tensor]:
        """Member ``i``'s tensors for :meth:`member_forward`, its parameters as new autograd leaves.

        Each parameter is a detached view of its slice of the fused parameter (same storage, so
        it reads the current weights and costs no copy) that requires grad: a backward through
        :meth:`member_forward` then leaves member ``i``'s gradient in its ``.grad``, exactly the
        tensor a solo run's backward leaves (:class:`FleetStep` copies it into the fused
        gradient). Buffers are plain views, updated in place.
        """
        params = dict(self.named_parameters())
        return {k: (by_member(t, self.members)[i].view(self._solo_shapes[k]).detach().requires_grad_()
                    if k in params else by_member(t, self.members)[i].view(self._solo_shapes[k]))
                for k, t in [*params.items(), *self.named_buffers()]}

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B,3,H,W]`` (shared) or ``[N,B,3,H,W]`` (one input per member) → features ``[N,B,D]``."""
        if x.dim() == 5:
            x = x.transpose(0, 1).flatten(1, 2)
        return self.backbone(x).unflatten(1, (self.members, -1)).transpose(0, 1)

    def _member_part(self, t: torch.Tensor, i: int, key: str) -> torch.Tensor:
        return by_member(t, self.members)[i].reshape(self._solo_shapes[key]).clone(
            memory_format=torch.contiguous_format)

    def member_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Member ``i``'s state dict, keyed and shaped as its solo network's ``state_dict()``.

        Every tensor is a contiguous copy (a view would save the whole fused tensor).
        """
        return {k: self._member_part(v, i, k) for k, v in self.state_dict().items()}

    @torch.no_grad()
    def load_member_state_dict(self, i: int, state: dict[str, torch.Tensor]) -> None:
        """Load a solo network's state dict (or :meth:`member_state_dict`'s) into member ``i``.

        Raises:
            UserError: its keys or shapes are not the members' architecture's.
        """
        own = self.state_dict()
        mismatched = sorted(state.keys() ^ own.keys()) or [
            k for k, v in state.items() if v.shape != self._solo_shapes[k]]
        if mismatched:
            raise UserError(f"the state dict for member {i} does not fit the fleet (first mismatch: "
                            f"{mismatched[0]}): load a checkpoint of the same architecture, width and loss")
        for k, v in state.items():
            part = by_member(own[k], self.members)[i]
            part.copy_(v.reshape(part.shape))

    def member_optimizer_state(self, state: dict[str, Any], i: int) -> dict[str, Any]:
        """Member ``i``'s part of the fleet optimizer's ``state_dict()``, as its solo optimizer's.

        For elementwise optimizers (AdamW, Adam, SGD): per-parameter state tensors are sliced,
        scalars (AdamW's ``step``) copied. Parameter indices are the solo network's.
        """
        params = list(self.parameters())
        member = {
            index: {key: self._member_part(v, i, self._solo_params[index])
                    if torch.is_tensor(v) and v.shape == params[index].shape else copy.deepcopy(v)
                    for key, v in entries.items()}
            for index, entries in state["state"].items()
        }
        return {"state": member, "param_groups": copy.deepcopy(state["param_groups"])}

    def fuse_optimizer_states(self, states: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The fleet optimizer's ``state_dict()`` from one solo optimizer state per member.

        The inverse of :meth:`member_optimizer_state`: load it with ``optimizer.load_state_dict``.

        Raises:
            UserError: not one state per member, or states that differ in settings or step.
        """
        if len(states) != self.members:
            raise UserError(f"the fleet has {self.members} members but got {len(states)} optimizer states: "
                            "pass one per member")
        first = states[0]
        if any(s["param_groups"] != first["param_groups"] or s["state"].keys() != first["state"].keys()
               for s in states):
            raise UserError("the members' optimizer states differ in settings: resume the members of one fleet run")
        params = list(self.parameters())
        fused = {}
        for index, entries in first["state"].items():
            fused[index] = {}
            for key, v in entries.items():
                parts = [s["state"][index][key] for s in states]
                if torch.is_tensor(v) and v.shape == self._solo_shapes[self._solo_params[index]]:
                    fused[index][key] = torch.cat([p.reshape(-1) for p in parts]).reshape(params[index].shape)
                elif all(torch.equal(torch.as_tensor(p), torch.as_tensor(v)) for p in parts):
                    fused[index][key] = copy.deepcopy(v)
                else:
                    raise UserError(f"the members' optimizer states disagree on {key!r}: resume members that "
                                    "were checkpointed at the same step")
        return {"state": fused, "param_groups": copy.deepcopy(first["param_groups"])}


class FusedStudent(_Fused):
    """N :class:`~fasttarget.models.Student` of one architecture as one network.

    Built from the solo students themselves, so every member starts from exactly its solo
    run's initialization (seed each solo build as its run would).

    Args:
        students: the members, in order; one ``ModelConfig`` and loss for all.
        kernels: one of :data:`KERNELS` (default ``auto``: the solo kernels on CPU, grouped ones
            elsewhere).

    Shape:
        ``x [B,3,H,W]`` (one view for all members) or ``[N,B,3,H,W]`` →
        ``(logits_g [N,B,K], logits_h [N,B,K])``.

    Example:
        >>> import torch
        >>> from fasttarget.models import ModelConfig, Student
        >>> fleet = FusedStudent([Student(ModelConfig(width=0.125)) for _ in range(2)])
        >>> g, h = fleet(torch.zeros(4, 3, 32, 32))
        >>> tuple(h.shape), fleet.member_state_dict(0)["h.weight"].shape
        ((2, 4, 10), torch.Size([10, 64]))
    """

    def __init__(self, students: Sequence[Student], kernels: str = "auto"):
        super().__init__(students, kernels)
        self.coupled = students[0].coupled
        self.backbone = fuse_modules([s.backbone for s in students])
        # Registered in Student's order (backbone, h, g): parameter indices then match a solo optimizer's.
        self.h = FusedLinear([s.h for s in students])
        self.g = None if self.coupled else FusedLinear([s.g for s in students])
        self._record_solo_layout(students[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._solo_kernels(x):
            g, h = zip(*self._members_forward(x))
            return torch.stack(g), torch.stack(h)
        features = self._features(x)
        if self.g is None:
            logits = self.h(features)
            return logits, logits
        return self.g(features), self.h(features.detach())


class FusedClassifier(_Fused):
    """N :class:`~fasttarget.models.Classifier` (teachers) of one architecture as one network.

    Wrap it in :class:`fasttarget.targets.TeacherModel` to score a view for N Strategy B
    members at once (eval mode, frozen, renormalized).

    Shape:
        ``x [B,3,H,W]`` or ``[N,B,3,H,W]`` → logits ``[N,B,K]``.

    Example:
        >>> import torch
        >>> from fasttarget.models import ModelConfig, build_classifier
        >>> teachers = FusedClassifier([build_classifier(ModelConfig(width=0.125)) for _ in range(3)])
        >>> teachers.eval()(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([3, 2, 10])
    """

    def __init__(self, nets: Sequence[Classifier], kernels: str = "auto"):
        super().__init__(nets, kernels)
        self.backbone = fuse_modules([n.backbone for n in nets])
        self.head = FusedLinear([n.head for n in nets])
        self._record_solo_layout(nets[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._solo_kernels(x):
            return torch.stack(self._members_forward(x))
        return self.head(self._features(x))


def member_bytes(model: ModelConfig, batch_size: int, loss: str = "separation") -> int:
    """An estimate of the device memory one fleet member trains in, in bytes (float32).

    Every leaf module's output kept for the backward pass at ``batch_size``, plus the
    parameters four times (weights, gradients, AdamW's two moments); measured on the ``meta``
    device, so it allocates nothing. A sweep sizes CUDA fleets from it and the free memory.

    Example:
        >>> from fasttarget.models import ModelConfig
        >>> small, big = (member_bytes(ModelConfig(width=0.125), b) for b in (64, 128))
        >>> 1.9 < big / small < 2.0
        True
    """
    with torch.device("meta"):
        net = build_student(model, loss)
        saved = 0

        def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
            nonlocal saved
            for t in output if isinstance(output, tuple) else (output,):
                saved += t.numel() * t.element_size()

        hooks = [m.register_forward_hook(keep) for m in net.modules() if not list(m.children())]
        net(torch.empty(batch_size, 3, model.image_size, model.image_size))
    for hook in hooks:
        hook.remove()
    return saved + 4 * sum(p.numel() * p.element_size() for p in net.parameters())


class FleetStep:
    """One optimizer step of a fleet on one shared batch: the members' losses, backward, step.

    The fleet's loss is the sum of the members' mean losses (:func:`fasttarget.losses.loss_terms`
    each), so every member gets its solo gradient. A member whose loss is not finite is
    stopped in that step, on the device (no host sync): from then on its parameters and
    BatchNorm statistics are put back after each step, so they stay exactly as they were
    before the step that failed, and its loss no longer reaches the sum. The other members
    are untouched. Its optimizer state does go on changing (it is not used again).

    A fleet on the solo kernels (CPU, :data:`KERNELS`) stepped with ``forward=net`` runs forward,
    loss and backward one member after another (the same bits as one backward of the sum, with
    one member's activations held at a time); otherwise one forward computes every member's
    logits and one backward their summed loss.

    Args:
        net: the fleet.
        optimizer: an elementwise optimizer over ``net.parameters()`` (e.g.
            ``fasttarget.train.build_optimizer(net, lr, weight_decay)``: AdamW).
        temperature: ``T`` of every member's soft-target term.
        forward: computes ``net``'s outputs (``net`` itself, or a compiled wrapper of it).
        autocast: a factory of the context the forward runs in (``fasttarget.train.autocast``).

    Attributes:
        active: bool ``[N]`` on the net's device; ``False`` for stopped members.

    Example:
        >>> import torch
        >>> from fasttarget.models import ModelConfig, Student
        >>> fleet = FusedStudent([Student(ModelConfig(width=0.125)) for _ in range(2)])
        >>> step = FleetStep(fleet, torch.optim.AdamW(fleet.parameters()), temperature=2.0)
        >>> onehot = torch.eye(10)[torch.arange(4)]
        >>> soft = torch.stack([onehot, torch.full((4, 10), float("nan"))])  # member 1's targets are broken
        >>> terms = step(torch.randn(4, 3, 32, 32), soft, onehot)
        >>> terms["loss"].shape, step.active.tolist()
        (torch.Size([2]), [True, False])
    """

    def __init__(self, net: _Fused, optimizer: torch.optim.Optimizer, temperature: float,
                 forward: Callable[[torch.Tensor], Any] | None = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.net, self.optimizer, self.temperature = net, optimizer, temperature
        # Not ``forward or net``: a compiled module's truth test raises (OptimizedModule.__len__).
        self.forward = net if forward is None else forward
        self.autocast = autocast
        self.params = [p for p in net.parameters()]
        self.buffers = [b for b in net.buffers()]
        self.active = torch.ones(net.members, dtype=torch.bool, device=self.params[0].device)

    def stop(self, i: int) -> None:
        """Stop member ``i`` (e.g. when resuming a fleet in which it had failed)."""
        self.active[i] = False

    def __call__(self, images: torch.Tensor, soft_targets: torch.Tensor,
                 hard_targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Train one step.

        Args:
            images: the batch, ``[B,3,H,W]`` (or ``[N,B,3,H,W]``).
            soft_targets: each member's target probabilities ``[N,B,K]``.
            hard_targets: the (mixed) one-hot labels ``[B,K]`` (:func:`fasttarget.losses.hard_targets`).

        Returns:
            ``{"loss_b", "loss_h", "loss"}``: each member's terms, ``[N]`` (detached).
        """
        buffers = [b.clone() for b in self.buffers]  # BatchNorm updates its statistics in the forward
        self.optimizer.zero_grad(set_to_none=True)
        if self.forward is self.net and self.net._solo_kernels(images):
            terms = self._members_in_turn(images, soft_targets, hard_targets)
        else:
            with self.autocast():
                logits_g, logits_h = self.forward(images)
            per_member = [loss_terms(logits_g[i], logits_h[i], soft_targets[i], hard_targets, self.temperature)
                          for i in range(self.net.members)]
            terms = {k: torch.stack([t[k] for t in per_member]) for k in per_member[0]}
            self.active &= torch.isfinite(terms["loss"])
            torch.where(self.active, terms["loss"], 0.0).sum().backward()
        with torch.no_grad():
            params = [p.clone() for p in self.params]
            self.optimizer.step()
            stopped = ~self.active
            for now, before in zip(self.params + self.buffers, params + buffers):
                own = by_member(now, self.net.members)
                own.copy_(torch.where(stopped.view(-1, *[1] * (own.dim() - 1)), by_member(before, self.net.members),
                                      own))
        return {k: v.detach() for k, v in terms.items()}

    def _members_in_turn(self, images: torch.Tensor, soft_targets: torch.Tensor,
                         hard_targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward, loss and backward of one member after another (the solo kernels' path).

        The same gradients as one backward of the summed loss, bit for bit, but a member's
        activations are freed before the next member's forward: the fleet's peak memory is one
        member's, not N members', and on CPU the allocator reuses it instead of mapping fresh
        pages every step (docs/design.md, "Fused students"). Each member's gradient lands in its own
        leaves (:meth:`_Fused.member_leaves`) and is copied into its slice of the fused gradient.
        """
        net, n = self.net, self.net.members
        grads = [torch.zeros_like(p) for p in self.params]
        inputs = member_inputs(images, n)
        per_member = []
        for i in range(n):
            tensors = net.member_leaves(i)
            with self.autocast():
                logits_g, logits_h = net.member_forward(tensors, inputs[i])
            terms = loss_terms(logits_g, logits_h, soft_targets[i], hard_targets, self.temperature)
            live = self.active[i] & torch.isfinite(terms["loss"])
            torch.where(live, terms["loss"], 0.0).backward()
            self.active[i] = live
            for grad, name in zip(grads, net._solo_params):
                if tensors[name].grad is not None:
                    by_member(grad, n)[i].copy_(tensors[name].grad.view(by_member(grad, n)[i].shape))
            per_member.append({k: v.detach() for k, v in terms.items()})
        for p, grad in zip(self.params, grads):
            p.grad = grad
        return {k: torch.stack([t[k] for t in per_member]) for k in per_member[0]}
