"""Being a well-behaved systemd service: sd_notify, the watchdog rule, journald logging.

sd_notify is a datagram of ``KEY=VALUE`` lines sent to the unix socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). Without the variable,
every call is a no-op, so the daemon behaves the same outside systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "alive",
    "fed",
    "JournalFormatter",
    "Liveness",
    "Notifier",
    "Readiness",
    "readiness",
    "READY_TIMEOUT_NS",
    "Systemd",
    "watchdog_interval_ns",
]

log = logging.getLogger("fusiond")

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


def fed(state: Liveness, silent: Mapping[str, float]) -> tuple[bool, str]:
    """Whether to feed systemd's watchdog: the pipeline is :func:`alive` and no component
    has gone silent (``silent``: name -> seconds since its last heartbeat)."""
    ok, why = alive(state)
    if ok and silent:
        return False, ", ".join(f"{name} silent for {s:.0f} s" for name, s in silent.items())
    return ok, why


READY_TIMEOUT_NS = 15_000_000_000
"""How long READY waits for every source before it settles for those that deliver."""


@dataclass(frozen=True, slots=True)
class Readiness:
    """The READY verdict: whether to announce it, and the lines that say so."""

    ready: bool
    status: str
    """systemd's STATUS= line."""
    message: str
    """The log line."""
    level: int


def readiness(
    *, warm: bool, sources: int, silent: Mapping[str, str], waited_ns: int, model: str
) -> Readiness | None:
    """READY once the model is ``warm`` and every one of the ``sources`` the daemon started
    has delivered a sample; None while it is too early to say.

    ``silent``: the sources that never delivered, each with why. After
    :data:`READY_TIMEOUT_NS` (``waited_ns`` since start) the daemon is ready, degraded, if
    at least one source delivers (its windows mask the silent ones, and those keep
    retrying); with none it is not ready and says why, so a service manager's start
    timeout can act. External streams are not waited for.
    """
    if not warm or (silent and waited_ns <= READY_TIMEOUT_NS):
        return None
    why = ", ".join(f"{name} ({reason})" for name, reason in silent.items())
    if silent and len(silent) == sources:
        return Readiness(
            False,
            "",
            f"fusiond not ready after {READY_TIMEOUT_NS / 1e9:.0f} s: no source has "
            f"delivered a sample: {why}",
            logging.ERROR,
        )
    line = f"serving {sources - len(silent)} of {sources} source(s)" if sources else "serving external ones"
    if silent:
        return Readiness(
            True,
            f"{line}; never delivered: {', '.join(silent)}",
            f"fusiond ready, degraded: {line}, model {model} warmed; never delivered: {why}",
            logging.WARNING,
        )
    return Readiness(True, line, f"fusiond ready: {line}, model {model} warmed", logging.INFO)


class Systemd:
    """What the daemon tells systemd: READY once (:func:`readiness`), STATUS lines, the
    watchdog while the pipeline is alive (:func:`fed`), STOPPING. Outside systemd it only logs."""

    def __init__(self, notifier: Notifier | None = None) -> None:
        self.notifier = notifier or Notifier()
        self.ready = False
        self._said_not_ready = False

    def check_ready(self, **state: Any) -> bool:
        """Announce READY when :func:`readiness` of ``state`` says so (once); a verdict of
        not ready is logged once, and READY may still come later."""
        verdict = readiness(**state)
        if self.ready or verdict is None or (not verdict.ready and self._said_not_ready):
            return self.ready
        if verdict.ready:
            self.notifier.notify(READY=1, STATUS=verdict.status)
        self._said_not_ready = True
        log.log(verdict.level, "%s", verdict.message)
        self.ready = verdict.ready
        return self.ready

    def status(self, line: str) -> None:
        """A STATUS= line (once READY)."""
        if self.ready:
            self.notifier.notify(STATUS=line)

    def feed(self, state: Liveness, silent: Mapping[str, float]) -> None:
        """Feed the watchdog if the pipeline is alive, else say why not."""
        ok, why = fed(state, silent)
        if ok:
            self.notifier.notify(WATCHDOG=1)
        else:
            log.error("watchdog: pipeline wedged (%s); not telling systemd it is alive", why)

    def reloading(self) -> None:
        """RELOADING=1 with the time it began (systemd >= 253 needs both for
        ``Type=notify-reload``; older ones ignore them)."""
        self.notifier.notify(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)

    def reloaded(self) -> None:
        """READY=1 again once a reload has ended (failed or not: the daemon serves on)."""
        if self.ready:
            self.notifier.notify(READY=1)

    def stopping(self) -> None:
        """STOPPING=1."""
        self.notifier.notify(STOPPING=1)

    def close(self) -> None:
        """Close the notify socket."""
        self.notifier.close()


class JournalFormatter(logging.Formatter):
    """``<priority>logger[pid]: message``: journald keeps the level and adds the time."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())
