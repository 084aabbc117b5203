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
