"""Being a well-behaved systemd service: sd_notify, the watchdog rule, journald logging.

sd_notify is a datagram of ``KEY=VALUE`` lines sent to the unix socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). Without the variable,
every call is a no-op, so the daemon behaves the same outside systemd.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

log = logging.getLogger(__name__)

# syslog priorities, which journald reads from a "<N>" line prefix.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class Notifier:
    """Sends sd_notify messages; a no-op when not started by systemd."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._sock: socket.socket | None = None
        self._address = ""
        if address:
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given."""
        return self._sock is not None

    def notify(self, **fields: str | int) -> None:
        """Send ``KEY=VALUE`` lines, e.g. ``notify(READY=1, STATUS="up")``."""
        if self._sock is None:
            return
        text = "\n".join(f"{k}={str(v).replace(chr(10), ' ')}" for k, v in fields.items())
        try:
            self._sock.sendto(text.encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self._address.lstrip("\0"), exc)

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()


def watchdog_interval_ns() -> int | None:
    """Half of ``$WATCHDOG_USEC`` (how often to ping), if this process is the one watched."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) * 1000 // 2
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Liveness:
    """What the watchdog rule reads, all times on the realtime clock (ns)."""

    now_ns: int
    started_ns: int
    last_sample_ns: int | None
    last_window_ns: int | None
    oldest_pending_ns: int | None
    stall_ns: int


def alive(state: Liveness) -> tuple[bool, str]:
    """Whether the pipeline is alive: windows flow, or the rig is idle for a known reason.

    Wedged means: samples keep arriving but no window has closed for ``stall_ns``, or a
    batch has waited for the model for ``stall_ns``. A rig with no samples at all is idle
    (its sources are down or quiet: ``fusiond status`` says which), not wedged.
    """
    now, stall = state.now_ns, state.stall_ns
    if state.oldest_pending_ns is not None and now - state.oldest_pending_ns > stall:
        return False, f"a batch has waited {(now - state.oldest_pending_ns) / 1e9:.0f} s for the model"
    if state.last_sample_ns is None or now - state.last_sample_ns > stall:
        return True, "idle: no samples"
    last_window = state.last_window_ns
    if last_window is not None and now - last_window <= stall:
        return True, "windows flowing"
    if last_window is None and now - state.started_ns <= stall:
        return True, "starting"
    return False, "samples arrive but no window has closed"


class JournalFormatter(logging.Formatter):
    """``<priority>logger[pid]: message``: journald keeps the level and adds the time."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())
