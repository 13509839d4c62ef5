"""systemd ``sd_notify`` over ``$NOTIFY_SOCKET`` (no dependency): READY, STATUS, STOPPING, WATCHDOG.

Without ``$NOTIFY_SOCKET`` (not under systemd) every call is a no-op. ``WATCHDOG=1`` is sent only
while data is fresh, so a stuck feed makes systemd restart the service after ``WatchdogSec``.
"""

from __future__ import annotations

import os
import socket

from barsignal.log import get_logger

log = get_logger(__name__)


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        ok_pid = not pid or pid == str(os.getpid())
        self.watchdog_s: float | None = int(usec) / 1e6 if usec.isdigit() and ok_pid else None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False when there is no socket or it failed."""
        if not self.address:
            return False
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)  # never block the event loop on a full receiver
            self._sock.sendto("\n".join(lines).encode(), addr)
            return True
        except BlockingIOError:
            return False
        except OSError as exc:
            log.warning("sd_notify_failed", socket=self.address, error=str(exc))
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
