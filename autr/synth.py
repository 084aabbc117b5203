"""SynthAVS: a procedural audio-visual segmentation dataset in the AVSBench layout.

Every clip shows 2-4 textured shapes moving over a noisy, textured background. Each shape belongs to a
category (`CATEGORIES`): a visual identity (shape + colour + texture) paired with a signature sound.
Only some objects *sound*; the others are silent distractors, often (p=0.6) larger and brighter than the
sounding object, so a model has to listen to know which object to segment. A sounding object and a
distractor never share a category within a clip (every object in a clip has its own category).

Timing follows AVSBench (OpenNLPLab/AVSBench, preprocess_scripts/preprocess_s4.py): 5 s of audio at
16 kHz (80,000 samples) and 5 frames. The official extraction samples 16 frames per second and keeps the
one with `k % 16 == 15`, i.e. frame k (k = 0..4, file suffix k+1) shows time `k + 15/16` s
(`FRAME_TIMES`). Frame k is paired with second k of audio: its ground truth is the union of the visible
(occlusion-aware) masks of the objects that sound during second [k, k+1).

Modes:
- ``s4``: exactly one sounding object, sounding for all five seconds, plus 1-3 distractors.
- ``ms3``: 1-3 sounding objects (plus at least one distractor, 2-4 objects in all), each with its own
  per-second on/off pattern (each sounding object is on in at least one second). A second in which nothing
  sounds gives an empty ground-truth frame.

Audio: each sounding object's signature (unit RMS, small random pitch jitter and phases), gated per
second with 10 ms ramps, at a random gain in [0.5, 1], plus white Gaussian noise at a random SNR in
[5, 20] dB (SNR relative to the mixture's power over the seconds where something sounds), then scaled to a
random peak in [0.5, 0.9] and quantised to 16-bit PCM (the in-memory clip holds the quantised values, so
reading the written ``.wav`` back gives exactly ``SynthClip.wav``).

On-disk layout (`generate`) mirrors the official AVSBench release, so one reader (`autr.datasets`) loads
both; facts checked against OpenNLPLab/AVSBench ``avs_scripts/avs_s4/dataloader.py``,
``avs_scripts/avs_ms3/dataloader.py``, ``avs_scripts/avs_*/config.py`` and
``preprocess_scripts/preprocess_{s4,ms3}.py``::

    S4:  s4_meta_data.csv                 columns name,start_time,category,split (the official loader
                                          reads column 0 = name, column 2 = category, filters on 'split')
         s4_data/visual_frames/{split}/{category}/{name}/{name}_{k}.png     k = 1..5
         s4_data/gt_masks/{split}/{category}/{name}/{name}_{k}.png          train: k = 1 only; val/test 1..5
         s4_data/audio_wav/{split}/{category}/{name}.wav                    16 kHz mono int16
    MS3: ms3_meta_data.csv                columns video_id,split (column 0 = name, filters on 'split')
         ms3_data/visual_frames/{name}/{name}.mp4_{k}.png                   (no split level, as released)
         ms3_data/gt_masks/{split}/{name}/{name}_{k}.png                    k = 1..5
         ms3_data/audio_wav/{split}/{name}.wav

Extras that only SynthAVS has (ignored by the official loaders):
- ``s4_data/gt_masks_full/train/{category}/{name}/{name}_{k}.png`` (k = 1..5): full ground truth for the
  S4 train split, which officially has only the first frame's mask. ``autr.datasets`` uses it when asked
  (``full_gt=True``).
- ``{mode}_synth_clips.jsonl``: one JSON object per clip (name, split, sounding categories per second,
  per-object category / on-off pattern / gain / size, SNR, seen/unseen).
- ``synth_info.json``: generator version, seed, arguments, category registry, held-out categories.

Ground-truth PNGs are 8-bit greyscale, 0 = background, 255 = sounding object (the official loaders read
them with ``convert('1')`` / ``convert('P')``, so any value > 0 is foreground).

Determinism: clip ``i`` of split ``s`` draws everything from ``np.random.SeedSequence([seed, mode_id,
split_id, i])``, so output bytes depend on the seed only, never on the number of worker processes.

Open set (paper Table III, seen vs. unseen): ``open_set=True`` holds `OPEN_SET_HELD_OUT` out of train and
val entirely (neither sounding nor distractor). Half of the test clips are *unseen* clips (at least one
sounding object from a held-out category; distractors from any category), the other half *seen* clips
(only seen categories). ``unseen`` is recorded per clip in the jsonl.

Category designs (``design=``, ``autr data synth --design``, ``autr eval --synthetic --design``):
- ``distinct`` (the default, `CATEGORIES`): every category has its own shape, colour, texture and sound.
  A held-out category therefore shares *nothing* with the training ones; nothing learned can carry over
  to it, and its unseen-category mIoU measures only failure (0.003 vs 0.588 seen in the first paper-tables
  run). Clips of this design are bit-identical to those of generator 1.0.0 (pinned by
  ``tests/test_synth_factored.py``; the embedded default's model card depends on it).
- ``factored`` (`FACTORED_CATEGORIES`): categories are combinations of two shared factors, each of which
  ties a sound cue to a visual cue: a *sound family* (timbre + rhythm: harmonic buzz with 12 Hz
  modulation, vibrato whistle, 3 Hz noise bursts, 4 Hz decaying knocks) always goes with one *visual
  family* (shape + texture: circle/stripes, square/dots, triangle/checker, star/rings), and a *pitch band*
  (200, 480, 1150, 2800 Hz) always goes with one *colour* (red, green, blue, yellow). The 4 x 4 grid gives
  16 categories named ``{family}_{band}`` (``buzz_low``...). ``open_set=True`` holds out one transversal of
  the grid, `FACTORED_HELD_OUT` = buzz_mid, whistle_top, hiss_low, knock_high: every held-out category is a
  NEW COMBINATION whose sound family (and so its shape and texture) and whose pitch band (and so its colour)
  each appear in three training categories, never together. The rules "this timbre -> that shape, this
  pitch -> that colour" are learnable from the training categories and are exactly what an unseen
  category needs, so the seen / unseen gap of paper Table III measures whether a model learned
  transferable audio-visual correspondences (compositional generalisation) rather than memorised
  category identities. Distractors may share one factor with the sounding object (never both), so
  following a single cue is not enough. synth_info.json records the factors, their sound -> look mapping
  and the held-out combinations (``factor_design``); jsonl objects carry ``sound_family`` / ``pitch_band``.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

GENERATOR_VERSION = "1.1.0"  # 1.1.0: factored design added; distinct clips unchanged since 1.0.0
SAMPLE_RATE = 16000
CLIP_SECONDS = 5
N_FRAMES = 5
CLIP_SAMPLES = SAMPLE_RATE * CLIP_SECONDS
FRAME_TIMES = tuple(k + 15.0 / 16.0 for k in range(N_FRAMES))  # AVSBench: frame k at k + 15/16 s
SPLITS = ("train", "val", "test")
MODES = ("s4", "ms3")
_MODE_ID = {"s4": 4, "ms3": 3}
_SPLIT_ID = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class Category:
    """A visual identity paired with a signature sound."""

    name: str
    shape: str  # circle, square, triangle, star, ring, cross, diamond, hexagon, pentagon, crescent
    color: tuple  # base RGB (medium brightness, so a "bright" variant exists)
    texture: str  # stripes, dots, checker, rings
    sound: str  # human-readable description of the signature
    band: tuple  # (lo, hi) Hz: where the signature's main energy lies (bands are disjoint)
    # factored design only (empty in the distinct design): the shared factors this category combines
    sound_family: str = ""  # timbre + rhythm family (FACTOR_SOUND_FAMILIES)
    pitch_band: str = ""  # pitch band (FACTOR_PITCH_BANDS)
    f0: float = 0.0  # the band's centre frequency, Hz


CATEGORIES: tuple = (
    Category("pentagon_buzz", "pentagon", (150, 105, 55), "checker",
             "150 Hz buzz (harmonics 1-6), 12 Hz amplitude modulation", (130.0, 170.0)),
    Category("circle_pulse", "circle", (200, 40, 40), "stripes",
             "220 Hz square-ish tone (odd harmonics), pulsed 4 Hz", (205.0, 235.0)),
    Category("ring_drone", "ring", (185, 45, 185), "dots",
             "330 Hz sawtooth-ish drone (harmonics 1-8), 1.5 Hz tremolo", (315.0, 345.0)),
    Category("crescent_wind", "crescent", (235, 120, 170), "rings",
             "band-passed noise 500-700 Hz, 0.5 Hz swell", (500.0, 700.0)),
    Category("square_vibrato", "square", (40, 80, 210), "dots",
             "880 Hz sine, 6 Hz vibrato +-20 Hz", (840.0, 920.0)),
    Category("star_chirp", "star", (215, 185, 30), "rings",
             "up-chirps 1000->1500 Hz, 4 per second", (980.0, 1530.0)),
    Category("diamond_bell", "diamond", (230, 120, 20), "stripes",
             "1760 Hz bell (+2.76x partial), struck twice per second", (1720.0, 1800.0)),
    Category("triangle_hiss", "triangle", (40, 165, 60), "checker",
             "noise bursts band-passed 2.2-3.2 kHz, 3 Hz", (2200.0, 3200.0)),
    Category("hexagon_whistle", "hexagon", (120, 60, 200), "dots",
             "4 kHz whistle, 2 Hz FM +-200 Hz", (3700.0, 4300.0)),
    Category("cross_clicks", "cross", (30, 185, 200), "checker",
             "10 Hz click train high-passed 5.5-7.5 kHz", (5500.0, 7500.0)),
)
CATEGORY_NAMES = tuple(c.name for c in CATEGORIES)
_CAT_INDEX = {c.name: i for i, c in enumerate(CATEGORIES)}
OPEN_SET_HELD_OUT = ("hexagon_whistle", "crescent_wind")

# ------------------------------------------------------------------------------- factored design
# Two shared factors. A sound family (timbre + rhythm) always goes with one visual family (shape + texture);
# a pitch band always goes with one colour. A category is one (sound family, pitch band) combination.
DESIGNS = ("distinct", "factored")
FACTOR_SOUND_FAMILIES = {  # sound family: (description, shape, texture)
    "buzz": ("harmonic buzz (harmonics 1-6 below 7 kHz, 1/h), 12 Hz amplitude modulation", "circle", "stripes"),
    "whistle": ("pure tone, 6 Hz vibrato +-3 %", "square", "dots"),
    "hiss": ("band-passed noise (0.85-1.18 x centre), 3 Hz on/off bursts", "triangle", "checker"),
    "knock": ("decaying tone strikes (tau 60 ms, + 2x partial), 4 per second", "star", "rings"),
}
FACTOR_PITCH_BANDS = {  # pitch band: (centre Hz, colour)
    "low": (200.0, (200, 45, 45)),  # red
    "mid": (480.0, (45, 165, 60)),  # green
    "high": (1150.0, (45, 85, 215)),  # blue
    "top": (2800.0, (215, 185, 30)),  # yellow
}
# One held-out combination per sound family and per pitch band (a transversal of the 4 x 4 grid): every
# held-out category's sound family, visual family, pitch band and colour each appear in 3 training categories.
FACTORED_HELD_OUT = ("buzz_mid", "whistle_top", "hiss_low", "knock_high")


def _factored_categories() -> tuple:
    out = []
    for fam, (desc, shape, texture) in FACTOR_SOUND_FAMILIES.items():
        for band, (f0, color) in FACTOR_PITCH_BANDS.items():
            out.append(Category(f"{fam}_{band}", shape, color, texture, f"{desc}, centred at {f0:g} Hz",
                                (round(0.85 * f0, 1), round(1.18 * f0, 1)), sound_family=fam, pitch_band=band,
                                f0=f0))
    return tuple(out)


FACTORED_CATEGORIES: tuple = _factored_categories()
FACTORED_CATEGORY_NAMES = tuple(c.name for c in FACTORED_CATEGORIES)
_FACTORED_INDEX = {c.name: i for i, c in enumerate(FACTORED_CATEGORIES)}


def check_design(design: str) -> str:
    """`design` if it names a category design, else ValueError with one clear line."""
    if design not in DESIGNS:
        raise ValueError(f"SynthAVS category design must be one of {', '.join(DESIGNS)}; got {design!r}")
    return design


def design_categories(design: str = "distinct") -> tuple:
    """The category registry of a design (a tuple of `Category`)."""
    return CATEGORIES if check_design(design) == "distinct" else FACTORED_CATEGORIES


def held_out_categories(design: str = "distinct") -> tuple:
    """The categories `open_set=True` holds out of train and val in a design."""
    return OPEN_SET_HELD_OUT if check_design(design) == "distinct" else FACTORED_HELD_OUT


def factor_design() -> dict:
    """JSON description of the factored design (recorded in synth_info.json)."""
    seen = [c for c in FACTORED_CATEGORIES if c.name not in FACTORED_HELD_OUT]
    held = []
    for c in FACTORED_CATEGORIES:
        if c.name in FACTORED_HELD_OUT:
            held.append({"category": c.name, "sound_family": c.sound_family, "pitch_band": c.pitch_band,
                         "shape": c.shape, "texture": c.texture, "color": list(c.color),
                         "train_categories_sharing_sound_family":
                             [o.name for o in seen if o.sound_family == c.sound_family],
                         "train_categories_sharing_pitch_band":
                             [o.name for o in seen if o.pitch_band == c.pitch_band]})
    return {
        "factors": {
            "sound_family -> visual family (shape, texture)": {
                k: {"sound": d, "shape": sh, "texture": tx} for k, (d, sh, tx) in FACTOR_SOUND_FAMILIES.items()},
            "pitch_band -> colour": {k: {"centre_hz": f0, "color": list(col)}
                                     for k, (f0, col) in FACTOR_PITCH_BANDS.items()},
        },
        "category_rule": "category = sound_family x pitch_band; it looks like its sound family's shape and "
                         "texture in its pitch band's colour",
        "held_out_combinations": held,
    }


def category_names() -> list:
    return list(CATEGORY_NAMES)


def get_category(name_or_index) -> Category:
    """A category by name (either design) or by index (the distinct design's registry)."""
    if isinstance(name_or_index, (int, np.integer)):
        return CATEGORIES[int(name_or_index)]
    if name_or_index in _CAT_INDEX:
        return CATEGORIES[_CAT_INDEX[name_or_index]]
    if name_or_index in _FACTORED_INDEX:
        return FACTORED_CATEGORIES[_FACTORED_INDEX[name_or_index]]
    raise KeyError(f"unknown SynthAVS category {name_or_index!r}; known: {', '.join(CATEGORY_NAMES)} "
                   f"(factored design: {', '.join(FACTORED_CATEGORY_NAMES)})")


# --------------------------------------------------------------------------------------------- audio

def _bandpass_noise(rng, n, lo, hi, sr=SAMPLE_RATE):
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    spec[(f < lo) | (f > hi)] = 0.0
    return np.fft.irfft(spec, n)


def _smooth_gate(g, sr=SAMPLE_RATE, ms=5.0):
    k = max(1, int(sr * ms / 1000))
    return np.convolve(g.astype(np.float64), np.ones(k) / k, mode="same")


def _harmonics(t, f0, hs, weights, rng):
    x = np.zeros_like(t)
    for h, w in zip(hs, weights):
        x += w * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi))
    return x


def signature(category, n_samples: int = CLIP_SAMPLES, rng=None, sr: int = SAMPLE_RATE) -> np.ndarray:
    """The signature sound of `category` (name, index or Category), float64 [n_samples], unit RMS.

    `rng` randomises phases, the pitch (+-1.5 %) and modulation phases; the main energy always stays inside
    ``Category.band``.
    """
    cat = category if isinstance(category, Category) else get_category(category)
    rng = np.random.default_rng(rng)
    if cat.sound_family:
        return _factored_signature(cat, n_samples, rng, sr)
    t = np.arange(n_samples) / sr
    j = 1.0 + rng.uniform(-0.015, 0.015)  # pitch jitter
    ph = rng.uniform(0, 1)
    name = cat.name
    if name == "pentagon_buzz":
        hs = range(1, 7)
        x = _harmonics(t, 150 * j, hs, [1.0 / h for h in hs], rng)
        x *= 1.0 - 0.8 * (0.5 + 0.5 * np.sin(2 * np.pi * 12 * t + 2 * np.pi * ph))
    elif name == "circle_pulse":
        hs = (1, 3, 5, 7, 9)
        x = _harmonics(t, 220 * j, hs, [1.0 / h for h in hs], rng)
        x *= _smooth_gate(((t * 4 + ph) % 1.0) < 0.55, sr)
    elif name == "ring_drone":
        hs = range(1, 9)
        x = _harmonics(t, 330 * j, hs, [1.0 / h for h in hs], rng)
        x *= 1.0 + 0.3 * np.sin(2 * np.pi * 1.5 * t + 2 * np.pi * ph)
    elif name == "crescent_wind":
        x = _bandpass_noise(rng, n_samples, 500, 700, sr)
        x *= 1.0 + 0.5 * np.sin(2 * np.pi * 0.5 * t + 2 * np.pi * ph)
    elif name == "square_vibrato":
        fm, df = 6.0, 20.0
        x = np.sin(2 * np.pi * 880 * j * t + (df / fm) * np.sin(2 * np.pi * fm * t + 2 * np.pi * ph)
                   + rng.uniform(0, 2 * np.pi))
    elif name == "star_chirp":
        T = 0.25
        tau = (t + ph * T) % T
        f0, f1 = 1000 * j, 1500 * j
        x = np.sin(2 * np.pi * (f0 * tau + (f1 - f0) / (2 * T) * tau ** 2))
        x *= np.sin(np.pi * tau / T) ** 0.5  # soften the restart of each sweep
    elif name == "diamond_bell":
        T = 0.5
        tau = (t + ph * T) % T
        f = 1760 * j
        x = np.exp(-tau / 0.12) * (np.sin(2 * np.pi * f * tau) + 0.5 * np.sin(2 * np.pi * 2.76 * f * tau))
    elif name == "triangle_hiss":
        x = _bandpass_noise(rng, n_samples, 2200, 3200, sr)
        x *= _smooth_gate(((t * 3 + ph) % 1.0) < 0.5, sr)
    elif name == "hexagon_whistle":
        fm, df = 2.0, 200.0
        x = np.sin(2 * np.pi * 4000 * j * t + (df / fm) * np.sin(2 * np.pi * fm * t + 2 * np.pi * ph)
                   + rng.uniform(0, 2 * np.pi))
    elif name == "cross_clicks":
        T = 0.1
        tau = (t + ph * T) % T
        x = _bandpass_noise(rng, n_samples, 5500, 7500, sr) * np.exp(-tau / 0.008)
    else:  # pragma: no cover - registry and synthesisers are kept in step by the tests
        raise KeyError(name)
    rms = float(np.sqrt(np.mean(x ** 2)))
    return x / max(rms, 1e-12)


def _factored_signature(cat: Category, n_samples, rng, sr=SAMPLE_RATE) -> np.ndarray:
    """Factored design: the sound family fixes timbre and rhythm, the pitch band the frequency."""
    t = np.arange(n_samples) / sr
    f = cat.f0 * (1.0 + rng.uniform(-0.015, 0.015))
    ph = rng.uniform(0, 1)
    fam = cat.sound_family
    if fam == "buzz":
        hs = [h for h in range(1, 7) if f * h <= 7000.0]
        x = _harmonics(t, f, hs, [1.0 / h for h in hs], rng)
        x *= 1.0 - 0.8 * (0.5 + 0.5 * np.sin(2 * np.pi * 12 * t + 2 * np.pi * ph))
    elif fam == "whistle":
        fm, df = 6.0, 0.03 * f
        x = np.sin(2 * np.pi * f * t + (df / fm) * np.sin(2 * np.pi * fm * t + 2 * np.pi * ph)
                   + rng.uniform(0, 2 * np.pi))
    elif fam == "hiss":
        x = _bandpass_noise(rng, n_samples, 0.85 * f, 1.18 * f, sr)
        x *= _smooth_gate(((t * 3 + ph) % 1.0) < 0.5, sr)
    elif fam == "knock":
        T = 0.25
        tau = (t + ph * T) % T
        p2 = rng.uniform(0, 2 * np.pi)
        x = np.exp(-tau / 0.06) * (np.sin(2 * np.pi * f * tau) + (0.3 * np.sin(2 * np.pi * 2 * f * tau + p2)
                                                                     if 2 * f <= 7000.0 else 0.0))
    else:  # pragma: no cover - FACTOR_SOUND_FAMILIES and this function are kept in step by the tests
        raise KeyError(fam)
    rms = float(np.sqrt(np.mean(x ** 2)))
    return x / max(rms, 1e-12)


def _second_gate(on: Sequence[bool], n_samples=CLIP_SAMPLES, sr=SAMPLE_RATE, ramp_ms=10.0):
    g = np.repeat(np.asarray(on, dtype=np.float64), sr)[:n_samples]
    if len(g) < n_samples:
        g = np.pad(g, (0, n_samples - len(g)), mode="edge")
    k = int(sr * ramp_ms / 1000)
    return np.clip(np.convolve(g, np.ones(k) / k, mode="same"), 0.0, 1.0)


def _quantise(x: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> int16 (what is written to the .wav). Scale 32768, the inverse of the reading
    convention (int16 / 32768), so quantising ``q / 32768`` again gives back ``q`` exactly."""
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def write_wav(path, wav: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Write mono 16-bit PCM. `wav` is float in [-1, 1] or int16."""
    pcm = wav if wav.dtype == np.int16 else _quantise(np.asarray(wav, dtype=np.float64))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.astype("<i2").tobytes())


# -------------------------------------------------------------------------------------------- visual

def _shape_mask(shape, u, v, R):
    r = np.hypot(u, v)
    if shape == "circle":
        return r <= R
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * R
    if shape in ("triangle", "pentagon", "hexagon"):
        n = {"triangle": 3, "pentagon": 5, "hexagon": 6}[shape]
        Rc = R * (1.15 if n == 3 else 1.0)
        th = np.arctan2(v, u)
        a = np.mod(th + np.pi / n, 2 * np.pi / n) - np.pi / n
        return r * np.cos(a) <= Rc * np.cos(np.pi / n)
    if shape == "star":
        th = np.arctan2(v, u)
        return r <= R * (0.45 + 0.55 * np.abs(np.cos(2.5 * th)) ** 2)
    if shape == "ring":
        return (r <= R) & (r >= 0.55 * R)
    if shape == "cross":
        a, b = np.abs(u), np.abs(v)
        return ((a <= 0.3 * R) & (b <= R)) | ((b <= 0.3 * R) & (a <= R))
    if shape == "diamond":
        return np.abs(u) / (0.75 * R) + np.abs(v) / R <= 1.0
    if shape == "crescent":
        return (r <= R) & (np.hypot(u - 0.45 * R, v) > 0.8 * R)
    raise KeyError(shape)


def _texture(texture, u, v, p):
    if texture == "stripes":
        return np.sin(2 * np.pi * u / p) > 0
    if texture == "dots":
        return (np.mod(u, p) - p / 2) ** 2 + (np.mod(v, p) - p / 2) ** 2 < (0.3 * p) ** 2
    if texture == "checker":
        return (np.floor(u / p) + np.floor(v / p)) % 2 == 0
    if texture == "rings":
        return np.sin(2 * np.pi * np.hypot(u, v) / p) > 0
    raise KeyError(texture)


@dataclass
class _Obj:
    cat: int
    sounding: bool
    on: list  # 5 bools
    gain: float
    radius: float  # relative to the frame size
    bright: float
    big_bright: bool
    color: np.ndarray
    tex_period: float  # relative to the radius
    # motion: centre(t) = c0 + vel * t + amp * sin(2 pi f t + phi), all relative
    c0: np.ndarray = field(default=None)
    vel: np.ndarray = field(default=None)
    amp: np.ndarray = field(default=None)
    freq: np.ndarray = field(default=None)
    phi: np.ndarray = field(default=None)
    rot0: float = 0.0
    rot_speed: float = 0.0
    pulse: float = 0.0  # relative radius oscillation amplitude
    kind: Category = None  # the category itself (its registry depends on the design)

    def centre(self, t):
        c = self.c0 + self.vel * t + self.amp * np.sin(2 * np.pi * self.freq * t + self.phi)
        return np.clip(c, 0.08, 0.92)

    def patch(self, t, size):
        """Bounding-box patch at time t: (y0, y1, x0, x1, mask, u, v, R_px)."""
        cx, cy = self.centre(t) * size
        R = self.radius * size * (1.0 + self.pulse * math.sin(2 * math.pi * 0.4 * t))
        ext = int(math.ceil(R * 1.2)) + 1
        x0, x1 = max(0, int(cx) - ext), min(size, int(cx) + ext + 1)
        y0, y1 = max(0, int(cy) - ext), min(size, int(cy) + ext + 1)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        dx, dy = xs + 0.5 - cx, ys + 0.5 - cy
        a = self.rot0 + self.rot_speed * t
        ca, sa = math.cos(a), math.sin(a)
        u, v = ca * dx + sa * dy, -sa * dx + ca * dy
        mask = _shape_mask((self.kind or CATEGORIES[self.cat]).shape, u, v, R)
        return y0, y1, x0, x1, mask, u, v, R


def _background(rng, size):
    """Static textured background (float RGB [H, W, 3]) and the per-frame noise level."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / size
    a = rng.uniform(0, 2 * np.pi)
    proj = (np.cos(a) * (xs - 0.5) + np.sin(a) * (ys - 0.5)) / 0.71 * 0.5 + 0.5
    c0, c1 = rng.uniform(30, 210, 3), rng.uniform(30, 210, 3)
    bg = c0 + (c1 - c0) * proj[..., None]
    kind = rng.integers(0, 4)
    amp = rng.uniform(8, 28)
    if kind == 0:  # stripes
        b = rng.uniform(0, np.pi)
        per = rng.uniform(0.04, 0.2)
        pat = np.sin(2 * np.pi * (np.cos(b) * xs + np.sin(b) * ys) / per)
        bg += amp * pat[..., None] * rng.uniform(0.5, 1.0, 3)
    elif kind == 1:  # grid
        per = rng.uniform(0.05, 0.2)
        pat = ((np.mod(xs, per) < per * 0.15) | (np.mod(ys, per) < per * 0.15)).astype(np.float64)
        bg += amp * (pat[..., None] - 0.5) * rng.choice([-1.0, 1.0], 3)
    elif kind == 2:  # soft blobs
        for _ in range(rng.integers(3, 7)):
            cx, cy, s = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.25)
            g = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * s * s))
            bg += 2.0 * amp * g[..., None] * rng.uniform(-1, 1, 3)
    else:  # low-contrast checker
        per = rng.uniform(0.06, 0.25)
        pat = ((np.floor(xs / per) + np.floor(ys / per)) % 2) * 2.0 - 1.0
        bg += amp * 0.6 * pat[..., None] * rng.uniform(-1, 1, 3)
    bg += rng.normal(0, rng.uniform(3, 10), (size, size, 1)) + rng.normal(0, 2.0, (size, size, 3))
    return bg, rng.uniform(2, 8)


# ---------------------------------------------------------------------------------------------- clip

@dataclass
class SynthClip:
    """One in-memory clip. Frame k pairs with audio second k (frame time `FRAME_TIMES[k]`)."""

    frames: np.ndarray  # uint8 [5, H, W, 3] RGB
    masks: np.ndarray  # uint8 [5, H, W] in {0, 1}: union of visible masks of objects sounding in second k
    object_masks: np.ndarray  # uint8 [n_obj, 5, H, W] in {0, 1}: visible (occlusion-aware) mask per object
    wav: np.ndarray  # float32 [80000] in [-1, 1] (exactly the int16 values written to disk / 32768)
    objects: list  # per object: dict(category, category_index, sounding, on, gain, radius, bright, big_bright, z)
    sounding_per_second: list  # 5 lists of category names sounding in second k
    mode: str
    snr_db: float
    unseen: bool = False
    sample_rate: int = SAMPLE_RATE
    frame_times: tuple = FRAME_TIMES

    @property
    def sounding_categories(self) -> list:
        """Categories of the objects that sound at least once, in object order."""
        return [o["category"] for o in self.objects if o["sounding"]]

    @property
    def category(self) -> str:
        """The primary sounding category (S4: the only one; MS3: the first sounding object's)."""
        return self.sounding_categories[0]

    def info(self) -> dict:
        """JSON-serialisable description (no arrays)."""
        return {
            "mode": self.mode,
            "category": self.category,
            "sounding_categories": self.sounding_categories,
            "sounding_per_second": self.sounding_per_second,
            "objects": self.objects,
            "snr_db": round(float(self.snr_db), 4),
            "unseen": bool(self.unseen),
            "frame_times": list(self.frame_times),
        }


def _as_rng(rng_or_seed):
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def make_clip(rng_or_seed=None, mode: str = "s4", size: int = 224, *,
              sounding_pool: Sequence[str] | None = None,
              distractor_pool: Sequence[str] | None = None,
              must_sound: str | None = None,
              held_out: Sequence[str] = (),
              n_objects: int | None = None,
              n_sounding: int | None = None,
              p_big_bright: float = 0.6,
              p_on: float = 0.65,
              snr_db_range: tuple = (5.0, 20.0),
              min_visible: float = 0.35,
              design: str = "distinct") -> SynthClip:
    """Generate one clip in memory.

    rng_or_seed: a `np.random.Generator`, an int seed, a SeedSequence or None.
    mode: "s4" (one sounding object for all 5 s) or "ms3" (1-3 sounding objects with per-second on/off).
    sounding_pool / distractor_pool: category names allowed as sounding objects / distractors (default all).
    must_sound: a category forced to be a sounding object (used for open-set "unseen" clips).
    held_out: categories counted as unseen (sets `SynthClip.unseen` if one of them sounds).
    n_objects: total objects (2-4; default random), n_sounding: sounding objects (ms3 only; default 1-3).
    min_visible: every object keeps at least this fraction of its area visible in every frame (layouts are
        re-drawn up to 30 times to satisfy it).
    design: "distinct" (`CATEGORIES`) or "factored" (`FACTORED_CATEGORIES`): the registry the pools name.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    registry = design_categories(design)
    reg_index = {c.name: i for i, c in enumerate(registry)}
    rng = _as_rng(rng_or_seed)
    spool = list(sounding_pool) if sounding_pool is not None else [c.name for c in registry]
    dpool = list(distractor_pool) if distractor_pool is not None else [c.name for c in registry]
    for nm in spool + dpool + ([must_sound] if must_sound else []):
        get_category(nm)
        if nm not in reg_index:
            raise KeyError(f"SynthAVS category {nm!r} is not in the {design} design")

    # --- how many objects, which sound
    if mode == "s4":
        ns = 1
        n_total = int(n_objects) if n_objects is not None else int(rng.integers(2, 5))
    else:
        ns = int(n_sounding) if n_sounding is not None else int(rng.integers(1, 4))
        lo = max(2, ns + 1)
        n_total = int(n_objects) if n_objects is not None else int(rng.integers(lo, max(lo, 4) + 1))
    if not (1 <= ns < n_total <= 6):
        raise ValueError(f"need 1 <= n_sounding < n_objects <= 6, got {ns} sounding of {n_total}")

    # --- categories: all distinct within the clip
    chosen = []
    if must_sound:
        chosen.append(must_sound)
    cand = [c for c in spool if c not in chosen]
    k = ns - len(chosen)
    if k > len(cand):
        raise ValueError(f"sounding pool too small: need {ns} categories from {spool}")
    if k > 0:
        chosen += [cand[i] for i in rng.permutation(len(cand))[:k]]
    cand = [c for c in dpool if c not in chosen]
    nd = n_total - ns
    if nd > len(cand):
        raise ValueError(f"distractor pool too small: need {nd} categories not in {chosen} from {dpool}")
    distract = [cand[i] for i in rng.permutation(len(cand))[:nd]]

    # --- per-object attributes
    objs = []
    for i, name in enumerate(chosen + distract):
        sounding = i < ns
        if not sounding:
            on = [False] * N_FRAMES
        elif mode == "s4":
            on = [True] * N_FRAMES
        else:
            on = [bool(x) for x in rng.random(N_FRAMES) < p_on]
            if not any(on):
                on[int(rng.integers(0, N_FRAMES))] = True
        big_bright = (not sounding) and bool(rng.random() < p_big_bright)
        radius = rng.uniform(0.09, 0.15)
        bright = rng.uniform(0.85, 1.05)
        if big_bright:
            radius = min(radius * rng.uniform(1.25, 1.6), 0.24)
            bright = rng.uniform(1.15, 1.35)
        ci = reg_index[name]
        base = np.asarray(registry[ci].color, dtype=np.float64)
        color = np.clip(base * bright + rng.uniform(-8, 8, 3), 0, 255)
        objs.append(_Obj(cat=ci, sounding=sounding, on=on, gain=float(rng.uniform(0.5, 1.0)) if sounding else 0.0,
                         radius=float(radius), bright=float(bright), big_bright=big_bright, color=color,
                         tex_period=float(rng.uniform(0.3, 0.55)), kind=registry[ci]))
    z_order = [int(i) for i in rng.permutation(len(objs))]  # drawn first .. last (last on top)

    # --- layout: smooth motion; re-draw until every object stays visible enough
    times = np.asarray(FRAME_TIMES)
    T = len(times)
    for _attempt in range(30):
        for o in objs:
            o.c0 = rng.uniform(0.2, 0.8, 2)
            o.vel = rng.uniform(-0.05, 0.05, 2)
            o.amp = rng.uniform(0.0, 0.08, 2)
            o.freq = rng.uniform(0.1, 0.3, 2)
            o.phi = rng.uniform(0, 2 * np.pi, 2)
            o.rot0 = float(rng.uniform(0, 2 * np.pi))
            o.rot_speed = float(rng.uniform(-0.4, 0.4))
            o.pulse = float(rng.uniform(0.0, 0.08))
        patches = [[o.patch(t, size) for t in times] for o in objs]
        full = np.zeros((len(objs), T, size, size), dtype=bool)
        for i in range(len(objs)):
            for k in range(T):
                y0, y1, x0, x1, m = patches[i][k][:5]
                full[i, k, y0:y1, x0:x1] = m
        vis = full.copy()
        covered = np.zeros((T, size, size), dtype=bool)
        for i in reversed(z_order):  # top first
            vis[i] &= ~covered
            covered |= full[i]
        area = full.sum(axis=(2, 3))
        frac = vis.sum(axis=(2, 3)) / np.maximum(area, 1)
        if (area > 0).all() and (frac >= min_visible).all():
            break

    # --- render frames
    bg, noise_std = _background(rng, size)
    frames = np.empty((T, size, size, 3), dtype=np.uint8)
    for k in range(T):
        img = bg.copy()
        for i in z_order:
            o = objs[i]
            y0, y1, x0, x1, m, u, v, R = patches[i][k]
            pat = _texture(o.kind.texture, u, v, max(o.tex_period * R, 2.0))
            col = np.where(pat[..., None], o.color, o.color * 0.55)
            shade = 1.0 + 0.12 * (-(u + v) / max(R, 1.0)).clip(-1, 1)[..., None]  # soft light from top-left
            region = img[y0:y1, x0:x1]
            region[m] = (col * shade)[m]
        img *= rng.uniform(0.97, 1.03)  # slight exposure flicker
        img += rng.normal(0, noise_std, img.shape)
        frames[k] = np.clip(np.round(img), 0, 255).astype(np.uint8)

    # --- audio
    n = CLIP_SAMPLES
    mix = np.zeros(n)
    for o in objs:
        if o.sounding:
            mix += o.gain * signature(o.kind, n, rng) * _second_gate(o.on, n)
    any_on = np.repeat(np.any([o.on for o in objs if o.sounding], axis=0), SAMPLE_RATE)[:n]
    p_sig = float(np.mean(mix[any_on] ** 2)) if any_on.any() else float(np.mean(mix ** 2))
    snr_db = float(rng.uniform(*snr_db_range))
    mix = mix + rng.standard_normal(n) * math.sqrt(p_sig / 10 ** (snr_db / 10))
    mix *= rng.uniform(0.5, 0.9) / max(float(np.max(np.abs(mix))), 1e-9)
    wav = (_quantise(mix).astype(np.float32) / np.float32(32768.0)).astype(np.float32)

    # --- ground truth
    obj_masks = vis.astype(np.uint8)
    on_arr = np.array([o.on for o in objs], dtype=bool)  # [n_obj, 5]
    gt = np.zeros((T, size, size), dtype=np.uint8)
    for k in range(T):
        for i in range(len(objs)):
            if on_arr[i, k]:
                gt[k] |= obj_masks[i, k]
    sounding_per_second = [[objs[i].kind.name for i in range(len(objs)) if on_arr[i, k]] for k in range(T)]
    held = set(held_out)
    objects = [{
        "category": o.kind.name, "category_index": o.cat, "sounding": o.sounding, "on": list(o.on),
        "gain": round(o.gain, 4), "radius": round(o.radius, 4), "bright": round(o.bright, 4),
        "big_bright": o.big_bright, "z": z_order.index(i),
        **({"sound_family": o.kind.sound_family, "pitch_band": o.kind.pitch_band} if o.kind.sound_family else {}),
    } for i, o in enumerate(objs)]
    unseen = any(o.kind.name in held for o in objs if o.sounding)
    return SynthClip(frames=frames, masks=gt, object_masks=obj_masks, wav=wav, objects=objects,
                     sounding_per_second=sounding_per_second, mode=mode, snr_db=snr_db, unseen=unseen)


# ---------------------------------------------------------------------------------------- generation

def clip_seed(seed: int, mode: str, split: str, index: int) -> np.random.SeedSequence:
    """The seed of one clip: depends on (seed, mode, split, index) only."""
    return np.random.SeedSequence([int(seed), _MODE_ID[mode], _SPLIT_ID[split], int(index)])


def clip_name(mode: str, split: str, index: int) -> str:
    return f"synth_{mode}_{split}_{index:06d}"


def split_pools(split: str, open_set: bool, unseen_clip: bool = False, design: str = "distinct"):
    """(sounding_pool, distractor_pool, must_sound_choices) for a split."""
    names = [c.name for c in design_categories(design)]
    held_out = held_out_categories(design)
    seen = [c for c in names if c not in held_out]
    if not open_set:
        return list(names), list(names), None
    if split in ("train", "val") or not unseen_clip:
        return seen, seen, None
    return list(names), list(names), list(held_out)


def _save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=3)
    path.write_bytes(buf.getvalue())


def _paths(root: Path, mode: str, split: str, name: str, category: str) -> dict:
    if mode == "s4":
        d = root / "s4_data"
        return {
            "frames": [d / "visual_frames" / split / category / name / f"{name}_{k}.png" for k in range(1, 6)],
            "masks": [d / "gt_masks" / split / category / name / f"{name}_{k}.png" for k in range(1, 6)],
            "masks_full": [d / "gt_masks_full" / split / category / name / f"{name}_{k}.png" for k in range(1, 6)],
            "wav": d / "audio_wav" / split / category / f"{name}.wav",
        }
    d = root / "ms3_data"
    return {
        "frames": [d / "visual_frames" / name / f"{name}.mp4_{k}.png" for k in range(1, 6)],
        "masks": [d / "gt_masks" / split / name / f"{name}_{k}.png" for k in range(1, 6)],
        "wav": d / "audio_wav" / split / f"{name}.wav",
    }


def dataset_clip(seed: int, mode: str, split: str, index: int, size: int = 224, open_set: bool = False,
                 design: str = "distinct") -> SynthClip:
    """Clip `index` of `split` exactly as `generate(seed=seed, size=size, open_set=open_set, design=design)`
    writes it. The distinct design's clips do not depend on the factored design's existence (pinned by tests)."""
    check_design(design)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    rng = np.random.default_rng(clip_seed(seed, mode, split, index))
    unseen_clip = bool(open_set and split == "test" and rng.random() < 0.5)
    spool, dpool, must = split_pools(split, open_set, unseen_clip, design)
    must_sound = must[int(rng.integers(0, len(must)))] if must else None
    return make_clip(rng, mode, size, sounding_pool=spool, distractor_pool=dpool, must_sound=must_sound,
                     held_out=held_out_categories(design) if open_set else (), design=design)


def _generate_one(task):
    root, mode, split, index, seed, size, open_set, design = task
    clip = dataset_clip(seed, mode, split, index, size, open_set, design)
    name = clip_name(mode, split, index)
    p = _paths(Path(root), mode, split, name, clip.category)
    for path in p["frames"]:
        path.parent.mkdir(parents=True, exist_ok=True)
    for k, path in enumerate(p["frames"]):
        _save_png(path, clip.frames[k])
    n_masks = 1 if (mode == "s4" and split == "train") else N_FRAMES  # official S4 train: first frame only
    p["masks"][0].parent.mkdir(parents=True, exist_ok=True)
    for k in range(n_masks):
        _save_png(p["masks"][k], clip.masks[k] * np.uint8(255))
    if mode == "s4" and split == "train":
        p["masks_full"][0].parent.mkdir(parents=True, exist_ok=True)
        for k in range(N_FRAMES):
            _save_png(p["masks_full"][k], clip.masks[k] * np.uint8(255))
    p["wav"].parent.mkdir(parents=True, exist_ok=True)
    write_wav(p["wav"], clip.wav)
    info = {"name": name, "split": split, **clip.info()}
    return info


def generate(root, mode: str = "s4", n_train: int = 100, n_val: int = 20, n_test: int = 20, seed: int = 0,
             size: int = 224, open_set: bool = False, workers: int | None = None, progress: bool = True,
             design: str = "distinct") -> dict:
    """Write a SynthAVS dataset in the official AVSBench layout under `root` (see module docstring).

    Uses `workers` processes (default: every core); the output is identical for any worker count.
    `design`: "distinct" (default) or "factored" categories (see the module docstring).
    Returns the `synth_info.json` entry of this mode.
    """
    check_design(design)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    counts = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
    if any(v < 0 for v in counts.values()):
        raise ValueError(f"clip counts must be >= 0, got {counts}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tasks = [(str(root), mode, s, i, int(seed), int(size), bool(open_set), design)
             for s in SPLITS for i in range(counts[s])]
    workers = int(workers) if workers else (os.cpu_count() or 1)
    workers = max(1, min(workers, len(tasks) or 1))

    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=f"SynthAVS {mode}", unit="clip", disable=not progress)
    infos = []
    try:
        if workers == 1:
            for t in tasks:
                infos.append(_generate_one(t))
                bar.update(1)
        else:
            import multiprocessing as mp

            chunk = max(1, min(8, len(tasks) // (workers * 4)))
            with mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(workers) as pool:
                for info in pool.imap(_generate_one, tasks, chunksize=chunk):
                    infos.append(info)
                    bar.update(1)
    finally:
        bar.close()

    # meta csv (official column order) and per-clip jsonl
    if mode == "s4":
        header, rows = ["name", "start_time", "category", "split"], [[i["name"], 0, i["category"], i["split"]] for i in infos]
    else:
        header, rows = ["video_id", "split"], [[i["name"], i["split"]] for i in infos]
    with open(root / f"{mode}_meta_data.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    with open(root / f"{mode}_synth_clips.jsonl", "w") as f:
        for i in infos:
            f.write(json.dumps(i, sort_keys=True) + "\n")

    held = list(held_out_categories(design)) if open_set else []
    registry = design_categories(design)
    entry = {
        "seed": int(seed), "size": int(size), "open_set": bool(open_set), "design": design,
        "counts": counts,
        "held_out_categories": held,
        "train_categories": [c.name for c in registry if c.name not in held],
        "n_unseen_test_clips": sum(1 for i in infos if i["unseen"]),
        "clips_file": f"{mode}_synth_clips.jsonl",
        "meta_csv": f"{mode}_meta_data.csv",
        "full_gt_dir": "s4_data/gt_masks_full" if mode == "s4" else None,
    }
    if design == "factored":
        fd = factor_design()
        if not open_set:
            fd["held_out_combinations"] = []  # nothing is held out without open_set
        entry["factor_design"] = fd
        entry["categories"] = [{"name": c.name, "shape": c.shape, "color": list(c.color), "texture": c.texture,
                                "sound": c.sound, "band_hz": list(c.band), "sound_family": c.sound_family,
                                "pitch_band": c.pitch_band} for c in registry]
    info_path = root / "synth_info.json"
    doc = {}
    if info_path.is_file():
        try:
            doc = json.loads(info_path.read_text())
        except (OSError, ValueError):
            doc = {}
    doc.update({
        "generator": "autr.synth (SynthAVS)",
        "version": GENERATOR_VERSION,
        "sample_rate": SAMPLE_RATE,
        "clip_seconds": CLIP_SECONDS,
        "frame_times": list(FRAME_TIMES),
        "frame_time_rule": "frame k (file suffix k+1) at k + 15/16 s, paired with audio second k (AVSBench)",
        "categories": [{"name": c.name, "shape": c.shape, "color": list(c.color), "texture": c.texture,
                        "sound": c.sound, "band_hz": list(c.band)} for c in CATEGORIES],
    })
    doc.setdefault("modes", {})[mode] = entry
    info_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return entry


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autr.synth", description="Generate a SynthAVS dataset (AVSBench layout).")
    ap.add_argument("root")
    ap.add_argument("--mode", choices=MODES, default="s4")
    ap.add_argument("--n-train", type=int, default=100)
    ap.add_argument("--n-val", type=int, default=20)
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--open-set", action="store_true")
    ap.add_argument("--design", choices=DESIGNS, default="distinct")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    generate(a.root, a.mode, a.n_train, a.n_val, a.n_test, seed=a.seed, size=a.size, open_set=a.open_set,
             workers=a.workers, progress=not a.no_progress, design=a.design)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
