"""Structured Fisher pruning: whole output neurons and filters scored by their Fisher and removed, so
the model that is left is really smaller (and positions of the removed weights cost nothing).

Which channels must go together (a *space*) is found by tracing the model: see channels.py.

A channel's saliency is the group form of OBD, ``sum F * w**2 / 2`` over every weight that goes with
it (producers and consumers). :func:`select` removes the channels of least saliency per parameter
saved, over all spaces at once, until ``rate`` of the structurally prunable weights are gone (every
space keeps at least one channel, or a floor the caller sets); :func:`shrink` rebuilds the modules
smaller in place, and :func:`fit` gives a fresh model the shapes of a shrunk state dict, so that a
file written from a shrunk model loads into the model the user builds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .channels import CONVS, NORMS, Space, depthwise, spaces
from .errors import ConfigError

__all__ = ["Space", "Cuts", "spaces", "saliency", "select", "shrink", "cut", "fit", "prunable_weights"]
__all__ += ["cut_optimizer", "shrink_step", "removable", "model_size"]


def prunable_weights(space: Space, params: dict[str, torch.Tensor]) -> int:
    """Entries that go per channel of ``space`` (its members' and its consumers' slices), times size."""
    per = sum(params[n].numel() // params[n].shape[d] for n, d in space.members if n in params)
    per += sum(params[n].numel() // params[n].shape[d] * r for n, d, r in space.consumers)
    return per * space.size


def _slices(t: torch.Tensor, dim: int, size: int, repeat: int) -> torch.Tensor:
    """(size,) sums over each channel's slice of ``t`` along ``dim`` (``repeat`` indices per channel)."""
    moved = t.movedim(dim, 0).reshape(size, repeat, -1)
    return moved.sum(dim=(1, 2))


def saliency(space: Space, params: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor]) -> torch.Tensor:
    """(size,) float64 OBD saliency of each channel: sum of F * w**2 / 2 over what goes with it.
    Tensors without a Fisher (buffers) count nothing."""
    total = torch.zeros(space.size, dtype=torch.float64)
    for name, dim in space.members:
        if name in fisher and name in params:
            total += _slices((fisher[name] * params[name] ** 2).double() / 2, dim, space.size, 1)
    for name, dim, repeat in space.consumers:
        if name in fisher:
            total += _slices((fisher[name] * params[name] ** 2).double() / 2, dim, space.size, repeat)
    return total


def select(
    found: list[Space], params: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor], rate: float, floor: int = 1
) -> list[torch.Tensor]:
    """For each space, the sorted indices of the channels to keep: the least salient channels per
    weight saved go first, over all spaces, until ``rate`` of their weights are gone. No space is cut
    below ``floor`` channels (a space of at most ``floor`` keeps all of its own)."""
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"structured rate must be in [0, 1), got {rate}")
    if floor < 1:
        raise ConfigError(f"structured floor must be >= 1 channel, got {floor}")
    per_channel = [prunable_weights(s, params) // s.size for s in found]
    scores = [saliency(s, params, fisher) / max(p, 1) for s, p in zip(found, per_channel)]
    order = sorted(((float(v), i, c) for i, sc in enumerate(scores) for c, v in enumerate(sc.tolist())))
    goal = rate * sum(p * s.size for p, s in zip(per_channel, found))
    left, removed = [s.size for s in found], [set() for _ in found]
    gone = 0
    for _, i, c in order:
        if gone >= goal:
            break
        if left[i] > floor:
            removed[i].add(c)
            left[i] -= 1
            gone += per_channel[i]
    return [torch.tensor([c for c in range(s.size) if c not in r], dtype=torch.long) for s, r in zip(found, removed)]


def _index(keep: torch.Tensor, repeat: int) -> torch.Tensor:
    return (keep[:, None] * repeat + torch.arange(repeat)[None, :]).reshape(-1) if repeat > 1 else keep


Cuts = dict[str, list[tuple[int, torch.Tensor]]]  # tensor name -> (dim, indices kept along it), in order


@torch.no_grad()
def shrink(model: nn.Module, found: list[Space], keep: list[torch.Tensor]) -> Cuts:
    """Rebuild ``model``'s modules with only the kept channels, in place; returns the cuts made (what
    an optimizer's state or a mask must be cut by too, see :func:`cut`)."""
    cuts: Cuts = {}
    for s, k in zip(found, keep):
        for name, dim in s.members:
            cuts.setdefault(name, []).append((dim, k))
        for name, dim, repeat in s.consumers:
            cuts.setdefault(name, []).append((dim, _index(k, repeat)))
    state = {n: v.detach() for n, v in model.state_dict().items()}
    state.update({name: cut(state[name], steps) for name, steps in cuts.items()})
    fit(model, state)
    model.load_state_dict(state)
    return cuts


def cut(t: torch.Tensor, steps: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """``t`` with only the kept indices along each cut dim."""
    for dim, idx in steps:
        t = t.index_select(dim, idx)
    return t


def model_size(model: nn.Module) -> dict[str, int]:
    """What a file made after structured pruning records as its model's size before the first shrink
    (meta ``original``, the base of its ratio): every state-dict value, and 4 bytes per float one."""
    state = list(model.state_dict().values())
    floats = sum(t.numel() for t in state if t.is_floating_point())
    return {"params": sum(t.numel() for t in state), "fp32_bytes": 4 * floats}


def fit(model: nn.Module, shapes: dict[str, Any]) -> list[str]:
    """Give ``model``'s Linear, Conv and BatchNorm modules the shapes of ``shapes`` (a state dict, or
    names to tensors with ``.shape``) where they differ; returns the modules rebuilt. The new modules'
    values are uninitialised: load the state dict next. A module of another type whose shapes differ
    is left alone (loading then names the mismatch)."""
    rebuilt = []
    for path, m in list(model.named_modules()):
        prefix = f"{path}." if path else ""
        w = shapes.get(f"{prefix}weight")
        if w is None or not isinstance(m, (nn.Linear, *CONVS, *NORMS)) or tuple(w.shape) == tuple(m.weight.shape):
            continue
        if isinstance(m, nn.Linear):
            out, inp = w.shape
            new = nn.Linear(inp, out, bias=m.bias is not None)
        elif isinstance(m, CONVS):
            groups = w.shape[0] if depthwise(m) else m.groups
            new = type(m)(w.shape[1] * groups, w.shape[0], m.kernel_size, m.stride, m.padding, m.dilation, groups,
                          m.bias is not None, m.padding_mode)  # fmt: skip
        else:
            new = type(m)(w.shape[0], m.eps, m.momentum, m.affine, m.track_running_stats)
        new.to(dtype=m.weight.dtype, device=m.weight.device).train(m.training)
        _set(model, path, new)
        rebuilt.append(path)
    return rebuilt


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def cut_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, names: list[str], cuts: Cuts):
    """A new optimizer of ``optimizer``'s type and settings over ``model``'s (shrunk) parameters, its
    per-parameter state cut like the parameters. ``names``: the parameter names in the order the
    old optimizer held them (``named_parameters()`` of the model before :func:`shrink`)."""
    state = optimizer.state_dict()
    params = dict(model.named_parameters())
    new = type(optimizer)([params[n] for n in names], **optimizer.defaults)
    index = {p: i for group in state["param_groups"] for i, p in enumerate(group["params"])}
    for i, name in enumerate(names):
        s = state["state"].get(index.get(i, i))
        if s is not None and name in cuts:
            state["state"][index.get(i, i)] = {k: cut(v, cuts[name]) if torch.is_tensor(v) and v.dim() else v
                                               for k, v in s.items()}  # fmt: skip
    new.load_state_dict(state)
    return new


def shrink_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    fisher: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor] | None,
    fraction: float,
    before: int,
    example: torch.Tensor,
    floor: int = 1,
) -> tuple[torch.optim.Optimizer, dict[str, torch.Tensor] | None, dict[str, torch.Tensor], int]:
    """One structured round: remove channels until ``fraction`` of ``before`` (the removable weights
    of the original model) are gone, none below ``floor`` channels in a space (see :func:`select`).
    ``model`` shrinks in place; returns the optimizer, masks and Fisher cut to match, and the
    removable weights left."""
    found = spaces(model, example)
    params = {n: p.detach() for n, p in model.named_parameters()}
    now = _touched(found, params)
    rate = max(0.0, 1.0 - (1.0 - fraction) * before / now) if now else 0.0
    if rate <= 0.0:
        return optimizer, masks, fisher, now
    names = list(params)
    cuts = shrink(model, found, select(found, params, fisher, min(rate, 0.999), floor))
    optimizer = cut_optimizer(optimizer, model, names, cuts)
    fisher = {n: cut(f, cuts[n]) if n in cuts else f for n, f in fisher.items()}
    masks = None if masks is None else {n: cut(m, cuts[n]) if n in cuts else m for n, m in masks.items()}
    return optimizer, masks, fisher, removable(model, example)


def removable(model: nn.Module, example: torch.Tensor) -> int:
    """Parameters of ``model`` in tensors that removable channels cut (what a structured fraction
    counts)."""
    return _touched(spaces(model, example), {n: p.detach() for n, p in model.named_parameters()})


def _touched(found: list[Space], params: dict[str, torch.Tensor]) -> int:
    names = {n for s in found for n, _ in s.members} | {n for s in found for n, _, _ in s.consumers}
    return sum(params[n].numel() for n in names if n in params)
