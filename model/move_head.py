"""A student move head, measured against ``har_seasonal`` on the same bars.

    python -m barsignal.model.move_head --data FUTURES_DIR... --spot SPOT_FILE --out DIR

The bundled student (``pruned.safetensors`` of ``--artifact``, its manifest's ``model`` config) with a
new linear head for y = |close[t+h] / close[t] - 1| > c, trained with BCE on the training split only
(the windows ``model.dataset`` splits out, normalized with the artifact's normalizer) and
early-stopped on validation log-loss. Two heads: ``frozen`` (the body kept, a head on its mean-pooled
encoding) and ``finetuned`` (body and head trained together, from the bundled weights), plus a
``+har`` stack (a train-fitted logistic on [head logit, log sigma_bp of har_seasonal]). Each is
scored with ``model.move.compare`` against ``har_seasonal`` (fitted on the same training split, as
``barsignal compress move`` fits it) on validation, the test split and ``--spot``: same windows,
same labels, day-bootstrap CIs of every metric and of the paired difference.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from barsignal.model import move as mv
from barsignal.model.dataset import DatasetSpec, WindowSet, all_windows, build, load_segments

HORIZON = 15
BATCH = 512


def artifact_student(artifact: Path) -> tuple[Any, Any]:
    """(the bundled student in eval mode with its direction weights, the artifact's normalizer)."""
    from safetensors.torch import load_file

    from barsignal.features.normalize import Normalizer
    from barsignal.model.informer import Informer, InformerConfig

    man = json.loads((artifact / "manifest.json").read_text())
    model = Informer(InformerConfig.from_dict(dict(man["model"])))
    model.load_state_dict(load_file(str(artifact / "pruned.safetensors")), strict=True)
    nz = man["features"]["normalization"]
    norm = Normalizer(np.asarray(nz["center"]), np.asarray(nz["scale"]), float(nz["clip"]))
    return model.eval(), norm


def refuse_test(ws: WindowSet, test_start_ms: int, what: str) -> None:
    """A fit on any window at or after the test split's start is refused."""
    if len(ws) and int(ws.times.max()) >= test_start_ms:
        raise ValueError(f"move head: {what} holds windows at or after the test split's start "
                         f"({test_start_ms} ms): only training and validation windows may fit the head")


def _encode(model: Any, ws: WindowSet) -> np.ndarray:
    import torch

    out = np.empty((len(ws), model.cfg.d_model), np.float32)
    with torch.inference_mode():
        for s in range(0, len(ws), 4096):
            idx = np.arange(s, min(s + 4096, len(ws)))
            out[idx] = model.encode(torch.from_numpy(ws.x(idx))).numpy()
    return out


def _logits(model: Any, ws: WindowSet) -> np.ndarray:
    import torch

    out = np.empty(len(ws), np.float64)
    model.eval()
    with torch.inference_mode():
        for s in range(0, len(ws), 4096):
            idx = np.arange(s, min(s + 4096, len(ws)))
            out[idx] = model(torch.from_numpy(ws.x(idx))).double().numpy()
    return out


def _bce(logit: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, logit) - y * logit))


def train_frozen(model: Any, train: WindowSet, ytr: np.ndarray, val: WindowSet, yv: np.ndarray,
                 test_start_ms: int, epochs: int = 30, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A linear head on the frozen body's encoding (BCE, Adam), the epoch with the lowest validation
    log-loss kept. Returns (a scorer ws -> logits, the log)."""
    import torch

    refuse_test(train, test_start_ms, "the training set")
    refuse_test(val, test_start_ms, "the early-stopping set")
    torch.manual_seed(seed)
    ztr, zv = torch.from_numpy(_encode(model, train)), torch.from_numpy(_encode(model, val))
    mu, sd = ztr.mean(0), ztr.std(0) + 1e-6
    head = torch.nn.Linear(ztr.shape[1], 1)
    torch.nn.init.zeros_(head.weight)
    head.bias.data.fill_(float(np.log(ytr.mean() / (1 - ytr.mean()))))
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    yt = torch.from_numpy(ytr.astype(np.float32))
    best, best_state, hist, bad = np.inf, None, [], 0
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for b in torch.randperm(len(ztr), generator=g).split(BATCH):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head((ztr[b] - mu) / sd).squeeze(-1), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            ll = _bce(head((zv - mu) / sd).squeeze(-1).double().numpy(), yv)
        hist.append(ll)
        if ll < best - 1e-6:
            best, best_state, bad = ll, copy.deepcopy(head.state_dict()), 0
        else:
            bad += 1
            if bad >= 3:
                break
    head.load_state_dict(best_state)

    def score(ws: WindowSet) -> np.ndarray:
        with torch.no_grad():
            z = torch.from_numpy(_encode(model, ws))
            return head((z - mu) / sd).squeeze(-1).double().numpy()

    return score, {"val_log_loss_by_epoch": hist, "best_epoch": int(np.argmin(hist)) + 1}


def train_finetuned(model: Any, train: WindowSet, ytr: np.ndarray, val: WindowSet, yv: np.ndarray,
                    test_start_ms: int, epochs: int = 3, lr: float = 3e-4, seed: int = 0
                    ) -> tuple[Any, dict[str, Any]]:
    """Body and a new head trained together from the bundled weights (BCE, AdamW, dropout on), the
    epoch with the lowest validation log-loss kept."""
    import torch

    refuse_test(train, test_start_ms, "the training set")
    refuse_test(val, test_start_ms, "the early-stopping set")
    torch.manual_seed(seed)
    net = copy.deepcopy(model)
    net.head = torch.nn.Linear(net.cfg.d_model, 1)
    torch.nn.init.zeros_(net.head.weight)
    net.head.bias.data.fill_(float(np.log(ytr.mean() / (1 - ytr.mean()))))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    yt = torch.from_numpy(ytr.astype(np.float32))
    best, best_state, hist, bad = np.inf, copy.deepcopy(net.state_dict()), [], 0
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for b in torch.randperm(len(train), generator=g).split(BATCH):
            idx = b.numpy()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(torch.from_numpy(train.x(idx))), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        ll = _bce(_logits(net, val), yv)
        hist.append(ll)
        if ll < best - 1e-6:
            best, best_state, bad = ll, copy.deepcopy(net.state_dict()), 0
        else:
            bad += 1
            if bad >= 2:
                break
    net.load_state_dict(best_state)
    net.eval()
    return (lambda ws: _logits(net, ws)), {"val_log_loss_by_epoch": hist, "best_epoch": int(np.argmin(hist)) + 1}


def run(data: list[str], spot: list[str], artifact: Path, thresholds: list[float], *, train_windows: int,
        val_windows: int, heads: list[str], epochs_frozen: int, epochs_finetuned: int, n_boot: int,
        log: Any = None, out: Path | None = None) -> dict[str, Any]:
    """Every head and har_seasonal on validation, test and each ``spot`` file, per threshold (written
    to ``out`` after each threshold when given)."""
    import torch

    from barsignal.model.baselines import Logistic

    t0 = time.monotonic()

    def say(msg: str) -> None:
        if log is not None:
            print(f"[{time.monotonic() - t0:6.0f}s] {msg}", file=log, flush=True)

    model, norm = artifact_student(artifact)
    segs = load_segments(data)
    sp = build(segs, DatasetSpec(window=30, horizon=HORIZON), normalizer=norm)
    assert sp.val_all is not None and sp.test_all is not None
    test_start = int(sp.info["test_start_ms"])
    mb = mv.MoveBars.of(segs)
    periods: list[tuple[str, mv.MoveBars, WindowSet]] = [("validation", mb, sp.val_all), ("test", mb, sp.test_all)]
    for path in spot:
        ss = load_segments([path])
        periods.append((Path(path).name, mv.MoveBars.of(ss), all_windows(ss, norm, 30, HORIZON)))
    train, stop = sp.train.every(train_windows), sp.val_all.every(val_windows)
    say(f"data: {len(sp.train)} train windows ({len(train)} used), {len(stop)} validation windows for stopping")
    res: dict[str, Any] = {"data": data, "spot": spot, "artifact": str(artifact), "horizon": HORIZON,
                           "train_windows": len(train), "stop_windows": len(stop), "bootstrap": n_boot,
                           "test_start_ms": test_start, "thresholds": {}}
    for c in thresholds:
        ytr, ys = mv.exceed(train, c), mv.exceed(stop, c)
        fitted = mv.fit(mb, sp.train, sp.val_all, HORIZON, c)
        _, sig_tr = mv.har_predict(fitted["forecaster"], HORIZON, c, mb, train.ends)
        r: dict[str, Any] = {"heads": {}, "periods": {}}
        scorers = {}
        for kind in heads:
            torch.manual_seed(0)
            if kind == "frozen":
                scorers[kind], r["heads"][kind] = train_frozen(model, train, ytr, stop, ys, test_start, epochs_frozen)
            else:
                scorers[kind], r["heads"][kind] = train_finetuned(model, train, ytr, stop, ys, test_start,
                                                                  epochs_finetuned)
            say(f"{c:g} bp: {kind} head trained {r['heads'][kind]}")
        stacks = {}
        ok = np.isfinite(sig_tr)
        for kind, sc in scorers.items():
            x = np.column_stack([sc(train), np.log(sig_tr)])[ok]
            stacks[kind] = Logistic.fit(x, ytr[ok], 1e-3)
        for name, m, ws in periods:
            p_har, sig = mv.har_predict(fitted["forecaster"], HORIZON, c, m, ws.ends)
            fc: dict[str, tuple[np.ndarray, np.ndarray | None]] = {"har_seasonal": (p_har, (sig / 1e4) ** 2)}
            for kind, sc in scorers.items():
                lg = sc(ws)
                fc[f"student_{kind}"] = (1.0 / (1.0 + np.exp(-lg)), None)
                fc[f"student_{kind}+har"] = (stacks[kind].predict(np.column_stack([lg, np.log(sig)])), None)
            rep = mv.compare(fc, mv.exceed(ws, c), m.forward_rv(ws.ends, HORIZON), ws.days, n_boot=n_boot)
            r["periods"][name] = {"horizon": HORIZON, "threshold_bp": c, **rep}
            say(f"{c:g} bp: {name} scored")
        res["thresholds"][str(c)] = r
        res["wall_s"] = time.monotonic() - t0
        if out is not None:
            write(res, out)
    return res


def write(res: dict[str, Any], out: Path) -> str:
    """``move_head.json`` and ``move_head.md`` in ``out``; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "move_head.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    text = to_markdown(res)
    (out / "move_head.md").write_text(text)
    return text


def to_markdown(res: dict[str, Any]) -> str:
    lines: list[str] = []
    for c, r in res["thresholds"].items():
        lines += [f"# Threshold {float(c):g} bp", ""]
        for kind, h in r["heads"].items():
            lines.append(f"- {kind}: best epoch {h['best_epoch']}, validation log-loss by epoch "
                         + ", ".join(f"{v:.4f}" for v in h["val_log_loss_by_epoch"]))
        lines.append("")
        for name, rep in r["periods"].items():
            lines += [*mv.report_md(rep, f"{name}, {float(c):g} bp"), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", required=True, help="the training bars (split chronologically)")
    ap.add_argument("--spot", nargs="*", default=[], help="other bars scored with the fitted heads")
    ap.add_argument("--artifact", default=str(Path(__file__).resolve().parents[1] / "engine" / "default_artifact"))
    ap.add_argument("--thresholds", type=float, nargs="+", default=[20.0, 10.0], metavar="BP")
    ap.add_argument("--heads", nargs="+", default=["frozen", "finetuned"], choices=["frozen", "finetuned"])
    ap.add_argument("--train-windows", type=int, default=100_000, help="evenly spaced training windows used")
    ap.add_argument("--val-windows", type=int, default=20_000, help="evenly spaced validation windows for stopping")
    ap.add_argument("--epochs-frozen", type=int, default=30)
    ap.add_argument("--epochs-finetuned", type=int, default=3)
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    res = run(args.data, args.spot, Path(args.artifact), args.thresholds, train_windows=args.train_windows,
              val_windows=args.val_windows, heads=args.heads, epochs_frozen=args.epochs_frozen,
              epochs_finetuned=args.epochs_finetuned, n_boot=args.bootstrap, log=sys.stderr, out=Path(args.out))
    sys.stdout.write(to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
