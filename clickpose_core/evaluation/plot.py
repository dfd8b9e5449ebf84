"""AP-against-clicks chart drawn with OpenCV (already a dependency), so evaluation needs no
plotting library."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import cv2
import numpy as np

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def plot_ap_vs_clicks(curves: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike,
                      title: str = "keypoint AP vs clicks", size: tuple[int, int] = (720, 480)) -> np.ndarray:
    """Line chart of AP (y, 0..1 shown as 0..100) against clicks per person (x); writes a PNG.

    curves: name -> [(clicks, AP)]. Returns the RGB image [H, W, 3].
    """
    if not curves or not any(len(c) for c in curves.values()):
        raise ValueError("nothing to plot: no curve has points")
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 40, 60
    xs = [x for c in curves.values() for x, _ in c]
    x_max = max(1.0, max(xs))
    ys = [y for c in curves.values() for _, y in c if y >= 0]
    y_lo = max(0.0, np.floor((min(ys) if ys else 0.0) * 10) / 10)

    def px(x: float, y: float) -> tuple[int, int]:
        u = left + (w - left - right) * x / x_max
        v = h - bottom - (h - top - bottom) * (y - y_lo) / max(1.0 - y_lo, 1e-6)
        return int(round(u)), int(round(v))

    font = cv2.FONT_HERSHEY_SIMPLEX
    for i in range(11):
        y = y_lo + (1.0 - y_lo) * i / 10
        cv2.line(img, px(0, y), px(x_max, y), (225, 225, 225), 1)
        cv2.putText(img, f"{100 * y:.0f}", (left - 40, px(0, y)[1] + 5), font, 0.45, (60, 60, 60), 1, cv2.LINE_AA)
    for x in sorted(set(xs)):
        cv2.line(img, px(x, y_lo), (px(x, y_lo)[0], px(x, y_lo)[1] + 5), (60, 60, 60), 1)
        cv2.putText(img, f"{x:g}", (px(x, y_lo)[0] - 5, h - bottom + 22), font, 0.45, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.rectangle(img, px(0, 1.0), px(x_max, y_lo), (60, 60, 60), 1)
    cv2.putText(img, "clicks per person", (w // 2 - 70, h - 15), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "AP (%)", (8, top - 12), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, title, (left + 60, 22), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    for n, (name, pts) in enumerate(curves.items()):
        colour = _COLOURS[n % len(_COLOURS)]
        pts = sorted((x, y) for x, y in pts if y >= 0)
        for a, b in zip(pts, pts[1:]):
            cv2.line(img, px(*a), px(*b), colour, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, px(*p), 4, colour, -1, cv2.LINE_AA)
        ly = top + 20 + 20 * n
        cv2.line(img, (w - right - 190, ly), (w - right - 165, ly), colour, 2)
        cv2.putText(img, name, (w - right - 158, ly + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write plot to {path}")
    return img
