"""Which label? Train-fitted baselines on the validation split for each candidate label.

    python -m barsignal.model.label_probe --data DIR... [--json]

For the direction over h in {1, 5, 15} bars (ties dropped) and, per h, the volatility-scaled flat
band (``--flat-band k``: |r_h| <= k * rvol30 * sqrt(h) dropped), it fits the L2 logistic and the
-rsi6 baselines on the TRAINING split only and reports on validation: their direction AUC, the
tie share, the mean |r_h| in bp against the 22 bp round trip the paper broker charges (10 bp fee
+ 1 bp slippage per fill), and the share of moves larger than that. The default label is the
one with the most validated skill whose moves can pay the costs (docs/MODEL.md). numpy only.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from barsignal.engine.metrics import roc_auc
from barsignal.features.spec import INDEX
from barsignal.model import baselines as bl
from barsignal.model.dataset import DatasetSpec, build, load_segments

ROUND_TRIP_BP = 22.0  # 2 x (10 bp fee + 1 bp slippage)


def probe(segments: list[Any], horizons: tuple[int, ...] = (1, 5, 15), flat_band: float = 0.5
          ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for h in horizons:
        for k in (0.0, flat_band):
            sp = build(segments, DatasetSpec(window=30, horizon=h, flat_band=k))
            params = bl.fit(sp.train, k)
            full = sp.val_all
            assert full is not None and full.ret is not None
            val = sp.val
            pred = bl.predict(params, val)
            r = np.abs(full.ret) * 1e4
            row = {"horizon": h, "flat_band": k, "val_windows": len(val),
                   "tied_share": float(full.tied.mean()) if full.tied is not None else 0.0,
                   "auc_logistic": roc_auc(val.labels, pred["logistic"][1]),
                   "auc_neg_rsi6": roc_auc(val.labels, -val.last_rows()[:, INDEX["rsi6"]]),
                   "mean_abs_move_bp": float(r.mean()),
                   "share_moves_above_round_trip": float((r > ROUND_TRIP_BP).mean())}
            if "volatility" in pred:
                row["auc_volatility_only"] = roc_auc(val.labels, pred["volatility"][1])
            out[f"h{h}" + (f"_band{k:g}" if k else "")] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m barsignal.model.label_probe", description=__doc__)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--bars", nargs="+", action="extend", metavar="FILE", help="bar files or directories")
    g.add_argument("--data", dest="bars", nargs="+", action="extend", default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # the older spelling of --bars
    ap.add_argument("--flat-band", type=float, default=0.5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    res = probe(load_segments(args.bars), flat_band=args.flat_band)
    if args.json:
        print(json.dumps(res))
        return 0
    cols = ("val_windows", "tied_share", "auc_logistic", "auc_neg_rsi6", "auc_volatility_only",
            "mean_abs_move_bp", "share_moves_above_round_trip")
    sys.stdout.write("| label | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 1) + "|\n")
    for name, row in res.items():
        cells = [f"{row[c]:.4f}" if isinstance(row.get(c), float) else str(row.get(c, "-")) for c in cols]
        sys.stdout.write(f"| {name} | " + " | ".join(cells) + " |\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
