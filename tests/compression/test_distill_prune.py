"""Distillation loss and training, structured and magnitude pruning: real tensors, real bars."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from barsignal.compression.config import DistillSection
from barsignal.compression.distill import DistillLoss, predict_proba, teacher_targets, train
from barsignal.compression.prune import PruneTargets, importance, magnitude_prune, prune_structured
from barsignal.model import checkpoint
from barsignal.model.informer import Informer, flops_per_window, student_config
from tests.compression.conftest import small_student


def test_kl_term_is_zero_when_student_matches_teacher_and_scaled_by_t_squared():
    loss = DistillLoss(8, 16, temperature=4.0, alpha=1.0, beta=0.0)
    z = torch.tensor([-2.0, 0.5, 3.0])
    y = torch.tensor([0.0, 1.0, 1.0])
    assert float(loss(z, torch.zeros(3, 8), y, z, torch.zeros(3, 16))["kl"]) == pytest.approx(0.0, abs=1e-7)
    far = loss(z, torch.zeros(3, 8), y, -z, torch.zeros(3, 16))
    p, q = torch.sigmoid(-z / 4), torch.sigmoid(z / 4)
    kl = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean() * 16
    assert float(far["kl"]) == pytest.approx(float(kl), rel=1e-5)
    assert float(far["loss"]) == pytest.approx(float(far["kl"]), rel=1e-6)  # alpha = 1, beta = 0


def test_feature_term_trains_the_projection():
    loss = DistillLoss(8, 16, alpha=0.7, beta=0.3)
    parts = loss(torch.zeros(4), torch.randn(4, 8), torch.ones(4), torch.zeros(4), torch.randn(4, 16))
    parts["loss"].backward()
    assert loss.proj.weight.shape == (16, 8)
    assert loss.proj.weight.grad is not None and loss.proj.weight.grad.abs().sum() > 0
    assert float(parts["mse"].detach()) > 0


def test_distillation_runs_on_real_windows_and_keeps_the_best_epoch(slice_data, tiny_teacher):
    teacher = checkpoint.load(tiny_teacher)
    tt = teacher_targets(teacher, slice_data.train.x)
    assert tt.logits.shape == (len(slice_data.train),) and tt.feats.shape == (len(slice_data.train), 32)
    student = small_student()
    res = train(student, slice_data, DistillSection(epochs=2, batch_size=128), teacher=teacher)
    assert len(res.history) == 2 and res.best_epoch in (0, 1)
    assert all(np.isfinite(h["val_loss"]) and h["train_kl"] >= 0 for h in res.history)
    p = predict_proba(student, slice_data.test.x)
    assert p.shape == (len(slice_data.test),) and ((p > 0) & (p < 1)).all()


def _real_student() -> Informer:
    torch.manual_seed(1)
    return Informer(student_config()).eval()


@pytest.mark.parametrize("method", ["l1", "taylor"])
def test_structured_pruning_really_shrinks_tensors(method, slice_data, tmp_path):
    model = _real_student()
    scores = importance(model, method, slice_data.train.x[:256], slice_data.train.y[:256], max_batches=2)
    pruned = prune_structured(model, PruneTargets(heads=1, ffn_reduction=0.33, layers=1), scores)
    cfg = pruned.cfg
    assert cfg.e_layers == 1 and cfg.layer_heads == (1,) and cfg.layer_d_ff == (129,)
    layer = pruned.layers[0]
    assert layer.attn.q.weight.shape == (48, 96) and layer.attn.out.weight.shape == (96, 48)
    assert layer.ff1.weight.shape == (129, 96) and layer.ff2.weight.shape == (96, 129)
    assert len(pruned.distil) == 0
    assert pruned.param_count() < model.param_count() / 2
    assert flops_per_window(pruned) < flops_per_window(model) / 2
    # the kept slices are the original weights, not new ones
    keep = int(np.argmax(scores.heads[int(np.argmax(scores.layers))]))
    src = model.layers[int(np.argmax(scores.layers))].attn.q.weight[keep * 48:(keep + 1) * 48]
    assert torch.equal(layer.attn.q.weight, src)
    # saved and reloaded from its own config: smaller file, same outputs
    checkpoint.save(pruned, tmp_path / "p")
    back = checkpoint.load(tmp_path / "p")
    x = slice_data.test.x[:16]
    assert np.array_equal(predict_proba(back, x), predict_proba(pruned, x))
    checkpoint.save(model, tmp_path / "s")
    size = {k: (tmp_path / k / "model.safetensors").stat().st_size for k in ("p", "s")}
    assert size["p"] < size["s"]


def test_pruning_that_keeps_everything_is_the_identity(slice_data):
    model = _real_student()
    same = prune_structured(model, PruneTargets(heads=2, ffn_reduction=0.0, layers=2), importance(model))
    x = slice_data.test.x[:32]
    np.testing.assert_allclose(predict_proba(same, x), predict_proba(model, x), atol=1e-6)


def test_global_magnitude_pruning_statistics():
    model = _real_student()
    stats = magnitude_prune(model, 0.5)
    assert stats.global_sparsity == pytest.approx(0.5, abs=1e-3)
    prunable = [m for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv1d)]
    zeros = sum(int((m.weight == 0).sum()) for m in prunable)
    assert stats.zero_params == zeros and stats.total_params == 184_704
    assert stats.model_total_params == model.param_count()
    assert 0 < min(stats.per_layer.values()) and max(stats.per_layer.values()) < 1  # global, not per layer
