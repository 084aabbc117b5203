"""Tests of autr.preprocess: frame resize / normalisation and the VGGish log-mel front end."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autr import preprocess as P

REPO_ROOT = Path(__file__).resolve().parents[1]


def tone(freq, seconds, sample_rate=P.SAMPLE_RATE, amplitude=0.5, phase=0.0):
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return amplitude * np.sin(2 * np.pi * freq * t + phase)


# --------------------------------------------------------------------------------------------
# Constants and the mel filterbank
# --------------------------------------------------------------------------------------------


def test_vggish_constants():
    assert P.SAMPLE_RATE == 16000
    assert (P.STFT_WINDOW_SAMPLES, P.STFT_HOP_SAMPLES, P.FFT_LENGTH) == (400, 160, 512)
    assert P.NUM_SPECTROGRAM_BINS == 257
    assert (P.NUM_MEL_BINS, P.MEL_MIN_HZ, P.MEL_MAX_HZ, P.LOG_OFFSET) == (64, 125.0, 7500.0, 0.01)
    assert (P.EXAMPLE_FRAMES, P.EXAMPLE_HOP_FRAMES) == (96, 96)
    assert P.EXAMPLE_HOP_SAMPLES == 15360
    assert P.LIVE_WINDOW_SAMPLES == 400 + 95 * 160 == 15600


def test_periodic_hann():
    w = P.periodic_hann(400)
    assert w.shape == (400,)
    assert w[0] == 0.0
    assert w[200] == pytest.approx(1.0)  # peak at N/2, not at (N-1)/2
    assert w[1] == pytest.approx(w[399])  # periodic: symmetric about N/2
    assert w[1] != pytest.approx(w[398])


def test_mel_matrix_shape_and_dc_row():
    m = P.MEL_MATRIX
    assert m.shape == (257, 64)
    assert np.all(m[0] == 0.0)
    assert not m.flags.writeable


def test_mel_matrix_triangles():
    m = P.MEL_MATRIX
    assert np.all(m >= 0.0)
    assert np.all(m.max(axis=0) <= 1.0)
    assert np.all(m.max(axis=0) > 0.0)  # every band sees at least one FFT bin
    bins_hz = np.linspace(0.0, 8000.0, 257)
    edges_mel = np.linspace(P.hertz_to_mel(125.0), P.hertz_to_mel(7500.0), 66)
    for i in range(64):
        support = np.nonzero(m[:, i])[0]
        # no weight outside (lower edge, upper edge) of the band
        assert bins_hz[support].min() > P.mel_to_hertz(edges_mel[i])
        assert bins_hz[support].max() < P.mel_to_hertz(edges_mel[i + 2])
        # each column is unimodal: rising, then falling
        col = m[support[0] : support[-1] + 1, i]
        peak = int(np.argmax(col))
        assert np.all(np.diff(col[: peak + 1]) >= 0) and np.all(np.diff(col[peak:]) <= 0)
    # band centres are equally spaced in HTK mel and increase
    centres = edges_mel[1:-1]
    assert np.all(np.diff(centres) > 0)
    assert np.allclose(np.diff(centres), (P.hertz_to_mel(7500.0) - P.hertz_to_mel(125.0)) / 65)
    assert np.all(np.diff(np.argmax(m, axis=0)) >= 0)


def test_mel_matrix_hand_value():
    # Band 0 spans 125 Hz .. ~185.3 Hz with its peak at ~154.6 Hz. Bin 5 (156.25 Hz) lies just
    # past the peak, so its weight is the falling slope (upper - mel(f)) / (upper - centre);
    # bins 4 (125 Hz, the lower edge) and 6 (187.5 Hz, past the upper edge) get nothing.
    lo, centre, upper = np.linspace(P.hertz_to_mel(125.0), P.hertz_to_mel(7500.0), 66)[:3]
    assert P.mel_to_hertz(centre) == pytest.approx(154.6, abs=0.1)
    expected = (upper - 1127.0 * np.log(1 + 156.25 / 700.0)) / (upper - centre)
    assert expected == pytest.approx(0.9477, abs=1e-4)
    assert P.MEL_MATRIX[5, 0] == pytest.approx(expected, rel=1e-12)
    assert P.MEL_MATRIX[4, 0] == 0.0 and P.MEL_MATRIX[6, 0] == 0.0
    assert np.count_nonzero(P.MEL_MATRIX[:, 0]) == 1


def test_hertz_mel_round_trip():
    f = np.array([0.0, 125.0, 700.0, 1000.0, 7500.0])
    assert P.hertz_to_mel(700.0) == pytest.approx(1127.0 * np.log(2.0))
    assert np.allclose(P.mel_to_hertz(P.hertz_to_mel(f)), f)


# --------------------------------------------------------------------------------------------
# Log-mel
# --------------------------------------------------------------------------------------------


def literal_log_mel_frame(samples_400):
    """One log-mel frame from its definition, with an explicit DFT."""
    n = np.arange(400)
    windowed = samples_400 * (0.5 - 0.5 * np.cos(2 * np.pi * n / 400))
    k = np.arange(257)[:, None]
    dft = (windowed[None, :] * np.exp(-2j * np.pi * k * n[None, :] / 512)).sum(axis=1)
    return np.log(np.abs(dft) @ P.MEL_MATRIX + 0.01)


def test_log_mel_frame_matches_definition():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(16000) * 0.1
    spec = P.log_mel_spectrogram(x)
    assert spec.shape == (1 + (16000 - 400) // 160, 64)
    for i in (0, 7, 97):
        assert np.allclose(spec[i], literal_log_mel_frame(x[160 * i : 160 * i + 400]), atol=1e-9)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0, 6000.0])
def test_pure_tone_lands_in_its_band(freq):
    examples = P.waveform_to_examples(tone(freq, 2.0), P.SAMPLE_RATE)
    band = int(np.argmax(examples[0].mean(axis=0)))
    edges_hz = P.mel_to_hertz(np.linspace(P.hertz_to_mel(125.0), P.hertz_to_mel(7500.0), 66))
    assert edges_hz[band] < freq < edges_hz[band + 2]
    # the winning band is one of the (at most two) bands whose centres bracket the tone
    centres = edges_hz[1:-1]
    nearest = int(np.argmin(np.abs(centres - freq)))
    assert abs(band - nearest) <= 1


def test_silence_is_log_offset():
    examples = P.waveform_to_examples(np.zeros(20000), P.SAMPLE_RATE)
    assert np.allclose(examples, np.log(0.01))


def test_five_seconds_give_five_examples():
    examples = P.waveform_to_examples(tone(440.0, 5.0), P.SAMPLE_RATE)
    assert examples.shape == (5, 96, 64)
    assert examples.dtype == np.float32


def test_example_count_boundaries():
    assert P.waveform_to_examples(np.zeros(15599), 16000).shape == (0, 96, 64)
    assert P.waveform_to_examples(np.zeros(15600), 16000).shape == (1, 96, 64)
    assert P.waveform_to_examples(np.zeros(15360 + 15599), 16000).shape == (1, 96, 64)
    assert P.waveform_to_examples(np.zeros(15360 + 15600), 16000).shape == (2, 96, 64)
    assert P.waveform_to_examples(np.zeros(100), 16000).shape == (0, 96, 64)


def test_clip_padding_repeats_last_example():
    rng = np.random.default_rng(1)
    wav = rng.standard_normal(3 * 16000) * 0.1
    examples = P.waveform_to_examples(wav, 16000)
    assert examples.shape[0] == 3
    clip = P.log_mel_for_clip(wav, 16000, n_frames=5)
    assert clip.shape == (5, 1, 96, 64) and clip.dtype == np.float32
    assert np.array_equal(clip[:3, 0], examples)
    assert np.array_equal(clip[3, 0], examples[2])
    assert np.array_equal(clip[4, 0], examples[2])


def test_clip_longer_than_frames_is_truncated():
    wav = tone(500.0, 5.0)
    clip = P.log_mel_for_clip(wav, 16000, n_frames=3)
    assert clip.shape == (3, 1, 96, 64)
    assert np.array_equal(clip[:, 0], P.waveform_to_examples(wav, 16000)[:3])


def test_clip_too_short_raises():
    with pytest.raises(ValueError, match="too short"):
        P.log_mel_for_clip(np.zeros(8000), 16000, n_frames=5)
    with pytest.raises(ValueError, match="n_frames"):
        P.log_mel_for_clip(np.zeros(16000), 16000, n_frames=0)


def test_window_equals_clip_example():
    rng = np.random.default_rng(2)
    wav = rng.standard_normal(5 * 16000) * 0.1
    examples = P.waveform_to_examples(wav, 16000)
    for k in range(5):
        window = wav[k * P.EXAMPLE_HOP_SAMPLES : k * P.EXAMPLE_HOP_SAMPLES + P.LIVE_WINDOW_SAMPLES]
        out = P.log_mel_window(window)
        assert out.shape == (1, 96, 64) and out.dtype == np.float32
        assert np.array_equal(out[0], examples[k])
        # a longer buffer ending at the same sample gives the same result
        buffer = wav[: k * P.EXAMPLE_HOP_SAMPLES + P.LIVE_WINDOW_SAMPLES]
        assert np.array_equal(P.log_mel_window(buffer), out)


def test_window_left_pads_with_zeros():
    rng = np.random.default_rng(3)
    short = rng.standard_normal(15360) * 0.1
    padded = np.concatenate([np.zeros(P.LIVE_WINDOW_SAMPLES - 15360), short])
    assert np.array_equal(P.log_mel_window(short), P.log_mel_window(padded))
    silence = P.log_mel_window(np.zeros(0))
    assert silence.shape == (1, 96, 64)
    assert np.allclose(silence, np.log(0.01))


def test_stereo_equals_mono_average():
    rng = np.random.default_rng(4)
    stereo = rng.standard_normal((20000, 2)) * 0.1
    mono = stereo.mean(axis=1)
    assert np.array_equal(P.waveform_to_examples(stereo, 16000), P.waveform_to_examples(mono, 16000))
    assert np.array_equal(P.log_mel_window(stereo), P.log_mel_window(mono))


def test_int16_is_scaled_by_32768():
    rng = np.random.default_rng(5)
    pcm = rng.integers(-32768, 32767, size=20000, dtype=np.int16)
    as_float = pcm.astype(np.float64) / 32768.0
    assert np.array_equal(P.waveform_to_examples(pcm, 16000), P.waveform_to_examples(as_float, 16000))
    assert np.array_equal(P.log_mel_window(pcm), P.log_mel_window(as_float))
    pcm_stereo = np.stack([pcm, pcm[::-1]], axis=1)
    expected = P.waveform_to_examples(pcm_stereo.astype(np.float64) / 32768.0, 16000)
    assert np.allclose(P.waveform_to_examples(pcm_stereo, 16000), expected)


def test_uint8_is_centred():
    pcm = np.array([0, 128, 255] * 6000, dtype=np.uint8)
    as_float = (pcm.astype(np.float64) - 128.0) / 128.0
    assert np.array_equal(P.waveform_to_examples(pcm, 16000), P.waveform_to_examples(as_float, 16000))


# --------------------------------------------------------------------------------------------
# Log-mel: the sparse filterbank, batch independence, LogMelStream
# --------------------------------------------------------------------------------------------


def dense_log_mel(x):
    """The straightforward log-mel (the former implementation): a dense filterbank product."""
    frames = np.lib.stride_tricks.sliding_window_view(np.asarray(x, np.float64), 400)[::160]
    return np.log(np.abs(np.fft.rfft(frames * P.periodic_hann(400), 512)) @ P.MEL_MATRIX + 0.01)


def test_sparse_filterbank_is_the_mel_matrix():
    lo, hi, taps, weights = P._sparse_filterbank(P.MEL_MATRIX)
    dense = np.zeros_like(P.MEL_MATRIX)
    for j in range(taps.shape[0]):
        np.add.at(dense, (lo + taps[j], np.arange(64)), weights[j])
    assert np.array_equal(dense, P.MEL_MATRIX)
    assert (lo, hi) == (5, 240) and taps.shape == (17, 64)


@pytest.mark.parametrize("kind", ["noise", "loud", "tone_and_hiss", "silence"])
def test_log_mel_equals_dense_product(kind):
    rng = np.random.default_rng(11)
    n = 3 * 16000
    x = {"noise": rng.standard_normal(n) * 0.1, "loud": np.clip(rng.standard_normal(n), -1, 1),
         "tone_and_hiss": tone(150.0, 3.0, amplitude=1.0) + 1e-6 * rng.standard_normal(n),
         "silence": np.zeros(n)}[kind]
    np.testing.assert_allclose(P.log_mel_spectrogram(x), dense_log_mel(x), rtol=1e-12, atol=1e-12)
    window = x[-P.LIVE_WINDOW_SAMPLES:]
    np.testing.assert_allclose(P.log_mel_window(window)[0], dense_log_mel(window).astype(np.float32),
                               rtol=1e-6, atol=1e-6)


def test_log_mel_rows_do_not_depend_on_how_many_are_computed():
    rng = np.random.default_rng(12)
    x = rng.standard_normal(8 * 16000) * 0.1
    frames = P._stft_frames(x)
    full = P._log_mel_frames(frames)
    assert full.shape == (frames.shape[0], 64) and frames.shape[0] > P._LOG_MEL_BLOCK
    for n in [*range(1, 13), 95, 96, 97, P._LOG_MEL_BLOCK + 1]:
        for start in (0, 3, 100):
            assert np.array_equal(P._log_mel_frames(frames[start:start + n]), full[start:start + n]), (n, start)
    picked = [5, 6, 40, 41, 300]
    assert np.array_equal(P._log_mel_frames(np.ascontiguousarray(frames[picked])), full[picked])


def stream_windows(signal, fps, count, first_end=P.LIVE_WINDOW_SAMPLES):
    ends = [first_end + int(round(i * P.SAMPLE_RATE / fps)) for i in range(count)]
    return [signal[max(0, e - P.LIVE_WINDOW_SAMPLES):e] for e in ends]


@pytest.mark.parametrize("fps, hops", [(25.0, 4), (10.0, 10), (100.0, 1)])
def test_stream_reuses_frames_when_hops_align(fps, hops):
    rng = np.random.default_rng(13)
    signal = (rng.standard_normal(5 * 16000) * 0.1).astype(np.float32)
    stream = P.LogMelStream()
    windows = stream_windows(signal, fps, 40)
    for w in windows:
        out = stream(w)
        assert out.shape == (1, 96, 64) and out.dtype == np.float32
        assert np.array_equal(out, P.log_mel_window(w))
    assert stream.frames_computed == 96 + hops * (len(windows) - 1)
    assert stream.frames_reused == (96 - hops) * (len(windows) - 1)


@pytest.mark.parametrize("fps", [15.0, 30.0])
def test_stream_at_unaligned_rates_computes_everything(fps):
    rng = np.random.default_rng(14)
    signal = (rng.standard_normal(4 * 16000) * 0.1).astype(np.float32)
    stream = P.LogMelStream()
    windows = stream_windows(signal, fps, 30)
    for w in windows:
        assert np.array_equal(stream(w), P.log_mel_window(w))
    assert stream.frames_reused == 0 and stream.frames_computed == 96 * len(windows)


def test_stream_recomputes_frames_whose_samples_changed():
    # A resampled ring recomputes its newest samples once more input arrives: the previous window's tail
    # differs from the same samples in the next window. Only frames that read them may be recomputed.
    rng = np.random.default_rng(15)
    signal = rng.standard_normal(4 * 16000) * 0.1
    stream = P.LogMelStream()
    provisional = 250  # samples at the end of each window that are not final yet
    for i in range(20):
        end = P.LIVE_WINDOW_SAMPLES + 640 * i
        w = signal[end - P.LIVE_WINDOW_SAMPLES:end].copy()
        w[-provisional:] += rng.standard_normal(provisional) * 0.01
        before = stream.frames_computed
        assert np.array_equal(stream(w), P.log_mel_window(w))
        if i:
            # new: the last 4 frames; recomputed: the frames reading the previous window's provisional tail
            # (samples 15350.. of the previous window = 14710.. of this one: frames 89..95 minus the 4 new)
            touched = {f for f in range(96) if 160 * f + 400 > P.LIVE_WINDOW_SAMPLES - 640 - provisional}
            assert stream.frames_computed - before == len(touched | set(range(92, 96)))


def test_stream_start_silence_repeats_and_jumps():
    rng = np.random.default_rng(16)
    signal = (rng.standard_normal(3 * 16000) * 0.1).astype(np.float32)
    stream = P.LogMelStream()
    # a stream that has just started: short windows, zero-padded on the left
    for end in (0, 640, 1280, 8000, 15360, 16000):
        w = signal[max(0, end - P.LIVE_WINDOW_SAMPLES):end]
        assert np.array_equal(stream(w), P.log_mel_window(w))
    # the same window twice: everything reused
    w = signal[20000:20000 + P.LIVE_WINDOW_SAMPLES]
    stream(w)
    reused = stream.frames_reused
    assert np.array_equal(stream(w), P.log_mel_window(w))
    assert stream.frames_reused == reused + 96
    # a jump to unrelated audio: nothing reused, still exact
    other = (rng.standard_normal(P.LIVE_WINDOW_SAMPLES) * 0.1).astype(np.float32)
    computed = stream.frames_computed
    assert np.array_equal(stream(other), P.log_mel_window(other))
    assert stream.frames_computed == computed + 96
    # silence: every shift matches sample for sample, and every reuse is exact
    for _ in range(3):
        assert np.array_equal(stream(np.zeros(P.LIVE_WINDOW_SAMPLES)), P.log_mel_window(np.zeros(0)))
    stream.reset()
    assert stream.frames_computed == stream.frames_reused == 0


def test_stream_accepts_what_log_mel_window_accepts():
    rng = np.random.default_rng(17)
    pcm = rng.integers(-32768, 32767, size=(20000, 2), dtype=np.int16)
    stream = P.LogMelStream()
    for end in (16000, 16640, 17280):
        w = pcm[end - P.LIVE_WINDOW_SAMPLES:end]
        assert np.array_equal(stream(w), P.log_mel_window(w))
    assert stream.frames_reused > 0
    with pytest.raises(ValueError, match="NaN or infinite"):
        stream(np.full(15600, np.nan))


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [48000, 44100, 22050, 8000])
def test_resample_keeps_tone_frequency(rate):
    seconds = 2.0
    x = tone(1000.0, seconds, sample_rate=rate)
    y = P.resample(x, rate, 16000)
    assert y.shape == (int(len(x) * 16000 // rate),)
    expected = tone(1000.0, seconds, sample_rate=16000)[: len(y)]
    interior = slice(400, len(y) - 400)  # away from the zero-padded ends
    assert np.max(np.abs(y[interior] - expected[interior])) < 1e-4
    spectrum = np.abs(np.fft.rfft(y[interior] * np.hanning(len(y[interior]))))
    peak_hz = np.argmax(spectrum) * 16000 / len(y[interior])
    assert abs(peak_hz - 1000.0) < 2.0


def test_resample_removes_content_above_new_nyquist():
    x = tone(10000.0, 1.0, sample_rate=48000)  # would alias to 6 kHz
    y = P.resample(x, 48000, 16000)[500:-500]
    assert np.max(np.abs(y)) < 1e-5


def test_resample_passband_is_flat():
    x = tone(7000.0, 1.0, sample_rate=48000)
    y = P.resample(x, 48000, 16000)[500:-500]
    assert np.sqrt(2) * y.std() == pytest.approx(0.5, rel=2e-3)


def test_resample_preserves_dc_and_identity():
    y = P.resample(np.ones(4410), 44100, 16000)
    assert np.allclose(y[200:-200], 1.0, atol=1e-9)
    x = np.arange(10.0)
    assert np.array_equal(P.resample(x, 16000, 16000), x)


def test_examples_from_48k_match_16k():
    x48 = tone(1000.0, 3.0, sample_rate=48000)
    x16 = tone(1000.0, 3.0, sample_rate=16000)
    a = P.waveform_to_examples(x48, 48000)
    b = P.waveform_to_examples(x16, 16000)
    assert a.shape == b.shape == (3, 96, 64)
    # interior frames agree closely; the first frame sees the resampler's zero-padded start
    assert np.max(np.abs(a[1] - b[1])) < 1e-3
    assert int(np.argmax(a[1].mean(axis=0))) == int(np.argmax(b[1].mean(axis=0)))


# --------------------------------------------------------------------------------------------
# Audio input errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wav, rate, message",
    [
        (np.zeros(0), 16000, "empty"),
        (np.zeros((0, 2)), 16000, "empty"),
        (np.array([0.0, np.nan] * 10000), 16000, "NaN or infinite"),
        (np.array([0.0, np.inf] * 10000), 16000, "NaN or infinite"),
        (np.zeros((2, 2, 100)), 16000, "samples, channels"),
        (np.zeros((2, 20000)), 16000, "channels-first"),
        (np.zeros(20000, dtype=bool), 16000, "dtype"),
        (np.zeros(20000, dtype=np.complex64), 16000, "dtype"),
        (np.zeros(20000), 0, "sample_rate"),
        (np.zeros(20000), -16000, "sample_rate"),
        (np.zeros(20000), 16000.5, "sample_rate"),
        (np.zeros(20000), "16000", "sample_rate"),
    ],
)
def test_bad_audio_raises(wav, rate, message):
    with pytest.raises(ValueError, match=message):
        P.waveform_to_examples(wav, rate)


def test_bad_window_raises():
    with pytest.raises(ValueError, match="NaN or infinite"):
        P.log_mel_window(np.full(15600, np.nan))
    with pytest.raises(ValueError):
        P.resample(np.zeros((100, 2)), 48000, 16000)


def test_integral_float_rate_is_accepted():
    wav = tone(440.0, 1.0)
    assert np.array_equal(P.waveform_to_examples(wav, 16000.0), P.waveform_to_examples(wav, 16000))


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "in_hw, out_hw",
    [((480, 640), (224, 224)), ((7, 5), (13, 17)), ((224, 224), (224, 224)), ((33, 47), (10, 9)), ((1, 1), (3, 2))],
)
def test_resize_matches_torch(in_hw, out_hw):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    img = rng.random((*in_hw, 3), dtype=np.float32)
    ours = P.resize_bilinear(img, out_hw)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(img).permute(2, 0, 1)[None], size=out_hw, mode="bilinear", align_corners=False, antialias=False
    )[0].permute(1, 2, 0).numpy()
    assert ours.shape == (*out_hw, 3) and ours.dtype == np.float32
    assert np.max(np.abs(ours - ref)) < 1e-4
    gray = P.resize_bilinear(img[..., 0], out_hw)
    assert np.max(np.abs(gray - ref[..., 0])) < 1e-4


def test_resize_uint8_equals_float_input():
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    assert np.allclose(P.resize_bilinear(img, 20), P.resize_bilinear(img.astype(np.float32), 20), atol=1e-4)


def test_resize_rejects_bad_input():
    with pytest.raises(ValueError):
        P.resize_bilinear(np.zeros((2, 3, 4, 5)), 4)
    with pytest.raises(ValueError):
        P.resize_bilinear(np.zeros((0, 3, 3)), 4)
    with pytest.raises(ValueError):
        P.resize_bilinear(np.zeros((4, 4, 3)), (4, 0))
    with pytest.raises(ValueError):
        P.resize_bilinear(np.zeros((4, 4, 3)), (1, 2, 3))


def test_preprocess_frame_normalises():
    frame = np.zeros((10, 12, 3), dtype=np.uint8)
    frame[..., 0] = 255
    frame[..., 1] = 128
    out = P.preprocess_frame(frame, size=8)
    assert out.shape == (3, 8, 8) and out.dtype == np.float32 and out.flags.c_contiguous
    expected = (np.array([1.0, 128 / 255, 0.0]) - P.IMAGENET_MEAN) / P.IMAGENET_STD
    assert np.allclose(out.reshape(3, -1), expected[:, None], atol=1e-5)
    assert P.preprocess_frame(frame, size=(6, 4)).shape == (3, 6, 4)


def test_preprocess_frame_matches_torch_pipeline():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    frame = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    x = torch.from_numpy(frame).permute(2, 0, 1).float()[None]
    x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=False)[0]
    x = (x / 255.0 - torch.tensor(P.IMAGENET_MEAN)[:, None, None]) / torch.tensor(P.IMAGENET_STD)[:, None, None]
    assert np.max(np.abs(P.preprocess_frame(frame, 64) - x.numpy())) < 1e-4


def test_preprocess_frame_rejects_bad_frames():
    with pytest.raises(ValueError, match="uint8"):
        P.preprocess_frame(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        P.preprocess_frame(np.zeros((8, 8, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        P.preprocess_frame(np.zeros((8, 8), dtype=np.uint8))


def test_preprocess_frames_batch_and_list():
    rng = np.random.default_rng(9)
    clip = rng.integers(0, 256, size=(4, 30, 40, 3), dtype=np.uint8)
    batch = P.preprocess_frames(clip, size=16)
    assert batch.shape == (4, 3, 16, 16) and batch.dtype == np.float32
    for t in range(4):
        assert np.array_equal(batch[t], P.preprocess_frame(clip[t], 16))
    mixed = [clip[0], rng.integers(0, 256, size=(50, 20, 3), dtype=np.uint8)]
    assert P.preprocess_frames(mixed, size=16).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError):
        P.preprocess_frames([], size=16)
    with pytest.raises(ValueError):
        P.preprocess_frames(clip[0], size=16)


def test_denormalize_round_trip():
    rng = np.random.default_rng(10)
    frame = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    x = P.preprocess_frame(frame, 16)  # same size: values unchanged by the resize
    assert np.array_equal(P.denormalize(x), frame)
    assert np.array_equal(P.denormalize(np.stack([x, x])), np.stack([frame, frame]))


def test_constants_are_read_only():
    with pytest.raises(ValueError):
        P.IMAGENET_MEAN[0] = 0.0


def straightforward_resize(img, out_h, out_w):
    """Bilinear resize computed plainly in float64 from the PyTorch taps: out = sum of the four corners, each
    weighted by its row and column weight (no fusion, no buffers)."""
    x = np.asarray(img, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, :, None]
    r0, r1, wr0, wr1 = P._linear_taps(x.shape[0], out_h)
    c0, c1, wc0, wc1 = P._linear_taps(x.shape[1], out_w)
    wr0, wr1, wc0, wc1 = (np.asarray(a, np.float64) for a in (wr0, wr1, wc0, wc1))
    out = np.zeros((out_h, out_w, x.shape[2]))
    for rows, wr in ((r0, wr0), (r1, wr1)):
        for cols, wc in ((c0, wc0), (c1, wc1)):
            out += x[np.ix_(rows, cols)] * (wr[:, None] * wc[None, :])[:, :, None]
    return out


def straightforward_preprocess(frame, out_h, out_w):
    x = straightforward_resize(frame, out_h, out_w) / 255.0
    x = (x - P.IMAGENET_MEAN.astype(np.float64)) / P.IMAGENET_STD.astype(np.float64)
    return x.transpose(2, 0, 1)


def assert_close_relative(fast, ref, rel=1e-5):
    """Within ``rel`` of the reference, relative to its magnitude (values near zero: to its largest value)."""
    assert fast.shape == ref.shape
    np.testing.assert_allclose(fast, ref, rtol=rel, atol=rel * max(1.0, float(np.max(np.abs(ref)))))


FAST_PATH_SIZES = [
    ((480, 640), (224, 224)),  # camera -> default model size
    ((480, 640), (128, 128)),
    ((128, 128), (128, 128)),  # synthetic demo: no resize at all
    ((37, 53), (64, 29)),  # odd sizes, up in one axis, down in the other
    ((7, 5), (13, 17)),  # upscaling
    ((1, 1), (3, 2)),
    ((2, 3), (1, 1)),
    ((50, 40), (50, 17)),  # rows unchanged
    ((50, 40), (23, 40)),  # columns unchanged
    ((256, 256), (128, 128)),  # exact factor 2
    ((3, 1000), (224, 224)),
]


@pytest.mark.parametrize("in_hw, out_hw", FAST_PATH_SIZES)
def test_preprocess_frame_equals_straightforward(in_hw, out_hw):
    rng = np.random.default_rng(20)
    frame = rng.integers(0, 256, size=(*in_hw, 3), dtype=np.uint8)
    fast = P.preprocess_frame(frame, out_hw)
    assert fast.dtype == np.float32 and fast.flags.c_contiguous and fast.shape == (3, *out_hw)
    assert_close_relative(fast, straightforward_preprocess(frame, *out_hw))


@pytest.mark.parametrize("in_hw, out_hw", FAST_PATH_SIZES[3:])
@pytest.mark.parametrize("dtype, channels", [(np.float64, 3), (np.float32, None), (np.int16, 1), (np.uint8, 4)])
def test_resize_bilinear_equals_straightforward(in_hw, out_hw, dtype, channels):
    rng = np.random.default_rng(21)
    shape = in_hw if channels is None else (*in_hw, channels)
    img = (rng.random(shape) * 200 - (50 if dtype == np.int16 else 0)).astype(dtype)
    fast = P.resize_bilinear(img, out_hw)
    ref = straightforward_resize(img, *out_hw)
    assert fast.dtype == np.float32 and fast.flags.c_contiguous
    assert_close_relative(fast, ref[..., 0] if channels is None else ref)


def test_preprocess_frame_of_views_and_identity_size():
    rng = np.random.default_rng(22)
    big = rng.integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    view = big[10:170:2, ::3]  # not contiguous
    assert_close_relative(P.preprocess_frame(view, 48), straightforward_preprocess(np.ascontiguousarray(view), 48, 48))
    fortran = np.asfortranarray(big[:64, :64])
    assert_close_relative(P.preprocess_frame(fortran, 64), straightforward_preprocess(big[:64, :64], 64, 64))
    # same size in and out: just the normalisation, per pixel
    x = P.preprocess_frame(big[:64, :64], 64)
    expected = (big[:64, :64].astype(np.float64) / 255.0 - P.IMAGENET_MEAN) / P.IMAGENET_STD
    np.testing.assert_allclose(x, expected.transpose(2, 0, 1), atol=1e-6)


def test_preprocess_frame_writes_into_out():
    rng = np.random.default_rng(23)
    frame = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    batch = np.full((2, 3, 24, 32), np.nan, dtype=np.float32)
    got = P.preprocess_frame(frame, (24, 32), out=batch[1])
    assert np.shares_memory(got, batch) and np.array_equal(batch[1], P.preprocess_frame(frame, (24, 32)))
    assert np.isnan(batch[0]).all()
    for bad in (np.empty((3, 24, 31), np.float32), np.empty((3, 24, 32), np.float64),
                np.empty((3, 32, 24), np.float32).transpose(0, 2, 1), np.empty((3, 24, 32), np.float32).tolist()):
        with pytest.raises(ValueError, match="out must be"):
            P.preprocess_frame(frame, (24, 32), out=bad)


def test_reused_buffers_do_not_leak_between_calls_or_threads():
    import concurrent.futures

    rng = np.random.default_rng(24)
    frames = [rng.integers(0, 256, size=hw + (3,), dtype=np.uint8) for hw in [(48, 64), (48, 64), (30, 20)] * 3]
    sizes = [16, 16, (9, 7)] * 3
    serial = [straightforward_preprocess(f, *P._parse_size(s)) for f, s in zip(frames, sizes)]
    for f, s, ref in zip(frames, sizes, serial):  # alternating shapes reuse and evict per-thread buffers
        assert_close_relative(P.preprocess_frame(f, s), ref)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            results = list(pool.map(lambda a: P.preprocess_frame(*a), zip(frames, sizes)))
            for got, ref in zip(results, serial):
                assert_close_relative(got, ref)
            mels = list(pool.map(P.log_mel_window, [rng.standard_normal(15600) for _ in range(6)]))
            assert all(m.shape == (1, 96, 64) for m in mels)


def test_preprocess_bench_runs_and_agrees():
    from autr.benchmarks import preprocess_bench as B

    result = B.run(repeat=2)
    assert len(result["rows"]) == 6 and result["threads"]
    for row in result["rows"]:
        assert row["before_ms"] > 0 and row["after_ms"] > 0 and row["ratio"] > 0
        assert row["max_abs_diff"] < 1e-4, row
        assert row.get("equals_log_mel_window", True) is True
    assert "ratio" in B.format_table(result, "test")
    frame = np.random.default_rng(25).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    assert_close_relative(B.baseline_preprocess_frame(frame, 32), straightforward_preprocess(frame, 32, 32))


# --------------------------------------------------------------------------------------------
# Import hygiene
# --------------------------------------------------------------------------------------------


def test_import_does_not_pull_in_torch():
    code = (
        "import sys\n"
        "import autr.preprocess\n"
        "banned = [m for m in ('torch', 'scipy', 'cv2', 'timm') if m in sys.modules]\n"
        "assert not banned, banned\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(REPO_ROOT), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_preprocessing_wakes_no_blas_thread():
    """Neither the frame path nor the log-mel runs a BLAS product: numpy's OpenBLAS workers (idle threads of the
    process) get no CPU time while they run. A matrix product, the control, does wake them."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads per-thread CPU time from /proc")
    code = (
        "import os, threading, numpy as np\n"
        "import autr.preprocess as P\n"
        "me = threading.get_native_id()\n"
        "def others():\n"
        "    total = 0\n"
        "    for tid in os.listdir('/proc/self/task'):\n"
        "        if int(tid) != me:\n"
        "            with open(f'/proc/self/task/{tid}/stat') as f:\n"
        "                fields = f.read().rsplit(')', 1)[1].split()\n"
        "            total += int(fields[11]) + int(fields[12])\n"
        "    return total\n"
        "rng = np.random.default_rng(0)\n"
        "w = rng.standard_normal(15600) * 0.1\n"
        "frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)\n"
        "a = rng.standard_normal((400, 400))\n"
        "import time; time.sleep(1.0)\n"  # OpenBLAS's workers spin for a while after they start: let them sleep
        "t0 = others()\n"
        "for _ in range(300):\n"
        "    P.log_mel_window(w); P.preprocess_frame(frame, 224); P.preprocess_frame(frame, 128)\n"
        "ours = others() - t0\n"
        "t0 = others()\n"  # the control last: woken workers keep spinning for a while after a product
        "for _ in range(150):\n"
        "    a @ a\n"
        "print(others() - t0, ours)\n"
    )
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(REPO_ROOT), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    control, ours = (int(v) for v in result.stdout.split())
    if control == 0:
        pytest.skip("numpy's BLAS runs no worker threads here (one core, or a single-threaded BLAS)")
    assert ours == 0
