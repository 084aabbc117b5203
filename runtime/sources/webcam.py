"""A camera through OpenCV ``VideoCapture``, read by a grabber thread that keeps only the newest frame.

The grabber reads as fast as the camera delivers (so the driver's own buffer never fills with stale
frames) and puts each frame into a one-slot drop-oldest queue: whenever the pipeline is slower than the
camera, it always gets the newest picture. A camera that stops delivering is reopened
``reconnect_attempts`` times, ``reconnect_interval`` apart; after that the source fails with a
:class:`DeviceError` (one line), it never hangs.
"""
from __future__ import annotations

import threading

from ..errors import DeviceError, one_line
from ..frames import Frame
from .base import Source

__all__ = ["WebcamSource"]


def _cv2():
    import cv2

    try:  # OpenCV's own warnings ("can't open camera by index") would repeat our one clear line
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except Exception:
        pass
    return cv2


class WebcamSource(Source):
    """Camera ``index`` (``/dev/video<index>`` on Linux).

    Args:
        index: camera index.
        width, height, fps: requested capture format (the driver may pick the nearest one).
        reconnect_attempts: reopen tries after the camera stops delivering.
        reconnect_interval: seconds between tries.
        read_failures: consecutive failed reads that count as the camera having gone.
        capture_factory: ``callable(index) -> VideoCapture-like`` (tests inject fakes; default OpenCV).
    """

    kind = "camera"

    def __init__(self, index: int = 0, width: int | None = None, height: int | None = None, fps: float | None = None,
                 reconnect_attempts: int = 5, reconnect_interval: float = 1.0, read_failures: int = 10,
                 capture_factory=None, queue_size: int = 1):
        super().__init__(live=True, queue_size=queue_size)
        self.index = int(index)
        self.width, self.height, self.fps = width, height, fps
        self.reconnect_attempts = int(reconnect_attempts)
        self.reconnect_interval = float(reconnect_interval)
        self.read_failures = int(read_failures)
        self._factory = capture_factory
        self._cap = None
        self._cap_lock = threading.Lock()
        self.grabbed = 0

    def _new_capture(self):
        if self._factory is not None:
            return self._factory(self.index)
        cv2 = _cv2()
        return cv2.VideoCapture(self.index)

    def _try_open(self):
        try:
            cap = self._new_capture()
        except Exception as exc:
            return None, one_line(exc)
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            return None, "could not be opened"
        if self._factory is None:
            cv2 = _cv2()
            if self.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            if self.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            if self.fps:
                cap.set(cv2.CAP_PROP_FPS, self.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap, None

    def _open(self) -> None:
        cap, why = self._try_open()
        if cap is None:
            raise DeviceError(f"camera {self.index} {why}: is a camera attached (ls /dev/video*), "
                              "is it in use by another program, and may this user open it (group 'video')?")
        self._cap = cap

    def _workers(self):
        return [(self._run, "grab")]

    def _release(self) -> None:
        """Release the capture (caller holds the lock); a device that is gone may fail to, harmlessly."""
        if self._cap is not None:
            try:
                self._cap.release()
            except Exception:
                pass
            self._cap = None

    def _close(self) -> None:
        with self._cap_lock:
            self._release()

    def _reopen(self) -> None:
        with self._cap_lock:
            self._release()
            self._cap, why = self._try_open()
        if self._cap is None:
            raise DeviceError(f"camera {self.index} {why}")

    def _run(self) -> None:
        cv2 = None if self._factory is not None else _cv2()
        fails = 0
        index = 0
        while not self.stopping:
            cap = self._cap
            ok, img = (False, None) if cap is None else cap.read()
            t_capture = self.clock()
            if not ok or img is None:
                fails += 1
                if fails >= self.read_failures or cap is None:
                    if self.stopping:
                        return
                    self.warn(f"camera {self.index} stopped delivering frames; reconnecting")
                    attempt, _ = self._reconnect(self._reopen, self.reconnect_attempts, self.reconnect_interval)
                    if attempt is None:
                        if not self.stopping:
                            self.fail(DeviceError(
                                f"camera {self.index} disappeared and did not come back after "
                                f"{self.reconnect_attempts} reconnect attempt(s), {self.reconnect_interval:g} s apart"))
                        return
                    self.warn(f"camera {self.index} came back after {attempt} reconnect attempt(s)")
                    fails = 0
                continue
            fails = 0
            self.grabbed += 1
            if img.ndim == 2:
                rgb = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB) if cv2 else img[..., None].repeat(3, axis=2)
            else:
                rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if cv2 else img[..., ::-1].copy()
            if not self.emit(Frame(index=index, image=rgb, t=t_capture, t_capture=t_capture)):
                return
            index += 1

    def describe(self) -> dict:
        d = super().describe()
        d.update({"camera": self.index})
        cap = self._cap
        if cap is not None and self._factory is None:
            cv2 = _cv2()
            d.update({"width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                      "fps": float(cap.get(cv2.CAP_PROP_FPS)), "backend": cap.getBackendName()})
        return d

    def _extra_stats(self) -> dict:
        return {"reconnects": self.reconnects}
