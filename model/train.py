"""Training for the teacher or the student: AdamW, warm-up + cosine, early stopping on validation log-loss.

One entry point for one process and for ``torchrun`` (DistributedDataParallel: gloo on CPU, NCCL on
GPU). The batch size is global: every optimizer step sees the same windows whatever the world size
(each rank takes its slice), so a 2-process run follows the 1-process run up to float rounding and
BatchNorm's per-rank batch statistics. Seeded and deterministic on CPU; bf16 autocast on CUDA.

The output directory holds the best model so far (``model.safetensors`` + ``config.json``, see
``checkpoint``), ``train_state.pt`` (last weights, optimizer, schedule, RNG, counters: ``--resume``
continues from it) and ``history.json`` (one entry per epoch, throughput included).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from barsignal.log import get_logger
from barsignal.model import checkpoint
from barsignal.model.dataset import Splits, WindowSet
from barsignal.model.informer import Informer, InformerConfig

log = get_logger(__name__)

STATE = "train_state.pt"
HISTORY = "history.json"


@dataclass
class TrainConfig:
    kind: str = "teacher"  # which model: "teacher" or "student" (recorded in the checkpoint)
    epochs: int = 10
    batch_size: int = 256  # global: split evenly across DDP ranks
    lr: float = 5e-4  # peak learning rate
    weight_decay: float = 0.05
    warmup_frac: float = 0.05  # share of all steps spent warming up linearly, then cosine to 0
    grad_clip: float = 1.0
    patience: int = 3  # epochs without a better validation log-loss before stopping
    max_train_windows: int = 0  # windows per epoch (a fresh random subset each epoch); 0 = all
    max_val_windows: int = 0  # evenly spaced validation windows; 0 = all
    max_minutes: float = 0.0  # stop at an epoch end once the next epoch would pass this; 0 = no limit
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda"
    progress: bool = True
    meta: dict[str, Any] = field(default_factory=dict)  # extra checkpoint metadata (data, command)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this process group was made by init_distributed: end_distributed destroys it

    @property
    def on(self) -> bool:
        return self.world > 1


def init_distributed(device: str) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        d.owned = True
    return d


def end_distributed(d: Dist) -> None:
    """Destroy the process group :func:`init_distributed` made, while the interpreter is fully alive.

    Left to the interpreter's exit, the gloo backend's C++ worker threads may still be finishing a
    collective (the last ``all_gather_object``/``barrier``) whose tensors hold Python objects: the
    thread that drops them takes the GIL during finalization, Python ends that thread with
    ``pthread_exit``, and its forced unwind through a ``noexcept`` frame aborts the whole process
    (SIGABRT, "terminate called without an active exception"), after a run that succeeded.
    ``destroy_process_group`` joins those threads first."""
    if d.owned and dist.is_initialized():
        dist.destroy_process_group()
        d.owned = False


def pick_device(name: str, d: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device(name)


def _lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


@torch.no_grad()
def predict(model: Informer, ws: WindowSet, batch: int = 1024, device: torch.device | None = None,
            shard: Dist | None = None) -> np.ndarray:
    """Logits (N,) of ``ws`` in eval mode (teacher in deterministic export mode), restored after."""
    device = device or next(model.parameters()).device
    was_training, was_det = model.training, model.cfg.deterministic
    model.eval().export_mode(True)
    idx = np.arange(len(ws))
    if shard is not None and shard.on:
        idx = idx[shard.rank :: shard.world]
    out = []
    try:
        for s in range(0, len(idx), batch):
            x = torch.from_numpy(ws.x(idx[s : s + batch])).to(device)  # (B, T, F)
            out.append(model(x).float().cpu())  # (B,)
    finally:
        model.train(was_training).export_mode(was_det)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def val_logloss(model: Informer, ws: WindowSet, device: torch.device, d: Dist) -> float:
    """Mean binary log-loss over ``ws``, sharded over ranks and summed across them."""
    idx = np.arange(len(ws))[d.rank :: d.world] if d.on else np.arange(len(ws))
    logits = torch.from_numpy(predict(model, ws, device=device, shard=d))
    y = torch.from_numpy(ws.labels[idx])
    tot = torch.tensor([F.binary_cross_entropy_with_logits(logits, y, reduction="sum").item(), len(idx)],
                       dtype=torch.float64)
    if d.on:
        dist.all_reduce(tot)
    return float(tot[0] / tot[1])


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for k, v in sorted(checkpoint._unwrap(model).state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(splits: Splits, model_cfg: InformerConfig, tc: TrainConfig, out: str | os.PathLike[str],
          resume: bool = False) -> dict[str, Any]:
    """Train (or resume) and return the summary; rank 0 writes the checkpoint into ``out``. Under torchrun
    the process group is joined here and destroyed before returning (:func:`end_distributed`)."""
    d = init_distributed("cuda" if tc.device == "cuda" or (tc.device == "auto" and torch.cuda.is_available())
                         else "cpu")
    try:
        return _train(d, splits, model_cfg, tc, Path(out), resume)
    finally:  # after _train's frame (the DDP wrapper and its reducer) is gone
        end_distributed(d)


def _train(d: Dist, splits: Splits, model_cfg: InformerConfig, tc: TrainConfig, out: Path,
           resume: bool) -> dict[str, Any]:
    device = pick_device(tc.device, d)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(tc.seed)  # same initial weights on every rank
    model = Informer(model_cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    n_epoch = len(splits.train) if tc.max_train_windows <= 0 else min(tc.max_train_windows, len(splits.train))
    if tc.batch_size % d.world:
        raise ValueError(f"batch size {tc.batch_size} is not divisible by the world size {d.world}")
    steps = max(1, n_epoch // tc.batch_size)
    total = steps * tc.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, max(1, int(tc.warmup_frac * total))))
    val = splits.val.every(tc.max_val_windows)

    start_epoch, best, bad, history = 0, math.inf, 0, []
    if resume and (out / STATE).is_file():
        st = torch.load(out / STATE, map_location=device, weights_only=False)
        if st["model_config"] != model_cfg.to_dict():
            raise ValueError(f"{out / STATE} was trained with another model config; use a new --out")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        start_epoch, best, bad, history = st["epoch"], st["best"], st["bad"], st["history"]
        torch.set_rng_state(st["rng"][d.rank % len(st["rng"])])
        log.info("resumed", out=str(out), epoch=start_epoch, best_val_logloss=best)
    else:
        torch.manual_seed(tc.seed + d.rank)  # dropout / ProbSparse sampling differ per rank

    net: torch.nn.Module = model
    if d.on:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    amp = device.type == "cuda"
    per_rank = tc.batch_size // d.world
    meta = {"kind": tc.kind, "window": splits.spec.window, "horizon": splits.spec.horizon,
            "flat_band": splits.spec.flat_band, "normalizer": splits.normalizer.to_dict(),
            "dataset": splits.info, **tc.meta}
    try:
        from barsignal.features.spec import schema_hash

        meta["schema_hash"] = schema_hash()
    except ImportError:  # pragma: no cover - the features package always has it
        pass
    if d.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        log.info("training", kind=tc.kind, params=model.param_count(), train_windows=len(splits.train),
                 per_epoch=steps * tc.batch_size, val_windows=len(val), world=d.world, device=str(device))

    t_start = time.perf_counter()
    stop_reason = "epochs"
    for epoch in range(start_epoch, tc.epochs):
        t0 = time.perf_counter()
        perm = np.random.default_rng([tc.seed, epoch]).permutation(len(splits.train))[: steps * tc.batch_size]
        net.train()
        loss_sum = torch.zeros(2, dtype=torch.float64)
        bar = tqdm(total=steps, desc=f"{tc.kind} epoch {epoch + 1}/{tc.epochs}", unit="step",
                   disable=not tc.progress or d.rank != 0, mininterval=1.0, leave=False)
        for s in range(steps):
            g = perm[s * tc.batch_size : (s + 1) * tc.batch_size]
            local = g[d.rank * per_rank : (d.rank + 1) * per_rank]
            x = torch.from_numpy(splits.train.x(local)).to(device, non_blocking=True)  # (b, T, F)
            y = torch.from_numpy(splits.train.labels[local]).to(device)  # (b,)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(x)  # (b,)
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            sched.step()
            loss_sum += torch.tensor([loss.item() * len(local), len(local)], dtype=torch.float64)
            if s % 10 == 0 or s == steps - 1:
                rate = (s + 1) * tc.batch_size / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss.item():.4f}", win_s=f"{rate:,.0f}")
            bar.update(1)
        bar.close()
        train_time = time.perf_counter() - t0
        if d.on:
            dist.all_reduce(loss_sum)
            # DDP syncs buffers (BatchNorm running statistics) at the start of each forward; the last
            # forward left each rank with its own. Take rank 0's, as the next forward would.
            for buf in model.buffers():
                dist.broadcast(buf, src=0)
        train_loss = float(loss_sum[0] / loss_sum[1])
        vloss = val_logloss(model, val, device, d)
        improved = vloss < best - 1e-6
        best, bad = (vloss, 0) if improved else (best, bad + 1)
        entry = {"epoch": epoch + 1, "train_logloss": train_loss, "val_logloss": vloss,
                 "lr": sched.get_last_lr()[0], "train_windows": steps * tc.batch_size,
                 "train_seconds": round(train_time, 3),
                 "windows_per_s": round(steps * tc.batch_size / train_time, 1),
                 "epoch_seconds": round(time.perf_counter() - t0, 3)}
        history.append(entry)
        if d.rank == 0:
            if improved:
                checkpoint.save(model, out, meta={**meta, "epoch": epoch + 1, "val_logloss": vloss})
            rng = [torch.get_rng_state()]
            if d.on:
                gathered: list[Any] = [None] * d.world
                dist.all_gather_object(gathered, torch.get_rng_state())
                rng = gathered
            _atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                "scheduler": sched.state_dict(), "epoch": epoch + 1, "best": best, "bad": bad,
                                "history": history, "rng": rng, "model_config": model_cfg.to_dict(),
                                "train_config": asdict(tc)}, out / STATE)
            (out / HISTORY).write_text(json.dumps(history, indent=1) + "\n")
            log.info("epoch", **entry, best_val_logloss=best, improved=improved)
        elif d.on:
            dist.all_gather_object([None] * d.world, torch.get_rng_state())
        elapsed = time.perf_counter() - t_start
        stop = torch.tensor([0], dtype=torch.int64)
        if bad >= tc.patience:
            stop_reason, stop[0] = "early stopping", 1
        elif tc.max_minutes and elapsed + entry["epoch_seconds"] > tc.max_minutes * 60:
            stop_reason, stop[0] = "time budget", 1
        if d.on:
            dist.broadcast(stop, src=0)
        if stop[0]:
            break
    digests = [weights_digest(model)]
    if d.on:
        gathered_d: list[Any] = [None] * d.world
        dist.all_gather_object(gathered_d, digests[0])
        digests = gathered_d
    summary = {"kind": tc.kind, "out": str(out), "epochs_run": len(history), "stop": stop_reason,
               "best_val_logloss": best, "history": history, "world": d.world,
               "rank_weight_digests": digests, "wall_seconds": round(time.perf_counter() - t_start, 1)}
    if d.rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if d.on:
        dist.barrier()
    return summary
