"""The source interface: capture threads that fill a frame queue and (usually) an audio ring buffer."""
from __future__ import annotations

import threading

from ..errors import StreamError, one_line
from ..frames import Frame
from ..queues import BoundedQueue
from ..ring import AudioRingBuffer
from ..stats import now

__all__ = ["Source"]


class Source:
    """Base class of every source.

    A source owns

    * :attr:`frames`: a :class:`BoundedQueue` of :class:`Frame` -- ``drop_oldest`` for live sources (the
      pipeline always gets the newest frame), ``block`` for files read as fast as the backend goes;
    * :attr:`audio`: an :class:`AudioRingBuffer` on the same time axis as ``Frame.t``, or None when the
      stream runs on silence on purpose (``--silent-audio``).

    When the input ends the queue is closed (:attr:`end_reason` says why); a fatal fault sets
    :attr:`error` (a :class:`StreamError`) before closing it. Neither ever raises in a capture thread.
    """

    kind = "source"
    audio: AudioRingBuffer | None = None  # a source with sound sets its own ring

    def __init__(self, live: bool, queue_size: int = 1):
        self.live = bool(live)
        self.frames = BoundedQueue(queue_size, "drop_oldest" if live else "block", name="source")
        self._error: StreamError | None = None
        self._end_reason: str | None = None
        self._fault: str | None = None
        self._warnings: list = []
        self._captured = 0
        self.reconnects = 0
        self._stop = threading.Event()
        self._threads: list = []
        self._started = False
        self._close_lock = threading.Lock()
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> "Source":
        """Open the device / file (raising a :class:`StreamError` on failure) and start capturing."""
        if self._started:
            return self
        self._open()
        self._started = True
        for target, name in self._workers():
            th = threading.Thread(target=self._guard, args=(target,), name=f"autr-{self.kind}-{name}", daemon=True)
            th.start()
            self._threads.append(th)
        return self

    def stop(self, timeout: float = 3.0) -> None:
        """Stop capturing (idempotent, safe from any thread); never hangs longer than ``timeout`` per thread.

        The device / file is released exactly once and only after every capture thread has left it (closing
        a PyAV container that another thread still reads crashes the interpreter): a capture thread still
        busy after ``timeout`` releases it itself on its way out."""
        self._stop.set()
        self.frames.close()
        for th in self._threads:
            if th is not threading.current_thread():
                th.join(timeout)
        self._release_when_idle()

    def _release_when_idle(self) -> None:
        me = threading.current_thread()
        with self._close_lock:
            if self._closed or any(th.is_alive() and th is not me for th in self._threads):
                return
            self._closed = True
            self._close()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- state, read-only (a composite source merges its parts' state here) -------------------------------
    @property
    def error(self) -> StreamError | None:
        """The fatal fault that ended the stream, if any."""
        return self._error

    @property
    def end_reason(self) -> str | None:
        """Why the frame stream ended (None while it runs)."""
        return self._end_reason

    @property
    def fault(self) -> str | None:
        """Where and why the input ended early (truncated / corrupt / stalled), if it did."""
        return self._fault

    @property
    def warnings(self) -> list:
        return list(self._warnings)

    @property
    def captured(self) -> int:
        return self._captured

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- for subclasses -------------------------------------------------------------------------------
    def _open(self) -> None:
        """Open the device / input; raise a StreamError with a clear message when it cannot."""

    def _workers(self) -> list:
        """[(callable, name)] run in daemon threads after _open()."""
        return []

    def _close(self) -> None:
        """Release devices / files (called once the threads have stopped)."""

    def _guard(self, target) -> None:
        try:
            target()
        except StreamError as exc:
            self.fail(exc)
        except Exception as exc:  # a bug or an unexpected library error: still one line, still a clean stop
            self.fail(StreamError(f"{self.kind} source failed: {type(exc).__name__}: {one_line(exc)}"))
        finally:
            if self.stopping:  # stop() gave up waiting for this thread: it releases the input itself
                self._release_when_idle()

    def _reconnect(self, reopen, attempts: int, interval: float):
        """Call ``reopen()`` (which raises a :class:`StreamError` when the device is still gone) up to
        ``attempts`` times, ``interval`` seconds apart, counting :attr:`reconnects`. Returns
        ``(attempt, None)`` once it worked, ``(None, last failure)`` when it never did, ``(None, None)`` when the
        source was stopped meanwhile."""
        last = "not tried"
        for attempt in range(1, attempts + 1):
            if self._stop.wait(interval):
                return None, None
            self.reconnects += 1
            try:
                reopen()
                return attempt, None
            except StreamError as exc:
                last = str(exc)
        return None, last

    def emit(self, frame: Frame) -> bool:
        """Hand a frame to the pipeline. Live: drops the oldest queued frame if full. File: waits for room
        (checking for stop). Returns False once the source is stopping.

        A frame counts as captured once it is in the queue: a file's decoder waiting for room holds a frame
        that is neither queued nor dropped yet (the pipeline's ``captured = queued + ...`` bookkeeping at its
        start relies on that)."""
        if self.frames.policy == "drop_oldest":
            self._captured += 1
            self.frames.put(frame)
            return not self._stop.is_set()
        while not self._stop.is_set():
            try:
                if self.frames.put(frame, timeout=0.1) is frame:  # the queue was closed: the frame is not in it
                    return False
                self._captured += 1
                return True
            except TimeoutError:
                continue
        return False

    def finish(self, reason: str) -> None:
        """The input has ended normally (end of file, end of stream, duration reached)."""
        if self._end_reason is None:
            self._end_reason = reason
        if self.audio is not None:
            self.audio.mark_finished()
        self.frames.close()

    def fail(self, error: StreamError) -> None:
        """A fatal fault: remember it (the pipeline reports it) and end the frame stream."""
        if self._error is None:
            self._error = error
        self.finish(f"error: {error}")

    def warn(self, message: str) -> None:
        self._warnings.append(message)

    def end_early(self, message: str) -> None:
        """The input ended before its end (truncated, corrupt, stalled): not an exception -- what was
        processed is kept -- but reported with where it happened."""
        self._fault = message
        self.warn(message)
        self.finish(message)

    # -- description ----------------------------------------------------------------------------------
    def describe(self) -> dict:
        """A JSON-able description for the report."""
        return {"kind": self.kind, "live": self.live}

    def stats(self) -> dict:
        out = {"captured": self.captured, "dropped": self.frames.dropped, "end_reason": self.end_reason}
        out.update(self._extra_stats())
        return out

    def _extra_stats(self) -> dict:
        return {}

    @staticmethod
    def clock() -> float:
        return now()
