"""Subscribe to predictions (or any topic) from Python.

from fusiond.client import Subscriber

with Subscriber() as predictions:
    for p in predictions:
        print(p.rig, p.label, max(p.scores))
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from types import TracebackType

from fusiond.bus.security import Keys, client_keys
from fusiond.bus.sockets import DEFAULT_SUBSCRIBE, Sockets
from fusiond.bus.wire import PREDICTION_PREFIX, Prediction, decode_prediction, prediction_topic
from fusiond.errors import WireError

__all__ = ["Subscriber"]


class Subscriber:
    """Iterates predictions of the given rigs (all rigs by default).

    ``timeout_s`` bounds the wait for each prediction; iteration stops when it passes.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_SUBSCRIBE,
        rigs: Sequence[str] = (),
        timeout_s: float | None = None,
        keys: Keys | None = None,
    ) -> None:
        """``keys``: for a secured bus (default: from ``FUSIOND_KEY`` and ``FUSIOND_SERVER_KEY``)."""
        self.endpoint = endpoint
        self.rigs = set(rigs)
        self.timeout_ms = None if timeout_s is None else int(timeout_s * 1000)
        self.malformed = 0
        self._sockets = Sockets(keys=keys if keys is not None else client_keys())
        topics = [prediction_topic(r) for r in self.rigs] or [PREDICTION_PREFIX]
        self._sock = self._sockets.subscriber(endpoint, topics)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket."""
        self._sockets.close()

    def __iter__(self) -> Iterator[Prediction]:
        while True:
            prediction = self.next()
            if prediction is None:
                return
            yield prediction

    def next(self) -> Prediction | None:
        """The next prediction, or None when ``timeout_s`` passes first (malformed
        messages and other rigs' predictions do not extend it)."""
        deadline = None if self.timeout_ms is None else time.monotonic() + self.timeout_ms / 1000
        while True:
            left = None if deadline is None else max(0, round((deadline - time.monotonic()) * 1000))
            if not self._sock.poll(left):
                return None
            frames = self._sock.recv_multipart(copy=False)
            try:
                prediction = decode_prediction(frames)
            except WireError:
                self.malformed += 1
                continue
            # Topics match by prefix: p/rig1 also matches p/rig10.
            if not self.rigs or prediction.rig in self.rigs:
                return prediction
