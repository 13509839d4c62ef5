"""``GET /api/v3/exchangeInfo`` for the served symbols, in Binance's shape.

The fields are those of Binance's spot response that clients read: ccxt's ``parse_market`` reads
``symbol``, ``status``, ``baseAsset``, ``quoteAsset``, the precisions, ``permissions`` and the
``PRICE_FILTER``/``LOT_SIZE``/``NOTIONAL`` filters. The tick and lot sizes are the finest steps the
served bars show (the fewest decimals that write every close and volume), not Binance's listing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from barsignal.sim.series import Tape, split_symbol

RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
    {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
]
ORDER_TYPES = ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT",
               "TAKE_PROFIT_LIMIT"]


def _step(decimals: int) -> str:
    return f"{10.0 ** -decimals:.8f}"


def symbol_info(tape: Tape, status: str = "TRADING") -> dict[str, Any]:
    """One ``symbols[]`` entry, as Binance lists a spot pair (``status``: TRADING, BREAK, HALT...)."""
    base, quote = split_symbol(tape.symbol)
    tick, lot = _step(tape.tick_decimals), _step(tape.lot_decimals)
    return {
        "symbol": tape.symbol, "status": status,
        "baseAsset": base, "baseAssetPrecision": 8, "quoteAsset": quote, "quotePrecision": 8,
        "quoteAssetPrecision": 8, "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
        "orderTypes": ORDER_TYPES, "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": True, "cancelReplaceAllowed": True,
        "amendAllowed": False, "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000.00000000", "tickSize": tick},
            {"filterType": "LOT_SIZE", "minQty": lot, "maxQty": "9000000.00000000", "stepSize": lot},
            {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "9000000.00000000",
             "stepSize": "0.00000000"},
            {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
             "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
        ],
        "permissions": [], "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


def exchange_info(tapes: Sequence[Tape], params: Mapping[str, str], *, server_time: int,
                  status: Mapping[str, str] | None = None) -> tuple[int, Any]:
    """``(status, body)`` for ``/api/v3/exchangeInfo``; ``symbol=X`` or ``symbols=["X","Y"]`` narrow it
    (an unknown one is Binance's 400 ``-1121 Invalid symbol.``, which does not say which).
    ``status`` overrides a symbol's TRADING (a halt or a break); ``DELISTED`` unlists it."""
    st = dict(status or {})
    tapes = [t for t in tapes if st.get(t.symbol) != "DELISTED"]
    by_symbol = {t.symbol: t for t in tapes}
    wanted: Iterable[str] = list(by_symbol)
    try:
        if params.get("symbol"):
            wanted = [params["symbol"].upper()]
        elif params.get("symbols"):
            wanted = [str(s).upper() for s in orjson.loads(params["symbols"])]
    except (orjson.JSONDecodeError, TypeError):
        return 400, {"code": -1100, "msg": "Illegal characters found in parameter 'symbols'."}
    missing = [s for s in wanted if s not in by_symbol]
    if missing:
        return 400, {"code": -1121, "msg": "Invalid symbol."}
    return 200, {"timezone": "UTC", "serverTime": server_time, "rateLimits": RATE_LIMITS,
                 "exchangeFilters": [], "symbols": [symbol_info(by_symbol[s], st.get(s, "TRADING")) for s in wanted]}


def no_markets(*, server_time: int) -> dict[str, Any]:
    """The futures exchangeInfo (``/fapi/v1``, ``/dapi/v1``): this feed lists no contracts."""
    return {"timezone": "UTC", "serverTime": server_time, "rateLimits": RATE_LIMITS, "exchangeFilters": [],
            "assets": [], "symbols": []}
