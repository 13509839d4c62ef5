"""Structured pruning that really shrinks tensors, and unstructured global magnitude pruning.

Structured: attention heads (rows of q/k/v and columns of out), FFN channels (rows of ff1 and
columns of ff2) and whole encoder layers are removed; the pruned student is a *new* ``Informer``
built from a config with ``layer_heads``/``layer_d_ff``/``e_layers`` set, with the kept slices
copied in. Nothing is masked.

Importance, chosen by ``importance``:

- ``"l1"``: the L1 norm of every weight that belongs to the unit (a head: its q/k/v rows, biases
  and out columns; an FFN channel: its ff1 row, bias and ff2 column; a layer: the mean |w| of
  its parameters).
- ``"taylor"``: the first-order Taylor estimate of the loss change when the unit is removed
  (Molchanov et al. 2019): (sum over the unit's weights of w * dL/dw)^2, accumulated over
  batches of training windows with the supervised loss.

Layers are pruned first (the least important are dropped, with the distilling conv that
followed them), then heads and FFN channels inside the kept layers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from barsignal.model.informer import Informer

Importance = Literal["l1", "taylor"]


@dataclass(frozen=True)
class PruneTargets:
    heads: int = 1  # heads kept per layer
    ffn_reduction: float = 0.33  # fraction of FFN channels removed
    layers: int = 1  # encoder layers kept


@dataclass
class UnitScores:
    layers: np.ndarray  # (e_layers,)
    heads: list[np.ndarray]  # per layer (n_heads,)
    ffn: list[np.ndarray]  # per layer (d_ff,)


def _head_groups(model: Informer, li: int) -> list[list[tuple[torch.Tensor, slice, int]]]:
    """For each head of layer ``li``: (tensor, slice, dim) triples of the weights it owns."""
    a = model.layers[li].attn
    E = a.head_dim
    out = []
    for h in range(a.n_heads):
        s = slice(h * E, (h + 1) * E)
        out.append([(a.q.weight, s, 0), (a.q.bias, s, 0), (a.k.weight, s, 0), (a.k.bias, s, 0),
                    (a.v.weight, s, 0), (a.v.bias, s, 0), (a.out.weight, s, 1)])
    return out


def _group_score(group: list[tuple[torch.Tensor, slice, int]], use_grad: bool) -> float:
    if use_grad:
        total = 0.0
        for t, s, dim in group:
            w = t.detach().narrow(dim, s.start, s.stop - s.start)
            g = t.grad.narrow(dim, s.start, s.stop - s.start)
            total += float((w * g).sum())
        return total
    return float(sum(t.detach().narrow(dim, s.start, s.stop - s.start).abs().sum() for t, s, dim in group))


def _scores(model: Informer, use_grad: bool) -> UnitScores:
    layers, heads, ffn = [], [], []
    for li, layer in enumerate(model.layers):
        heads.append(np.array([_group_score(g, use_grad) for g in _head_groups(model, li)]))
        if use_grad:
            f = (layer.ff1.weight.detach() * layer.ff1.weight.grad).sum(1) \
                + layer.ff1.bias.detach() * layer.ff1.bias.grad \
                + (layer.ff2.weight.detach() * layer.ff2.weight.grad).sum(0)
            layers.append(float(sum((p.detach() * p.grad).sum() for p in layer.parameters())))
        else:
            f = layer.ff1.weight.detach().abs().sum(1) + layer.ff1.bias.detach().abs() \
                + layer.ff2.weight.detach().abs().sum(0)
            ps = list(layer.parameters())
            layers.append(float(sum(p.detach().abs().sum() for p in ps) / sum(p.numel() for p in ps)))
        ffn.append(f.numpy().astype(np.float64))
    return UnitScores(np.array(layers), heads, ffn)


def importance(model: Informer, method: Importance = "l1", x: np.ndarray | None = None,
               y: np.ndarray | None = None, batch: int = 256, max_batches: int = 16) -> UnitScores:
    """Importance of every layer, head and FFN channel (larger = keep)."""
    if method == "l1":
        return _scores(model, use_grad=False)
    if method != "taylor":
        raise ValueError(f"importance must be 'l1' or 'taylor', got {method!r}")
    if x is None or y is None:
        raise ValueError("Taylor importance needs training windows x and labels y")
    model.eval()  # no dropout noise in the gradient estimate
    acc: UnitScores | None = None
    for bi, i in enumerate(range(0, len(x), batch)):
        if bi >= max_batches:
            break
        model.zero_grad(set_to_none=False)
        xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))
        yb = torch.from_numpy(y[i:i + batch].astype(np.float32))
        F.binary_cross_entropy_with_logits(model(xb), yb).backward()
        s = _scores(model, use_grad=True)
        sq = UnitScores(s.layers ** 2, [h ** 2 for h in s.heads], [f ** 2 for f in s.ffn])
        acc = sq if acc is None else UnitScores(acc.layers + sq.layers,
                                                [a + b for a, b in zip(acc.heads, sq.heads, strict=True)],
                                                [a + b for a, b in zip(acc.ffn, sq.ffn, strict=True)])
    model.zero_grad(set_to_none=True)
    assert acc is not None
    return acc


def _top(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` largest scores, in their original order."""
    return sorted(np.argsort(-scores, kind="stable")[:k].tolist())


def _copy_linear(dst: nn.Linear, src: nn.Linear, rows: list[int] | None = None,
                 cols: list[int] | None = None) -> None:
    w = src.weight.detach()
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    dst.weight.data.copy_(w)
    if src.bias is not None:
        b = src.bias.detach()
        dst.bias.data.copy_(b[rows] if rows is not None else b)


@torch.no_grad()
def prune_structured(model: Informer, targets: PruneTargets, scores: UnitScores) -> Informer:
    """A new, smaller ``Informer`` keeping the most important layers, heads and FFN channels."""
    cfg = model.cfg
    n_layers = min(targets.layers, cfg.e_layers)
    keep_layers = _top(scores.layers, n_layers)
    heads, d_ffs, head_idx, ffn_idx = [], [], [], []
    for li in keep_layers:
        nh = min(targets.heads, cfg.heads_at(li))
        hk = _top(scores.heads[li], nh)
        dff = cfg.d_ff_at(li)
        keep_ff = max(1, round(dff * (1.0 - targets.ffn_reduction)))
        fk = _top(scores.ffn[li], keep_ff)
        heads.append(nh)
        d_ffs.append(keep_ff)
        head_idx.append(hk)
        ffn_idx.append(fk)
    new_cfg = replace(cfg, e_layers=n_layers, head_dim=cfg.head_size, layer_heads=tuple(heads),
                      layer_d_ff=tuple(d_ffs))
    new = Informer(new_cfg)
    new.embed.load_state_dict(model.embed.state_dict())
    new.norm.load_state_dict(model.norm.state_dict())
    new.head.load_state_dict(model.head.state_dict())
    E = cfg.head_size
    for j, li in enumerate(keep_layers):
        old, dst = model.layers[li], new.layers[j]
        rows = [h * E + e for h in head_idx[j] for e in range(E)]
        for name in ("q", "k", "v"):
            _copy_linear(getattr(dst.attn, name), getattr(old.attn, name), rows=rows)
        _copy_linear(dst.attn.out, old.attn.out, cols=rows)
        dst.norm1.load_state_dict(old.norm1.state_dict())
        dst.norm2.load_state_dict(old.norm2.state_dict())
        _copy_linear(dst.ff1, old.ff1, rows=ffn_idx[j])
        _copy_linear(dst.ff2, old.ff2, cols=ffn_idx[j])
        if j < len(new.distil):  # the distilling conv that followed this layer, when it had one
            src_i = li if li < len(model.distil) else len(model.distil) - 1
            new.distil[j].load_state_dict(model.distil[src_i].state_dict())
    new.train(model.training)
    return new


@dataclass(frozen=True)
class SparsityStats:
    sparsity_target: float
    global_sparsity: float  # zero / total over the pruned tensors
    zero_params: int  # zeros over the pruned tensors
    total_params: int  # elements of the pruned tensors
    model_zero_params: int  # zeros over every parameter of the model
    model_total_params: int
    threshold: float  # |w| below which weights were zeroed
    per_layer: dict[str, float]  # tensor name -> its sparsity


@torch.no_grad()
def magnitude_prune(model: nn.Module, sparsity: float) -> SparsityStats:
    """Zero the globally smallest-|w| fraction ``sparsity`` of every Linear/Conv weight, in place.

    Biases, norms and the positional table are left dense. One global threshold across all
    tensors (global magnitude pruning), so sparsity per tensor differs.
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    tensors = {name: m.weight for name, m in model.named_modules()
               if isinstance(m, nn.Linear | nn.Conv1d)}
    flat = torch.cat([w.detach().abs().flatten() for w in tensors.values()])
    k = int(sparsity * flat.numel())
    threshold = float(torch.kthvalue(flat, k).values) if k > 0 else -1.0
    per_layer = {}
    for name, w in tensors.items():
        mask = w.abs() > threshold
        w.mul_(mask)
        per_layer[name] = float(1.0 - mask.float().mean())
    zeros = int(sum(int((w == 0).sum()) for w in tensors.values()))
    total = int(sum(w.numel() for w in tensors.values()))
    mz = int(sum(int((p == 0).sum()) for p in model.parameters()))
    mt = int(sum(p.numel() for p in model.parameters()))
    return SparsityStats(sparsity, zeros / total, zeros, total, mz, mt, threshold, per_layer)
