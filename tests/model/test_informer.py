"""The Informer teacher and student: shapes, ProbSparse facts, determinism, pruned configs, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from barsignal.model import checkpoint
from barsignal.model.informer import (
    Informer,
    InformerConfig,
    export_mode_shift,
    flops_per_window,
    probsparse_budget,
    student_config,
    teacher_config,
)


def _windows(n: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 30, 33, generator=g)  # (N, T, F), like normalized features


def test_shapes_and_sizes() -> None:
    x = _windows(4)
    for cfg, d in ((teacher_config(), 128), (student_config(), 96)):
        m = Informer(cfg).eval()
        assert m(x).shape == (4,)
        assert m.encode(x).shape == (4, d)
    assert Informer(student_config()).param_count() < Informer(teacher_config()).param_count() / 4


def test_probsparse_keeps_20_of_30_and_is_random_in_eval() -> None:
    assert probsparse_budget(30, 5) == (20, 20)  # u = 5 * ceil(ln 30) = 20 queries, 20 sampled keys
    assert probsparse_budget(15, 5) == (15, 15)  # after one distil layer: every query, i.e. full
    torch.manual_seed(0)
    t = Informer(teacher_config()).eval()
    x = _windows()
    with torch.no_grad():
        a, b = t(x), t(x)
    assert not torch.equal(a, b), "sampled ProbSparse should differ between two eval calls"


def test_teacher_export_mode_is_deterministic_and_close_to_sampled_mode() -> None:
    torch.manual_seed(1)
    t = Informer(teacher_config()).eval()
    x = _windows(64)
    shift = export_mode_shift(t, x, repeats=8)
    print(f"export mode shift (untrained teacher): {shift}")
    assert not t.cfg.deterministic  # left as found
    with torch.no_grad():
        t.export_mode(True)
        assert torch.equal(t(x), t(x))
    # Export mode sits within the sampled mode's own noise (same order of magnitude), and moves p
    # by far less than a probability bin.
    assert shift["mean_abs_shift"] <= 3 * shift["sampled_mean_abs_spread"] + 1e-6
    assert shift["max_abs_shift"] < 0.05


def test_student_is_deterministic_and_batch_independent() -> None:
    torch.manual_seed(2)
    s = Informer(student_config()).eval()
    x = _windows(8)
    with torch.no_grad():
        full = s(x)
        assert torch.equal(full, s(x))
        one_by_one = torch.cat([s(x[i : i + 1]) for i in range(8)])
    torch.testing.assert_close(one_by_one, full, rtol=1e-5, atol=1e-6)


def test_flops_match_a_hand_count_for_the_student() -> None:
    cfg = student_config()
    T, F_, D, FF = cfg.window, cfg.n_features, cfg.d_model, cfg.d_ff

    def layer(L: int) -> int:
        return 4 * L * D * D * 2 + 2 * L * L * D * 2 + 2 * L * D * FF * 2

    expected = T * F_ * 3 * D * 2 + layer(T) + T * D * D * 3 * 2 + layer(math.ceil(T / 2)) + D * 2
    assert flops_per_window(Informer(cfg)) == expected


def test_pruned_config_rebuilds_with_per_layer_heads_and_ffn(tmp_path) -> None:
    cfg = student_config(layer_heads=(1, 2), layer_d_ff=(64, 128), head_dim=48)
    m = Informer(cfg).eval()
    assert m.layers[0].attn.q.out_features == 48 and m.layers[0].ff1.out_features == 64
    checkpoint.save(m, tmp_path)
    back = checkpoint.load(tmp_path)
    assert back.cfg == cfg
    with pytest.raises(ValueError, match="layer_heads"):
        student_config(layer_heads=(1,))


@pytest.mark.parametrize("make", [teacher_config, student_config])
def test_checkpoint_round_trip_is_exact(tmp_path, make) -> None:
    torch.manual_seed(3)
    m = Informer(make()).train()
    m(_windows(32))  # move BatchNorm running statistics off their defaults
    m.eval().export_mode(True)
    checkpoint.save(m, tmp_path, meta={"horizon": 1})
    back = checkpoint.load(tmp_path)
    cfg, meta = checkpoint.read_config(tmp_path)
    assert cfg == m.cfg and meta == {"horizon": 1}
    x = _windows(8, seed=9)
    with torch.no_grad():
        assert torch.equal(back(x), m(x))


def test_bad_checkpoint_is_a_clear_error(tmp_path) -> None:
    from barsignal.errors import ArtifactError

    with pytest.raises(ArtifactError, match=r"config\.json is missing"):
        checkpoint.load(tmp_path)
    (tmp_path / "config.json").write_text('{"format": "barsignal-informer", "version": 1, '
                                          '"config": {"d_modle": 3}}')
    with pytest.raises(ArtifactError, match="d_modle"):
        checkpoint.load(tmp_path)


def test_config_json_round_trip() -> None:
    cfg = teacher_config(layer_heads=[8, 4, 4, 2])
    assert InformerConfig.from_dict(cfg.to_dict()) == cfg
