"""The Informer encoder as a bar-window classifier: the teacher and the student ("balanced Informer").

Input is a window of ``window`` bars x ``n_features`` features, (B, 30, 33) float32; the output is one
logit per window, p_up = sigmoid(logit). The layout follows the Informer paper (Zhou et al., AAAI 2021)
and its reference code: a circular Conv1d token embedding plus a fixed sinusoidal positional
embedding, encoder layers of (attention, FFN) with post-LayerNorm, and between encoder layers the
"distilling" Conv1d(k=3, circular) -> BatchNorm -> ELU -> MaxPool(stride 2) that halves the length.

ProbSparse attention (the paper's eq. 4, as its code computes it): each query is scored against
``sample_k = c * ceil(ln L_K)`` randomly sampled keys by the sparsity measure
M(q) = max_j(q.k_j) - sum_j(q.k_j) / L_K, the top ``u = c * ceil(ln L_Q)`` queries get full attention
and the rest get mean(V). At L = 30 and c = 5: ceil(ln 30) = 4, so u = 20 of 30 queries are kept and
20 keys are sampled per query: it costs exactly the FLOPs of full attention (29.00 MFLOPs per
teacher window either way) and is random, even in eval mode (see ``probsparse_budget``,
``barsignal bench train`` and tests/model/test_informer.py). After one distilling layer L = 15 and
u = 15 >= L, so the deeper layers are plain full attention. ``export_mode(True)`` makes ProbSparse
deterministic: M is computed against every key instead of a random sample (no other change).

The student uses full attention through ``F.scaled_dot_product_attention``: deterministic and
exportable. Heads and FFN widths may differ per layer (``layer_heads``/``layer_d_ff``), so a
structurally pruned student is rebuilt from the config the pruner writes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class InformerConfig:
    window: int = 30  # bars per window (T)
    n_features: int = 33  # features per bar (F), the features helper's schema
    d_model: int = 128  # width of the residual stream (D)
    n_heads: int = 8  # attention heads per layer, unless layer_heads says otherwise
    e_layers: int = 4  # encoder layers
    d_ff: int = 512  # FFN hidden width, unless layer_d_ff says otherwise
    dropout: float = 0.1  # dropout on embeddings, attention (full only) and FFN
    attn: Literal["prob", "full"] = "prob"  # ProbSparse (teacher) or full attention (student)
    factor: int = 5  # ProbSparse c: u = c * ceil(ln L) queries are kept
    distil: bool = True  # distilling conv + maxpool between encoder layers (halves L each time)
    head_dim: int | None = None  # per-head width; None means d_model // n_heads
    layer_heads: tuple[int, ...] | None = None  # per-layer head counts (after pruning)
    layer_d_ff: tuple[int, ...] | None = None  # per-layer FFN widths (after pruning)
    deterministic: bool = False  # ProbSparse without random key sampling (export mode)

    def __post_init__(self) -> None:
        if self.attn not in ("prob", "full"):
            raise ValueError(f"InformerConfig.attn must be 'prob' or 'full', got {self.attn!r}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}; "
                             "set head_dim explicitly")
        for name in ("layer_heads", "layer_d_ff"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(int(v) for v in value))
                if len(getattr(self, name)) != self.e_layers:
                    raise ValueError(f"InformerConfig.{name} has {len(value)} entries, "
                                     f"expected e_layers={self.e_layers}")
                if min(getattr(self, name)) < 1:
                    raise ValueError(f"InformerConfig.{name} entries must be >= 1, got {value}")

    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    def heads_at(self, layer: int) -> int:
        return self.layer_heads[layer] if self.layer_heads is not None else self.n_heads

    def d_ff_at(self, layer: int) -> int:
        return self.layer_d_ff[layer] if self.layer_d_ff is not None else self.d_ff

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("layer_heads", "layer_d_ff"):
            if d[name] is not None:
                d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InformerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown InformerConfig keys {unknown}; known: {sorted(known)}")
        return cls(**d)


def teacher_config(**overrides: Any) -> InformerConfig:
    """The teacher: d_model 128, 8 heads, 4 layers, d_ff 512, ProbSparse, distilling."""
    return replace(InformerConfig(d_model=128, n_heads=8, e_layers=4, d_ff=512, attn="prob",
                                  distil=True), **overrides)


def student_config(**overrides: Any) -> InformerConfig:
    """The student: d_model 96, 2 heads, 2 layers, d_ff 192, full attention (deterministic, exportable)."""
    return replace(InformerConfig(d_model=96, n_heads=2, e_layers=2, d_ff=192, attn="full",
                                  distil=True), **overrides)


def probsparse_budget(length: int, factor: int = 5) -> tuple[int, int]:
    """(queries kept u, keys sampled per query) for ProbSparse at sequence length ``length``."""
    u = min(factor * math.ceil(math.log(length)), length)
    sample_k = min(factor * math.ceil(math.log(length)), length)
    return u, sample_k


# --- embedding -------------------------------------------------------------------------------------


class DataEmbedding(nn.Module):
    """Circular Conv1d(k=3) token embedding + fixed sinusoidal positional embedding."""

    def __init__(self, cfg: InformerConfig) -> None:
        super().__init__()
        self.token = nn.Conv1d(cfg.n_features, cfg.d_model, kernel_size=3, padding=1,
                               padding_mode="circular", bias=False)
        pos = torch.arange(cfg.window, dtype=torch.float32).unsqueeze(1)  # (T, 1)
        div = torch.exp(torch.arange(0, cfg.d_model, 2, dtype=torch.float32)
                        * (-math.log(10000.0) / cfg.d_model))  # (D/2,)
        pe = torch.zeros(cfg.window, cfg.d_model)  # (T, D)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)[:, : cfg.d_model // 2]
        self.register_buffer("pe", pe.unsqueeze(0), persistent=False)  # (1, T, D), rebuilt, not saved
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tok = self.token(x.transpose(1, 2)).transpose(1, 2)  # (B, T, F) -> (B, T, D)
        return self.drop(tok + self.pe[:, : x.shape[1]])  # (B, T, D)


# --- attention -------------------------------------------------------------------------------------


def prob_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, factor: int,
                   deterministic: bool) -> torch.Tensor:
    """ProbSparse self-attention (no mask): full attention for the top-u queries, mean(V) for the rest."""
    B, H, L_Q, E = q.shape
    L_K = k.shape[2]
    u = min(factor * math.ceil(math.log(L_Q)), L_Q)
    sample_k = min(factor * math.ceil(math.log(L_K)), L_K)
    scale = 1.0 / math.sqrt(E)
    if u >= L_Q:  # every query is kept: this is exactly full attention
        return F.scaled_dot_product_attention(q, k, v)  # (B, H, L, E)
    if deterministic:  # export mode: the sparsity measure against every key
        qk = q @ k.transpose(-2, -1)  # (B, H, L_Q, L_K)
    else:  # the paper's sampling: sample_k random keys (with replacement) per query
        idx = torch.randint(L_K, (L_Q, sample_k), device=q.device)  # (L_Q, S)
        k_sample = k[:, :, idx, :]  # (B, H, L_Q, S, E)
        qk = (q.unsqueeze(-2) @ k_sample.transpose(-2, -1)).squeeze(-2)  # (B, H, L_Q, S)
    m = qk.amax(dim=-1) - qk.sum(dim=-1) / L_K  # (B, H, L_Q) sparsity measure M(q)
    top = m.topk(u, dim=-1).indices  # (B, H, u), sorted (TensorRT wants sorted TopK)
    q_top = torch.gather(q, 2, top.unsqueeze(-1).expand(B, H, u, E))  # (B, H, u, E)
    attn = torch.softmax((q_top @ k.transpose(-2, -1)) * scale, dim=-1)  # (B, H, u, L_K)
    out_top = attn @ v  # (B, H, u, E)
    context = v.mean(dim=2, keepdim=True).expand(B, H, L_Q, E)  # (B, H, L_Q, E) lazy queries
    return torch.scatter(context, 2, top.unsqueeze(-1).expand(B, H, u, E), out_top)  # (B, H, L_Q, E)


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (so heads can be pruned)."""

    def __init__(self, cfg: InformerConfig, n_heads: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, cfg.head_size
        inner = n_heads * cfg.head_size
        self.q = nn.Linear(cfg.d_model, inner)
        self.k = nn.Linear(cfg.d_model, inner)
        self.v = nn.Linear(cfg.d_model, inner)
        self.out = nn.Linear(inner, cfg.d_model)
        self.kind, self.factor, self.dropout = cfg.attn, cfg.factor, cfg.dropout
        self.deterministic = cfg.deterministic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        H, E = self.n_heads, self.head_dim
        q = self.q(x).view(B, L, H, E).transpose(1, 2)  # (B, H, L, E)
        k = self.k(x).view(B, L, H, E).transpose(1, 2)  # (B, H, L, E)
        v = self.v(x).view(B, L, H, E).transpose(1, 2)  # (B, H, L, E)
        if self.kind == "prob":
            y = prob_attention(q, k, v, self.factor, self.deterministic)  # (B, H, L, E)
        else:
            p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, L, E)
        y = y.transpose(1, 2).reshape(B, L, H * E)  # (B, L, H*E)
        return self.out(y)  # (B, L, D)


# --- encoder ---------------------------------------------------------------------------------------


class EncoderLayer(nn.Module):
    """x + attention, LayerNorm, x + FFN(GELU), LayerNorm (post-norm, as in Informer)."""

    def __init__(self, cfg: InformerConfig, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.attn = Attention(cfg, n_heads)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.ff1 = nn.Linear(cfg.d_model, d_ff)
        self.ff2 = nn.Linear(d_ff, cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x)))  # (B, L, D)
        y = self.drop(F.gelu(self.ff1(x)))  # (B, L, d_ff)
        return self.norm2(x + self.drop(self.ff2(y)))  # (B, L, D)


class DistilConv(nn.Module):
    """Self-attention distilling: Conv1d(k=3, circular) -> BatchNorm -> ELU -> MaxPool(3, stride 2)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d_model, d_model, kernel_size=3, padding=1, padding_mode="circular")
        self.norm = nn.BatchNorm1d(d_model)
        self.pool = nn.MaxPool1d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.transpose(1, 2))  # (B, D, L)
        y = self.pool(F.elu(self.norm(y)))  # (B, D, ceil(L/2))
        return y.transpose(1, 2)  # (B, L', D)


class Informer(nn.Module):
    """Informer encoder + mean pool + linear head: (B, T, F) float32 -> logits (B,)."""

    def __init__(self, cfg: InformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = DataEmbedding(cfg)
        self.layers = nn.ModuleList(
            EncoderLayer(cfg, cfg.heads_at(i), cfg.d_ff_at(i)) for i in range(cfg.e_layers))
        n_distil = cfg.e_layers - 1 if cfg.distil else 0
        self.distil = nn.ModuleList(DistilConv(cfg.d_model) for _ in range(n_distil))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Mean-pooled encoder output (B, d_model): the features distillation matches."""
        h = self.embed(x)  # (B, T, D)
        for i, layer in enumerate(self.layers):
            h = layer(h)  # (B, L, D)
            if i < len(self.distil):
                h = self.distil[i](h)  # (B, ceil(L/2), D)
        return self.norm(h).mean(dim=1)  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x)).squeeze(-1)  # (B,) logits; p_up = sigmoid

    def export_mode(self, on: bool = True) -> Informer:
        """Deterministic ProbSparse (no random key sampling) for export and parity checks."""
        self.cfg = replace(self.cfg, deterministic=on)
        for m in self.modules():
            if isinstance(m, Attention):
                m.deterministic = on
        return self

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def flops_per_window(model: Informer) -> int:
    """Matmul/conv FLOPs (2 x MACs) of one window in eval mode, counted by torch's FlopCounterMode.

    SDPA runs on its math backend here so that its two matmuls are counted too. Element-wise ops,
    softmax and norms are not counted (they are small next to the matmuls).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.cfg
    was_training = model.training
    model.eval()
    x = torch.zeros(1, cfg.window, cfg.n_features)  # (1, T, F)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@torch.no_grad()
def export_mode_shift(model: Informer, x: torch.Tensor, repeats: int = 8) -> dict[str, float]:
    """How far export mode moves p_up against sampled ProbSparse, next to the sampled mode's own spread.

    ``x`` (N, T, F). Returns mean/max |p_export - p_sampled| over ``repeats`` sampled passes, and the
    mean/max |p_sampled - mean(p_sampled)| (the noise sampling alone adds). The model is left as found.
    """
    was_training, was_det = model.training, model.cfg.deterministic
    model.eval()
    try:
        model.export_mode(False)
        sampled = torch.stack([torch.sigmoid(model(x)) for _ in range(repeats)])  # (R, N)
        model.export_mode(True)
        det = torch.sigmoid(model(x))  # (N,)
    finally:
        model.train(was_training).export_mode(was_det)
    move = (sampled - det).abs()  # (R, N)
    spread = (sampled - sampled.mean(0)).abs()  # (R, N)
    return {"mean_abs_shift": float(move.mean()), "max_abs_shift": float(move.max()),
            "sampled_mean_abs_spread": float(spread.mean()), "sampled_max_abs_spread": float(spread.max()),
            "windows": int(x.shape[0]), "repeats": repeats}


def describe(model: Informer) -> str:
    """One line: parameters and FLOPs per window."""
    cfg = model.cfg
    return (f"Informer d_model={cfg.d_model} heads={[cfg.heads_at(i) for i in range(cfg.e_layers)]} "
            f"layers={cfg.e_layers} d_ff={[cfg.d_ff_at(i) for i in range(cfg.e_layers)]} "
            f"attn={cfg.attn}: {model.param_count():,} parameters, "
            f"{flops_per_window(model) / 1e6:.2f} MFLOPs per window")
