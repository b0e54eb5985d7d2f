"""The gateway's audit trail: every licence attempt and prediction request, and the answers it marked
(`served_marks`), written in batches.

Requests append to an in-memory queue (no disk write on the hot path); a
background thread writes what has queued to the vault's audit log in one
transaction every `flush_seconds`, and `close` writes the rest (the gateway
calls it on a clean stop, SIGTERM included). A crash loses at most the last
interval; the registry itself is never left half-written (SQLite).
"""

import threading

# How long an audit event waits in memory at most before it is written.
DEFAULT_FLUSH_SECONDS = 1.0


class AuditWriter:
    """Queues audit events and writes them to a `UserRegistry` in batches.

    Args:
        registry: the vault's `UserRegistry`.
        flush_seconds: the longest an event waits in memory.
    """

    def __init__(self, registry, flush_seconds=DEFAULT_FLUSH_SECONDS):
        self.registry = registry
        self.flush_seconds = float(flush_seconds)
        self._queue, self._marks = [], []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ipguard-audit", daemon=True)
        self._thread.start()

    def record(self, event, user_id, user_name, outcome, reason=None, detail=None):
        """Queues one event (`registry.log_many`'s row)."""
        with self._lock:
            self._queue.append((event, user_id, user_name, outcome, reason, detail))

    def record_marks(self, rows):
        """Queues marked answers (`registry.log_many`'s `marks` rows)."""
        with self._lock:
            self._marks.extend(rows)

    def flush(self):
        """Writes every queued event and mark now; returns how many events."""
        with self._lock:
            events, self._queue = self._queue, []
            marks, self._marks = self._marks, []
        if events or marks:
            try:
                self.registry.log_many(events, marks)
            except BaseException:
                with self._lock:  # keep them for the next try, in order
                    self._queue[:0] = events
                    self._marks[:0] = marks
                raise
        return len(events)

    def _run(self):
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # a locked or busy database: the next interval tries again
                continue

    def close(self):
        """Stops the background thread and writes what is left."""
        self._stop.set()
        self._thread.join()
        self.flush()
