"""``compression.toml``: the typed, frozen configuration of ``barsignal compress``.

Every section is a frozen ``msgspec.Struct`` that rejects unknown keys; each stage receives its
own section. Paths are relative to the current directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from barsignal import tomlconfig

Pos = Annotated[float, Meta(gt=0)]
Frac = Annotated[float, Meta(ge=0, lt=1)]
Count = Annotated[int, Meta(ge=0)]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class DataSection(_Section):
    teacher: str = "runs/teacher"  # the model helper's checkpoint directory
    bars: tuple[str, ...] = ()  # bar files; empty = the dataset's default real bars
    max_windows: Count = 0  # cap on training windows (0 = all); keeps distillation within budget
    seed: int = 0


class DistillSection(_Section):
    temperature: Pos = 4.0
    alpha: Annotated[float, Meta(ge=0, le=1)] = 0.7  # weight of the soft (KL) term
    beta: Annotated[float, Meta(ge=0)] = 0.3  # weight of the feature (MSE) term
    epochs: Annotated[int, Meta(ge=1)] = 50
    lr: Pos = 1e-3  # cosine-annealed to 0 over ``epochs``
    weight_decay: Annotated[float, Meta(ge=0)] = 1e-4
    batch_size: Annotated[int, Meta(ge=1)] = 256
    patience: Annotated[int, Meta(ge=1)] = 5  # early stopping on the validation loss
    time_budget_s: Pos = 600.0  # wall-clock cap per training run (CPU budget), checked per epoch
    baseline: bool = True  # also train the same student without distillation, for comparison


class PruneSection(_Section):
    heads: Annotated[int, Meta(ge=1)] = 1  # attention heads kept per layer
    ffn_reduction: Frac = 0.33  # fraction of FFN channels removed
    layers: Annotated[int, Meta(ge=1)] = 1  # encoder layers kept
    importance: Literal["l1", "taylor"] = "l1"
    finetune_epochs: Count = 5  # with the distillation loss
    finetune_lr: Pos = 5e-4
    global_sparsity: Frac = 0.5  # unstructured global magnitude pruning (statistics only)


class QuantizeSection(_Section):
    calibration_windows: Annotated[int, Meta(ge=16)] = 1024  # training windows for INT8 static
    qat_epochs: Count = 3
    qat_lr: Pos = 1e-4
    sensitivity: bool = True  # per-layer-group sensitivity analysis


class EvalSection(_Section):
    windows: Annotated[int, Meta(ge=100)] = 10_000  # test windows for parity and fidelity
    fee_bps: Annotated[float, Meta(ge=0)] = 10.0  # paper broker fee per fill, in the policy replays
    slippage_bps: Annotated[float, Meta(ge=0)] = 1.0  # against the trader, on every next-open fill
    allow_short: bool = True  # shorts in the policy grid (USD-M futures can short)
    min_trades: Annotated[int, Meta(ge=1)] = 5  # round trips a setting needs on validation to be chosen
    min_val_days: Annotated[int, Meta(ge=1)] = 10  # fewer validation days (or no finite CI): never "trade"
    latency_iters: Annotated[int, Meta(ge=10)] = 2000
    latency_threads: Annotated[int, Meta(ge=1)] = 1
    min_signal_agreement: Annotated[float, Meta(ge=0, le=1)] = 0.99  # for the deployed variant
    # the deployed variant's dynamic-batch ONNX (replay) must match its batch-1 ONNX (live) this closely
    max_batch_drift: Annotated[float, Meta(ge=0)] = 1e-5


class MoveSection(_Section):
    """``barsignal compress move``: the move-size forecast fitted on the training split."""

    threshold_bp: Annotated[float, Meta(gt=0)] = 20.0  # c: p_move = P(|close[t+h] / close[t] - 1| > c)
    calibration: Literal["auto", "logistic", "normal"] = "auto"  # auto: the lower validation log-loss


class OutputSection(_Section):
    workdir: str = "runs/compress"  # checkpoints, ONNX files, report
    artifact: str = "runs/compress/artifact"  # the artifact directory written by the pipeline


class CompressionConfig(_Section):
    data: DataSection = DataSection()
    distill: DistillSection = DistillSection()
    prune: PruneSection = PruneSection()
    quantize: QuantizeSection = QuantizeSection()
    eval: EvalSection = EvalSection()
    move: MoveSection = MoveSection()
    output: OutputSection = OutputSection()


def loads(text: str, source: str = "<compression config>") -> CompressionConfig:
    """Parse TOML text; errors name the source, the section, the key and what is allowed."""
    return tomlconfig.decode(text, source, CompressionConfig)


def load(path: str | Path | None) -> CompressionConfig:
    """Load ``path``; ``None`` gives the defaults."""
    return CompressionConfig() if path is None else tomlconfig.load_file(path, CompressionConfig,
                                                                           "compression config")
