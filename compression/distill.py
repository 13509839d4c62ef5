"""Knowledge distillation teacher -> student, and the same student trained without it.

The loss (Hinton et al. 2015 plus a FitNets-style feature term)::

    alpha * KL(teacher/T || student/T) * T^2 + (1 - alpha) * CE(student, label)
          + beta * MSE(proj(student_features), teacher_features)

For a single up-logit z the softened distribution is Bernoulli(sigmoid(z / T)); KL is taken in
the usual direction (teacher as the target distribution). Features are the mean-pooled encoder
outputs (``Informer.encode``); ``proj`` is a learned Linear(d_student -> d_teacher), 96 -> 128,
trained with the student and thrown away afterwards. Teacher logits and features are computed once
per window, in deterministic (export) mode, so the targets do not change between epochs.
Optimiser AdamW, cosine annealing over ``epochs``, early stopping on the validation loss; a wall
clock budget per run bounds CPU time (the epoch in progress finishes first).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from barsignal.compression.config import DistillSection
from barsignal.log import get_logger

log = get_logger(__name__)


@dataclass
class Split:
    """Windows (N, T, F) float32, labels (N,) in {0, 1} (ties dropped) and forward returns (N,) over
    the label horizon."""

    x: np.ndarray
    y: np.ndarray
    ret: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def head(self, n: int) -> Split:
        return Split(self.x[:n], self.y[:n], self.ret[:n])


@dataclass
class Data:
    train: Split
    val: Split
    test: Split
    meta: dict[str, Any] = field(default_factory=dict)  # schema hash, normalization, horizon...
    # model.dataset.WindowSet "train" (labelled), "val_all" / "test_all" (every window, consecutive)
    sets: dict[str, Any] = field(default_factory=dict)


@dataclass
class TeacherTargets:
    logits: torch.Tensor  # (N,)
    feats: torch.Tensor  # (N, d_teacher)


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Logits (N,) float32 of ``model`` in eval mode."""
    model.eval()
    out = [model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))).float()
           for i in range(0, len(x), batch)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def predict_proba(model: nn.Module, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Up-probabilities (N,) float32."""
    return (1.0 / (1.0 + np.exp(-predict_logits(model, x, batch).astype(np.float64)))).astype(np.float32)


@torch.no_grad()
def teacher_targets(teacher: nn.Module, x: np.ndarray, batch: int = 1024) -> TeacherTargets:
    """The teacher's logits and mean-pooled features, computed once (deterministic, eval mode)."""
    teacher.eval()
    if hasattr(teacher, "export_mode"):
        teacher.export_mode(True)
    logits, feats = [], []
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))
        f = teacher.encode(xb)  # (B, D_t)
        feats.append(f)
        logits.append(teacher.head(f).squeeze(-1))  # (B,)
    return TeacherTargets(torch.cat(logits), torch.cat(feats))


class DistillLoss(nn.Module):
    """The distillation loss; holds the learned feature projection d_student -> d_teacher."""

    def __init__(self, d_student: int, d_teacher: int, temperature: float = 4.0, alpha: float = 0.7,
                 beta: float = 0.3) -> None:
        super().__init__()
        self.proj = nn.Linear(d_student, d_teacher)
        self.t, self.alpha, self.beta = float(temperature), float(alpha), float(beta)

    def forward(self, s_logits: torch.Tensor, s_feats: torch.Tensor, labels: torch.Tensor,
                t_logits: torch.Tensor | None, t_feats: torch.Tensor | None) -> dict[str, torch.Tensor]:
        ce = F.binary_cross_entropy_with_logits(s_logits, labels)
        zero = s_logits.new_zeros(())
        kl = mse = zero
        if t_logits is not None and self.alpha > 0:
            t = self.t
            # Bernoulli KL(teacher || student) on softened logits, written via log-sigmoids (stable)
            pt = torch.sigmoid(t_logits / t)
            ls, lns = F.logsigmoid(s_logits / t), F.logsigmoid(-s_logits / t)
            lt, lnt = F.logsigmoid(t_logits / t), F.logsigmoid(-t_logits / t)
            kl = (pt * (lt - ls) + (1 - pt) * (lnt - lns)).mean() * t * t
        if t_feats is not None and self.beta > 0:
            mse = F.mse_loss(self.proj(s_feats), t_feats)
        total = self.alpha * kl + (1 - self.alpha) * ce + self.beta * mse
        if t_logits is None:  # no teacher: plain supervised training
            total = ce
        return {"loss": total, "kl": kl, "ce": ce, "mse": mse}


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float
    seconds: float
    stopped: str  # "epochs", "early_stopping" or "time_budget"


def _epoch_loss(model: nn.Module, loss_fn: DistillLoss, split: Split, targets: TeacherTargets | None,
                batch: int) -> float:
    model.eval()
    loss_fn.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(split), batch):
            xb = torch.from_numpy(np.ascontiguousarray(split.x[i:i + batch]))
            yb = torch.from_numpy(split.y[i:i + batch].astype(np.float32))
            f = model.encode(xb)
            logits = model.head(f).squeeze(-1)
            tl = targets.logits[i:i + batch] if targets is not None else None
            tf = targets.feats[i:i + batch] if targets is not None else None
            total += float(loss_fn(logits, f, yb, tl, tf)["loss"]) * len(xb)
            n += len(xb)
    return total / max(n, 1)


def train(model: nn.Module, data: Data, cfg: DistillSection, *, teacher: nn.Module | None = None,
          train_targets: TeacherTargets | None = None, val_targets: TeacherTargets | None = None,
          epochs: int | None = None, lr: float | None = None, seed: int = 0,
          extra_params: list[nn.Parameter] | None = None, label: str = "student") -> TrainResult:
    """Train ``model`` in place (with distillation when a teacher or its targets are given).

    Returns the history; the model ends with its best-validation weights.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    epochs = cfg.epochs if epochs is None else epochs
    lr = cfg.lr if lr is None else lr
    distil = teacher is not None or train_targets is not None
    if distil:
        if train_targets is None:
            train_targets = teacher_targets(teacher, data.train.x)
        if val_targets is None:
            val_targets = teacher_targets(teacher, data.val.x)
    d_student = model.encode(torch.zeros(1, *data.train.x.shape[1:])).shape[-1]
    d_teacher = train_targets.feats.shape[-1] if distil else d_student
    loss_fn = DistillLoss(d_student, d_teacher, cfg.temperature, cfg.alpha if distil else 0.0,
                          cfg.beta if distil else 0.0)
    params = list(model.parameters()) + list(loss_fn.parameters()) + list(extra_params or [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    best = (math.inf, -1, copy.deepcopy(model.state_dict()))
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    stopped = "epochs"
    n = len(data.train)
    bs = cfg.batch_size
    for epoch in range(epochs):
        model.train()
        loss_fn.train()
        order = rng.permutation(n)
        sums = {"loss": 0.0, "kl": 0.0, "ce": 0.0, "mse": 0.0}
        for i in range(0, n, bs):
            idx = np.sort(order[i:i + bs])
            xb = torch.from_numpy(data.train.x[idx])
            yb = torch.from_numpy(data.train.y[idx].astype(np.float32))
            f = model.encode(xb)  # (B, D_s)
            logits = model.head(f).squeeze(-1)  # (B,)
            ti = torch.from_numpy(idx)
            parts = loss_fn(logits, f, yb,
                            train_targets.logits[ti] if distil else None,
                            train_targets.feats[ti] if distil else None)
            opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            for k in sums:
                sums[k] += float(parts[k].detach()) * len(idx)
        sched.step()
        val_loss = _epoch_loss(model, loss_fn, data.val, val_targets if distil else None, 1024)
        row = {"epoch": epoch, **{f"train_{k}": v / n for k, v in sums.items()}, "val_loss": val_loss,
               "seconds": time.perf_counter() - t0}
        history.append(row)
        log.info("train epoch", model=label, epoch=epoch, train_loss=round(row["train_loss"], 5),
                 val_loss=round(val_loss, 5), seconds=round(row["seconds"], 1))
        if val_loss < best[0]:
            best = (val_loss, epoch, copy.deepcopy(model.state_dict()))
        elif epoch - best[1] >= cfg.patience:
            stopped = "early_stopping"
            break
        if row["seconds"] > cfg.time_budget_s:
            stopped = "time_budget"
            break
    model.load_state_dict(best[2])
    model.eval()
    return TrainResult(history, best[1], best[0], time.perf_counter() - t0, stopped)
