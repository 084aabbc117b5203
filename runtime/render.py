"""Postprocess (mask logits -> a mask at the frame's size) and render (overlay + HUD) with OpenCV.

The overlay uses the colours of ``autr eval --overlays`` (prediction in red, blended 0.45 / 0.55), with the
mask's outline drawn on top, and a head-up display: output FPS, end-to-end latency (last and p90), what the
model decided -- its sounding probability and the mask's area, or "nothing sounding" when the probability is
below the sounding threshold (``--sounding-threshold``, 0.5 by default; then no mask is painted) -- and the
frames dropped so far.
"""
from __future__ import annotations

import numpy as np

__all__ = ["mask_from_logits", "render_overlay", "sounding_probability", "hud_decision", "PRED_COLOUR_RGB"]

PRED_COLOUR_RGB = (230, 0, 0)


def _cv2():
    import cv2

    return cv2


def mask_from_logits(logits: np.ndarray, height: int, width: int, threshold: float = 0.0) -> np.ndarray:
    """Bool ``[height, width]``: logits bilinearly resized to the frame, then ``> threshold``."""
    cv2 = _cv2()
    lg = np.asarray(logits, dtype=np.float32)
    if lg.shape != (height, width):
        lg = cv2.resize(lg, (width, height), interpolation=cv2.INTER_LINEAR)
    return lg > threshold


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.clip(x, -60, 60))))


def sounding_probability(score) -> float:
    """The model's sounding score (a logit) as a probability; 0 when there is none (or it is not finite)."""
    if score is None or not np.isfinite(score):
        return 0.0
    return _sigmoid(float(score))


def hud_decision(score, area, threshold: float = 0.5) -> str:
    """The HUD's line about what the model decided.

    ``"sounding 0.93  mask 12.4%"``; ``"sounding 0.93  mask empty"`` (the score says something sounds, the
    mask shows nothing); ``"nothing sounding (0.12 < 0.50)"`` below the threshold (no mask is painted).
    """
    p = sounding_probability(score)
    if p < threshold:
        return f"nothing sounding ({p:.2f} < {threshold:.2f})"
    if area is None:
        return f"sounding {p:.2f}"
    if area <= 0.0:
        return f"sounding {p:.2f}  mask empty"
    return f"sounding {p:.2f}  mask {100.0 * area:.1f}%"


def render_overlay(image_rgb: np.ndarray, mask: np.ndarray | None, hud: dict | None = None) -> np.ndarray:
    """BGR ``uint8`` picture: the frame with the mask tinted and outlined, and the HUD lines.

    ``hud`` keys (all optional): ``fps``, ``latency_ms``, ``latency_p90_ms``, ``score`` (logit), ``area``
    (the mask's share of the frame, 0..1), ``sounding_threshold`` (probability, default 0.5), ``dropped``,
    ``backend``. The caller passes ``mask=None`` for a frame in the "nothing sounding" state.
    """
    cv2 = _cv2()
    out = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    colour_bgr = PRED_COLOUR_RGB[::-1]
    if mask is not None and mask.any():
        tint = out[mask].astype(np.float32) * 0.45 + np.asarray(colour_bgr, np.float32) * 0.55
        out[mask] = tint.astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour_bgr, max(1, out.shape[0] // 240), lineType=cv2.LINE_AA)
    if hud:
        lines = []
        top = []
        if hud.get("fps") is not None:
            top.append(f"{hud['fps']:.1f} FPS")
        if hud.get("latency_ms") is not None:
            lat = f"latency {hud['latency_ms']:.0f} ms"
            if hud.get("latency_p90_ms") is not None:
                lat += f" (p90 {hud['latency_p90_ms']:.0f})"
            top.append(lat)
        if top:
            lines.append("  ".join(top))
        if hud.get("score") is not None:
            lines.append(hud_decision(hud["score"], hud.get("area"), hud.get("sounding_threshold", 0.5)))
        bottom = []
        if hud.get("dropped") is not None:
            bottom.append(f"dropped {hud['dropped']}")
        if hud.get("backend"):
            bottom.append(str(hud["backend"]))
        if bottom:
            lines.append("  ".join(bottom))
        scale = max(0.35, out.shape[0] / 720.0 * 0.7)
        thick = 1 if scale < 0.8 else 2
        (_, th), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        pad = max(2, int(4 * scale))
        y = pad
        for line in lines:
            (tw, _), _ = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
            x0, y0, x1, y1 = pad, y, min(out.shape[1] - 1, pad + tw + 2 * pad), min(out.shape[0] - 1, y + th + base + pad)
            roi = out[y0:y1, x0:x1]
            roi[:] = (roi.astype(np.uint16) * 2 // 5).astype(np.uint8)  # darkened box behind the text
            cv2.putText(out, line, (x0 + pad, y0 + th + pad // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                        thick, cv2.LINE_AA)
            y = y1 + pad // 2
    return out
