"""``barsignal features check --bars FILE...``: the feature parity checks on real bar files.

For each file: ``update()`` bar by bar against the batch path (bit for bit), restart parity at the
middle of the file (``spec.RESTART_WARMUP_BARS`` bars of warm-up, within ``spec.REL_TOL_RESTART``),
and the TA-Lib-referenced features against TA-Lib (within ``spec.REL_TOL_TALIB``). Prints the worst
difference per feature and check; exits 1 when any bound is broken. ``--json``: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from barsignal.cli import conventions as conv


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="feature schema and parity checks")
    cmds = p.add_subparsers(dest="features_command", metavar="SUBCOMMAND", required=True)
    c = cmds.add_parser("check", help="incremental vs batch, restart parity and TA-Lib checks on bar files")
    conv.add_bars(c, "bar files (CSV, zip, freqtrade JSON, Parquet)", required=True, positional=True)
    conv.add_json(c, "the checks instead of tables")
    c.add_argument("--gap-policy", default="continue", choices=["continue", "reset"],
                   help="gap policy for the incremental and restart checks (TA-Lib runs on the rows)")
    c.set_defaults(func=_check)
    s = cmds.add_parser("schema", help="print the feature names, warm-ups and schema hash")
    conv.add_json(s, "the schema")
    s.set_defaults(func=_schema)


def _fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2e}"


def _check_file(path: str, gap_policy: str) -> dict[str, object]:
    from barsignal.data import load
    from barsignal.features import reference as ref
    from barsignal.features.spec import RESTART_WARMUP_BARS

    loaded = load(path)
    frame, rep = loaded.frame, loaded.report
    interval = rep.interval_ms or 60_000
    checks: dict[str, object] = {}
    results = []
    if interval != 60_000:
        return {"file": path, "ok": False, "rows": len(frame), "error":
                f"interval {interval} ms: the features are defined on 1-minute bars"}
    inc = ref.check_incremental(frame, gap_policy)
    results.append(inc)
    if len(frame) // 2 >= RESTART_WARMUP_BARS:
        results.append(ref.check_restart(frame, gap_policy=gap_policy))
    else:
        checks["restart_parity"] = {"ok": None, "note": f"file shorter than 2 x {RESTART_WARMUP_BARS} bars"}
    try:
        results.append(ref.check_talib(frame))
    except ImportError:
        checks["talib"] = {"ok": None, "note": "talib is not installed (pip install ta-lib): not checked"}
    for r in results:
        checks[r.name] = r.to_dict()
    ok = all(r.ok for r in results)
    return {"file": path, "rows": len(frame), "gaps": len(rep.gaps), "missing_bars": rep.missing,
            "ok": ok, "checks": checks}


def _check(args: argparse.Namespace) -> int:
    from barsignal.features.spec import N_FEATURES, NAMES, schema_hash

    files = [_check_file(p, args.gap_policy) for p in args.bars]
    ok = all(f["ok"] for f in files)
    if args.json:
        print(json.dumps({"ok": ok, "schema_hash": schema_hash(), "gap_policy": args.gap_policy,
                          "files": files}))
        return 0 if ok else 1
    for f in files:
        print(f"== {f['file']}: {f['rows']} bars, {f.get('gaps', 0)} gaps -> {'OK' if f['ok'] else 'FAILED'}")
        if "error" in f:
            print(f"   {f['error']}")
            continue
        ch = f["checks"]
        order = ("incremental_vs_batch", "restart_parity", "talib")
        heads = {"incremental_vs_batch": "incr-batch abs", "restart_parity": "restart rel",
                 "talib": "talib rel"}
        for name in order:
            c = ch.get(name, {})
            if c.get("ok") is None:
                print(f"   {name}: not checked ({c.get('note', '')})")
            else:
                extra = f", {c['note']}" if c["note"] else ""
                extra += f", {c['skipped']} values skipped" if c["skipped"] else ""
                print(f"   {name}: {'ok' if c['ok'] else 'BROKEN'} (bound {c['bound']:g}{extra})")
        print(f"   {'feature':<12} " + " ".join(f"{heads[n]:>15}" for n in order))
        for k in range(N_FEATURES):
            vals = [ch.get(n, {}).get("worst", {}).get(NAMES[k], float("nan")) for n in order]
            print(f"   {NAMES[k]:<12} " + " ".join(f"{_fmt(v):>15}" for v in vals))
    print("features check:", "OK" if ok else "FAILED")
    return 0 if ok else 1


def _schema(args: argparse.Namespace) -> int:
    from barsignal.features import spec

    if args.json:
        print(json.dumps({**spec.schema(), "schema_hash": spec.schema_hash(), "warmup_bars": spec.WARMUP_BARS,
                          "restart_warmup_bars": spec.RESTART_WARMUP_BARS}))
        return 0
    print(f"schema {spec.schema_hash()}  warm-up {spec.WARMUP_BARS} bars  "
          f"restart warm-up {spec.RESTART_WARMUP_BARS} bars")
    for i, (n, w) in enumerate(zip(spec.NAMES, spec.WARMUP, strict=True)):
        print(f"{i:3d} {n:<12} warm-up {w}")
    sys.stdout.flush()
    return 0
