"""SIGHUP: a new config and model, checked beside the running ones, swapped in between
two steps of the daemon's loop.

The check (loading the config, the checkpoint and its sources' options) runs in a thread
of its own, so the loop never waits for a disk or a large model. A SIGHUP during a reload
reloads again once it is done: the file may have changed since. Only the model path and
``[log]`` change without a restart; the other sections' changes are named and kept for
the next start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from fusiond import config as config_mod
from fusiond.align.spec import InputSpec
from fusiond.config import Config
from fusiond.errors import FusiondError
from fusiond.plugin import Plugins
from fusiond.prepare import prepare
from fusiond.service import Systemd

log = logging.getLogger("fusiond")

__all__ = ["Reloader", "adopt", "restart_only", "served"]


class Reloader:
    """Reloads ``path`` on :meth:`request`; :meth:`poll` hands a checked config to ``apply``."""

    def __init__(
        self,
        path: Path | None,
        plugins: Plugins,
        spec: InputSpec,
        apply: Callable[[Config], None],
        running: Callable[[], dict[str, str]],
        systemd: Systemd | None = None,
    ) -> None:
        """``spec``: the running model's inputs, which a new model must share (the workers
        cut windows for them); ``running`` says which model is served (its ``name`` and
        ``hash``, for the log); ``systemd``
        is told when a reload begins and ends."""
        self.path, self.plugins, self.spec = path, plugins, spec
        self.apply, self.running = apply, running
        self.systemd = systemd
        self._thread: threading.Thread | None = None
        self._result: Config | Exception | None = None
        self._again = False

    def request(self) -> None:
        """Start a reload (SIGHUP)."""
        if self._thread is not None and self._thread.is_alive():
            log.warning("reload already in progress; this SIGHUP reloads again once it is done")
            self._again = True
            return
        if self.path is None:
            log.warning("SIGHUP ignored: this daemon was not started from a config file")
            return
        log.info("SIGHUP: reloading %s", self.path)
        if self.systemd is not None:
            self.systemd.reloading()
        self._thread = threading.Thread(target=self._check, name="fusiond-reload", daemon=True)
        self._thread.start()

    def _check(self) -> None:
        """Check the new config and model beside the running ones (reload thread)."""
        assert self.path is not None
        try:
            new = config_mod.load(self.path)
            if prepare(new, self.plugins).card.spec != self.spec:
                msg = "the new model's inputs differ from the running one's; restart to change them"
                raise new.error(msg, "model.path")
            self._result = new
        except (FusiondError, OSError) as exc:
            self._result = exc
        except Exception as exc:  # noqa: BLE001 - a reload that fails is said, whatever failed
            self._result = FusiondError(f"{type(exc).__name__}: {str(exc)[:300]}")

    def poll(self) -> None:
        """Apply a finished reload (the daemon's loop)."""
        result = self._result
        if result is None:
            return
        self._result = None
        if self._thread is not None:
            self._thread.join()  # it has set its result: only its last instructions are left
        try:
            if isinstance(result, Exception):
                log.error("reload failed, still serving %s: %s", served(self.running()), result)
            else:
                self.apply(result)
        finally:
            if self._again:
                self._again = False
                self.request()
            elif self.systemd is not None:
                self.systemd.reloaded()


def served(model: dict[str, str]) -> str:
    """``name (hash)`` of a model's info."""
    return f"{model.get('name')} ({model.get('hash')})"


def adopt(running: Config, new: Config, model: dict[str, str]) -> Config:
    """The running config with the new one's model path and ``[log]`` (the log level set
    now); the other changes are named, and wait for a restart."""
    logging.getLogger().setLevel(new.log.level.upper())
    log.info("reloading the model: %s (was %s)", new.model.path, served(model))
    changed = restart_only(running, new)
    if changed:
        log.warning("changes to [%s] take effect on restart; kept the running ones", ", ".join(changed))
    path = running.model.model_copy(update={"path": new.model.path})
    return running.model_copy(update={"model": path, "log": new.log})


def restart_only(old: Config, new: Config) -> list[str]:
    """The sections whose changes wait for a restart (all but the model path and ``[log]``)."""
    keys = ("bus", "ingest", "runtime", "window", "rigs", "events", "outputs", "metrics")
    out = [k for k in keys if getattr(new, k) != getattr(old, k)]
    if new.model.model_copy(update={"path": old.model.path}) != old.model:
        out.append("model (except path)")
    return out
