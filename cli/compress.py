"""``barsignal compress``: teacher -> distilled, pruned, quantized student -> report + artifact.

``barsignal compress --config compression.toml`` runs every stage; ``barsignal compress STAGE`` runs
one (distill, prune, export, quantize, report, engine); ``barsignal compress serving`` rewrites an
existing artifact's FP32 static graph as the batch-1 serving graph (``compression/batch1.py``);
``barsignal compress move --bars FILE...`` fits the move-size forecast into an existing artifact
(``compression/move.py``), and ``barsignal compress drift-bounds`` writes the drift PSI's
calibrated bounds into one (``compression/drift_bounds.py``).
``--set section.key=value`` overrides a config key for one run. No torch at import time: the handler
imports the pipeline.
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from typing import Any

from barsignal.cli import conventions as conv

STAGE_HELP = {
    "distill": "distil the teacher into the student (and train the no-KD baseline)",
    "prune": "structured pruning (heads, FFN channels, layers) + fine-tuning; magnitude-pruning stats",
    "export": "FP32 ONNX of teacher, student and pruned student, with parity against PyTorch",
    "quantize": "FP16, INT8 dynamic, INT8 static QDQ and QAT variants, with diagnostics and sensitivity",
    "report": "one table measured in one run (report.md/.json + PNGs) and the artifact",
    "engine": "TensorRT engines from the ONNX variants (needs tensorrt and an NVIDIA GPU)",
    "serving": "rewrite an artifact's FP32 static graph as the batch-1 serving graph (from its weights), "
               "measured against the exported one on real windows",
    "move": "fit the move-size forecast (P(|r_h| > c)) and its baselines on the training split of --bars "
            "and write the manifest's move section into an existing artifact",
    "drift-bounds": "compute the drift PSI's bounds (the 99.5th percentile of the PSI of training windows of "
                    "consecutive rows, per feature and window size) and write them into an artifact",
    "all": "every stage but engine, serving, move and drift-bounds, in order (the default)",
}


def _common(p: argparse.ArgumentParser, suppress: bool) -> None:
    d: Any = argparse.SUPPRESS if suppress else None
    p.add_argument("--config", default=d, metavar="TOML", help="compression config (default: built-in)")
    p.add_argument("--teacher", default=d, metavar="DIR", help="override [data] teacher")
    p.add_argument("--workdir", default=d, metavar="DIR", help="override [output] workdir")
    p.add_argument("--artifact", default=d, metavar="DIR", help="override [output] artifact")
    p.add_argument("--set", dest="overrides", action="append", default=d if suppress else [],
                   metavar="SECTION.KEY=VALUE", help="override one config key (repeatable)")
    p.add_argument("--json", action="store_true", default=d if suppress else False,
                   help="print the stages' summary as one JSON document on stdout")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="distil, prune, quantize and export the model; write the report",
                       description=__doc__)
    _common(p, suppress=False)
    stages = p.add_subparsers(dest="stage", metavar="STAGE")
    for name, text in STAGE_HELP.items():
        sp = stages.add_parser(name, help=text, description=text)
        _common(sp, suppress=True)
        if name == "engine":
            sp.add_argument("--version-compatible", action="store_true",
                            help="build VERSION_COMPATIBLE engines")
        if name == "serving":
            conv.add_bars(sp, "a bar file whose windows the graphs are compared on", required=True,
                          aliases=("--data",))
            conv.add_out(sp, "write the rewritten artifact here (default: in place)", default=None)
        if name == "move":
            conv.add_bars(sp, "bar files or directories split as the model's were (default: [data] bars)",
                          required=False)
            conv.add_out(sp, "write the rewritten artifact here (default: in place)", default=None)
        if name == "drift-bounds":
            conv.add_bars(sp, "the bars the artifact's model was trained on (checked against its training bins)",
                          required=True, aliases=("--data",))
            conv.add_out(sp, "write the rewritten artifact here (default: in place)", default=None)
    p.set_defaults(func=_run, stage=None)


def _value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_config(args: argparse.Namespace) -> Any:
    import msgspec

    from barsignal.compression import config as cc
    from barsignal.errors import ConfigError

    cfg = cc.load(args.config)
    raw = msgspec.to_builtins(cfg)
    for item in args.overrides or []:
        key, sep, value = item.partition("=")
        section, dot, field = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. distill.epochs=3")
        if section not in raw or field not in raw[section]:
            raise ConfigError(f"--set {item!r}: unknown key {key!r}; see compression.toml")
        raw[section][field] = _value(value)
    if args.teacher:
        raw["data"]["teacher"] = args.teacher
    if args.workdir:
        raw["output"]["workdir"] = args.workdir
    if args.artifact:
        raw["output"]["artifact"] = args.artifact
    try:
        return msgspec.convert(raw, type=cc.CompressionConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"compression config: {exc}") from None


def _run(args: argparse.Namespace) -> int:
    import shlex

    from barsignal.compression import pipeline

    cfg = load_config(args)
    stage = args.stage or "all"
    t0 = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    command = "barsignal " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if stage == "serving":
        from pathlib import Path

        from barsignal.compression.batch1 import rewrite_artifact
        from barsignal.errors import ConfigError

        if len(args.bars) != 1:
            raise ConfigError(f"compress serving: --bars takes one bar file, not {len(args.bars)}")
        src = Path(args.artifact or cfg.output.artifact)
        info = rewrite_artifact(src, Path(args.out or src), Path(args.bars[0]), command=command)
        if args.json:
            conv.print_json(info)
            return 0
        print(f"serving graph: {info['nodes']} nodes against {info['against']} ({info['exported_nodes']}), "
              f"max |dp| {info['max_abs_dp_vs_exported']:.3g} over {info['windows']} windows "
              f"({info['identical_fraction']:.1%} identical), batch-1 p50 {info['latency_p50_us']:.1f} us "
              f"vs {info['exported_latency_p50_us']:.1f} us, batch drift {info['batch_drift']:.3g}")
        return 0
    if stage == "move":
        from pathlib import Path

        from barsignal.compression import move
        from barsignal.errors import ConfigError

        src = Path(args.artifact or cfg.output.artifact)
        bars = args.bars or list(cfg.data.bars)
        if not bars:
            raise ConfigError("compress move: give --bars FILE... (the bars the model was trained on) or [data] bars")
        art, sec = move.write(src, Path(args.out or src), bars, cfg.move, command=command)
        v = sec["validation"]["scores"]
        print(f"move: {sec['kind']} P(|r_{sec['horizon']}| > {sec['threshold_bp']:g} bp), calibration "
              f"{sec['params']['calib']['kind']}, online rate {sec['params']['calib'].get('eta', 0.0):g}; "
              f"validation log-loss {v['har_seasonal']['log_loss']:.4f}, "
              f"AUC {v['har_seasonal']['roc_auc']:.4f}, ECE {v['har_seasonal']['ece']:.4f}; artifact {art.path} "
              f"manifest {art.hash[:12]}")
        return 0
    if stage == "drift-bounds":
        from pathlib import Path

        from barsignal.compression.drift_bounds import write

        src = Path(args.artifact or cfg.output.artifact)
        b, wrote = write(src, args.bars, dest=Path(args.out) if args.out else None, command=command)
        i = b["sizes"].index(1440) if 1440 in b["sizes"] else -1
        worst = max(range(len(b["bounds"][i])), key=b["bounds"][i].__getitem__)
        print(f"drift bounds: {b['quantile']:.1%} of the PSI of {b['windows'][i]} training windows of "
              f"{b['sizes'][i]} rows, per feature {min(b['bounds'][i]):.3f}..{max(b['bounds'][i]):.3f} (largest: "
              f"feature {worst}); held out, windows with a feature over its bound: validation "
              f"{b['held_out']['validation'].get(str(b['sizes'][i]), float('nan')):.2%}, test "
              f"{b['held_out']['test'].get(str(b['sizes'][i]), float('nan')):.2%}; "
              f"{'written to ' + str(args.out or src) if wrote else 'the artifact already has them: not rewritten'}")
        return 0
    if stage == "engine":
        ctx = pipeline.Context(cfg, progress)
        out = pipeline.stage_engine(ctx, version_compatible=args.version_compatible)
        if args.json:
            conv.print_json(out)
        else:
            print(out)
        return 0
    stages = pipeline.STAGES if stage == "all" else (stage,)
    out = pipeline.run(cfg, stages, command=command, progress=progress)
    if args.json:
        conv.print_json({"stages": list(stages), "workdir": str(cfg.output.workdir), "summary": out})
    elif "report" in out:
        r = out["report"]
        print(f"report: {cfg.output.workdir}/report/report.md; artifact: {r['artifact']['path']} "
              f"(default variant {r['selected_variant']}, {r['artifact']['bytes'] / 1e6:.2f} MB)")
    else:
        print(f"done: {', '.join(stages)} in {time.monotonic() - t0:.0f} s; outputs in {cfg.output.workdir}")
    return 0
