"""The writer thread's batches, as a caller waiting on a flush sees them."""

from __future__ import annotations

import time

from barsignal.daemon.writer import WriterThread


def test_a_flush_returns_only_once_its_batch_is_fully_done() -> None:
    """A caller woken by ``flush`` sees the batch counted, ``after_commit`` run and no failure left
    (futures used to resolve before that bookkeeping: a test read ``failing`` still set)."""
    seen = []
    w = WriterThread("t", after_commit=lambda: (time.sleep(0.05), seen.append("after_commit")))
    try:
        assert w.flush(10)  # one job (the flush's own), one batch
        assert seen == ["after_commit"] and w.batches == 1 and w.failing is None
    finally:
        w.close()
