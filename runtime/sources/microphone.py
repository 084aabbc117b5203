"""A microphone through ``sounddevice.InputStream``: the callback only copies into the ring buffer.

* Rate: 16 kHz when the device (or PulseAudio / PipeWire behind it) accepts it; otherwise the device's
  default rate, and the ring buffer resamples each 0.975 s window with :func:`autr.preprocess.resample`
  when it is read (the callback never resamples).
* Channels: up to two are captured; the ring buffer averages them when read (stereo -> mono).
* Time: each block is stamped with PortAudio's ``inputBufferAdcTime`` (the capture time of its first
  sample) mapped onto the monotonic clock; where the host API gives no ADC time, with the callback's arrival
  time minus the block length. Device overflows are counted as overruns.
* Faults: a stream that stops calling back for ``stall_timeout`` seconds (device unplugged, sound server
  gone) is reopened ``reconnect_attempts`` times; then the source fails with a :class:`DeviceError`.
"""
from __future__ import annotations

import threading
import time

from ..errors import DeviceError, one_line
from ..ring import AudioRingBuffer
from .base import Source

__all__ = ["MicrophoneSource", "list_input_devices"]


def _sd():
    try:
        import sounddevice as sd
    except OSError as exc:  # libportaudio missing
        raise DeviceError(f"sounddevice cannot load PortAudio ({one_line(exc)}); install it: "
                          "apt-get install libportaudio2") from None
    except ImportError:
        raise DeviceError("sounddevice is not installed; pip install 'sounddevice>=0.4'") from None
    return sd


def list_input_devices() -> list:
    """[(index, name, max_input_channels, default_samplerate)] of the input devices PortAudio sees."""
    sd = _sd()
    return [(i, d["name"], d["max_input_channels"], d["default_samplerate"])
            for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]


def _parse_device(device):
    if device is None or device == "":
        return None
    if isinstance(device, int):
        return device
    text = str(device)
    return int(text) if text.isdigit() else text


class MicrophoneSource(Source):
    """Audio from an input device (no video; pair it with a camera in :class:`LiveSource`).

    Args:
        device: PortAudio device index, or a substring of its name, or None for the default input.
        samplerate: wanted rate (16 kHz, the model's).
        channels: channels to capture (default: min(2, the device's inputs)).
        blocksize: frames per callback (0: the host API's choice).
        latency: PortAudio latency hint ("low", "high" or seconds).
        stall_timeout: seconds without a callback that count as the device having gone.
        first_audio_timeout: seconds allowed for the first callback (some servers start slowly).
        reconnect_attempts: reopen tries after a stall.
    """

    kind = "microphone"

    def __init__(self, device=None, samplerate: int = 16000, channels: int | None = None, blocksize: int = 0,
                 latency="low", stall_timeout: float = 2.0, first_audio_timeout: float = 5.0,
                 reconnect_attempts: int = 3, reconnect_interval: float = 0.5, ring_seconds: float = 20.0):
        super().__init__(live=True)
        self.device = _parse_device(device)
        self.want_rate = int(samplerate)
        self.want_channels = channels
        self.blocksize = int(blocksize)
        self.latency = latency
        self.stall_timeout = float(stall_timeout)
        self.first_audio_timeout = float(first_audio_timeout)
        self.reconnect_attempts = int(reconnect_attempts)
        self.reconnect_interval = float(reconnect_interval)
        self.ring_seconds = float(ring_seconds)
        self.stream = None
        self.rate = None
        self.channels = None
        self.device_name = None
        self.device_index = None
        self._offset = 0.0  # monotonic - PortAudio stream time
        self._adc_ok = True
        self._last_cb = None
        self._opened_at = None
        self.callbacks = 0

    # ------------------------------------------------------------------ device
    def _resolve(self, sd):
        try:
            info = sd.query_devices(self.device, kind="input")
        except (ValueError, sd.PortAudioError) as exc:
            try:
                inputs = "; ".join(f"{i}: {n}" for i, n, _, _ in list_input_devices()) or "none"
            except Exception:
                inputs = "unknown"
            what = "no default input device" if self.device is None else f"microphone {self.device!r} not found"
            raise DeviceError(f"{what} ({one_line(exc)}); input devices: {inputs} -- name one with --mic, or run "
                              "on silence on purpose with --silent-audio") from None
        if info["max_input_channels"] < 1:
            raise DeviceError(f"device {info['name']!r} has no input channels")
        return info

    def _open_stream(self):
        sd = _sd()
        info = self._resolve(sd)
        self.device_index = info["index"]
        self.device_name = info["name"]
        ch = self.want_channels or min(2, int(info["max_input_channels"]))
        rate = self.want_rate
        try:
            sd.check_input_settings(self.device_index, channels=ch, dtype="float32", samplerate=rate)
        except Exception:
            rate = int(info["default_samplerate"])
            try:
                sd.check_input_settings(self.device_index, channels=ch, dtype="float32", samplerate=rate)
            except Exception as exc:
                raise DeviceError(f"microphone {self.device_name!r} accepts neither {self.want_rate} Hz nor "
                                  f"{rate} Hz with {ch} channel(s): {one_line(exc)}") from None
        if self.audio is None or self.audio.sample_rate != rate or self.audio.channels != ch:
            self.audio = AudioRingBuffer(rate, ch, capacity_seconds=self.ring_seconds, resync_tolerance=0.05,
                                         gap_threshold=0.25)
        self.rate, self.channels = rate, ch
        try:
            stream = sd.InputStream(device=self.device_index, samplerate=rate, channels=ch, dtype="float32",
                                    blocksize=self.blocksize, latency=self.latency, callback=self._callback)
            stream.start()
        except Exception as exc:
            raise DeviceError(f"microphone {self.device_name!r} could not be started: {one_line(exc)}") from None
        self._offset = time.monotonic() - stream.time
        self._opened_at = time.monotonic()
        self._last_cb = None
        self.stream = stream

    def _callback(self, indata, frames, time_info, status) -> None:
        # Runs on PortAudio's thread: copy the block and stamp it, nothing else.
        arrived = time.monotonic()
        t_first = arrived - frames / self.rate
        adc = time_info.inputBufferAdcTime
        if self._adc_ok and adc > 0:
            t_adc = adc + self._offset
            if abs(t_adc - t_first) < 0.5:
                t_first = t_adc
        self.audio.write(indata, t_first, overflow=bool(status.input_overflow))
        self.callbacks += 1
        self._last_cb = arrived

    def _open(self) -> None:
        self._open_stream()

    def _workers(self):
        return [(self._supervise, "supervise")]

    def _close_stream(self, timeout: float = 2.0) -> None:
        stream, self.stream = self.stream, None
        if stream is None:
            return
        th = threading.Thread(target=lambda: (stream.abort(ignore_errors=True), stream.close(ignore_errors=True)),
                              daemon=True, name="autr-mic-close")
        th.start()
        th.join(timeout)  # a wedged driver must not hang the runtime

    def _close(self) -> None:
        self._close_stream()

    def _stalled(self) -> bool:
        stream = self.stream
        if stream is None:
            return True
        t = time.monotonic()
        if self._last_cb is None:
            return t - self._opened_at > self.first_audio_timeout
        return (t - self._last_cb > self.stall_timeout) or not stream.active

    def _supervise(self) -> None:
        while not self._stop.wait(0.1):
            stream = self.stream
            if stream is not None:
                try:
                    self._offset = time.monotonic() - stream.time  # follow wall-clock steps of PortAudio's clock
                except Exception:
                    pass
            if not self._stalled():
                continue
            first = self._last_cb is None and self.callbacks == 0
            self.warn(f"microphone {self.device_name!r} " + ("never delivered audio" if first else
                                                             "stopped delivering audio") + "; reconnecting")
            self._close_stream()
            attempt, last_error = self._reconnect(self._reopen, self.reconnect_attempts, self.reconnect_interval)
            if attempt is None:
                if last_error is not None:  # None: stopped while waiting
                    self.fail(DeviceError(f"microphone {self.device_name!r} is gone: no audio for "
                                          f"{self.stall_timeout:g} s and {self.reconnect_attempts} reconnect "
                                          f"attempt(s) failed ({last_error})"))
                return
            self.warn(f"microphone {self.device_name!r} came back after {attempt} reconnect attempt(s)")

    def _reopen(self) -> None:
        """Let PortAudio rescan devices (a re-plugged device gets a new handle), then open the stream again."""
        sd = _sd()
        try:
            sd._terminate()
            sd._initialize()
        except Exception:
            pass
        self._open_stream()

    def describe(self) -> dict:
        d = super().describe()
        d.update({"device": self.device_name, "device_index": self.device_index, "sample_rate": self.rate,
                  "channels": self.channels, "resampled_on_read": self.rate not in (None, 16000)})
        return d

    def _extra_stats(self) -> dict:
        return {"callbacks": self.callbacks, "reconnects": self.reconnects}
