"""Paper trading: a pure broker state machine, its SQLite ledger, the sink, the backtest report.

Importing this package registers the ``paper`` sink (``register_sink("paper", PaperSink)``).
"""

from barsignal.daemon.paper.ledger import Applied, PaperLedger
from barsignal.daemon.paper.sink import PaperSink
from barsignal.daemon.sinks.registry import register_sink
from barsignal.engine.broker import Account, EquityRow, Fill, Rules, step

register_sink("paper", PaperSink)

__all__ = ["Account", "Applied", "EquityRow", "Fill", "PaperLedger", "PaperSink", "Rules", "step"]
