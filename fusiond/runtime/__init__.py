"""Where the pipeline runs: ingest workers and inference servers, as threads, processes or Ray actors.

    sensor -> broker -> worker (ingest, align) -> server (batch, model) -> broker -> clients

Every engine runs the same two loops (:mod:`.worker`, :mod:`.server`); they differ only
in how the loops are started, restarted and reached.
"""

__all__ = []
