"""What ``visionpeft predict`` prints: a line per image with its speed, like ``yolo predict``, or for many images
a progress bar and a summary.

::

    image 1/3 /data/val/cat/001.jpg: cat 0.91, dog 0.06, fox 0.02 3.1ms
    image 2/3 /data/bus.jpg: 4 person, 1 bus 41.7ms
    Speed: 1.2ms preprocess, 3.4ms inference, 0.5ms postprocess per image (3 images)

Above :data:`MAX_LINES` images, a progress bar (only on a terminal) replaces the lines, and the summary adds the
most frequent top classes / detected classes.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["PredictConsole", "describe", "speed_line", "mean_speed", "MAX_LINES", "STAGES"]

#: More images than this: a progress bar and a summary instead of one line per image.
MAX_LINES = 20
#: The timed stages of one image, in milliseconds (Ultralytics' ``Results.speed`` keys).
STAGES = ("preprocess", "inference", "postprocess")


def describe(predictions: Sequence[dict[str, Any]], top: int = 3) -> str:
    """One image's predictions in a few words: top classes with probabilities, or counts of detected classes."""
    if not predictions:
        return "(no detections)"
    first = predictions[0]
    if "prob" in first:  # visionpeft classification: best first
        return ", ".join(f"{p['class']} {p['prob']:.2f}" for p in predictions[:top])
    if "box" not in first and "confidence" in first:  # Ultralytics classify: top-5, best first
        return ", ".join(f"{p['name']} {p['confidence']:.2f}" for p in predictions[:top])
    if "pixel_ratio" in first:  # semantic: the classes covering most of the image
        ranked = sorted(predictions, key=lambda p: -p["pixel_ratio"])[:top]
        return ", ".join(f"{p['name']} {p['pixel_ratio']:.2f}" for p in ranked)
    if "height" in first:  # depth: the map's valid range
        return (f"depth {first['min_m']:.2f}-{first['max_m']:.2f} m (median {first['median_m']:.2f})"
                if "median_m" in first else "depth (no valid pixels)")
    counts = Counter(str(p.get("name", p.get("class"))) for p in predictions)
    return ", ".join(f"{n} {name}" for name, n in counts.most_common())


def mean_speed(speeds: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean milliseconds per image of each stage."""
    n = max(len(speeds), 1)
    return {k: round(sum(s.get(k, 0.0) for s in speeds) / n, 3) for k in STAGES}


def speed_line(speed: dict[str, float], images: int) -> str:
    """``Speed: 1.2ms preprocess, 3.4ms inference, 0.5ms postprocess per image (3 images)``."""
    parts = ", ".join(f"{speed[k]:.1f}ms {k}" for k in STAGES)
    return f"Speed: {parts} per image ({images} image{'s' if images != 1 else ''})"


class PredictConsole:
    """``on_image`` callback of :func:`visionpeft.tasks.predict.predict_run` that prints as predictions arrive.

    Args:
        out: where lines go (stdout by default).
        bar_stream: where the progress bar goes (stderr); the bar shows only when it is a terminal.
        max_lines: more images than this print a summary instead of a line each.
    """

    def __init__(self, out: TextIO | None = None, bar_stream: TextIO | None = None,
                 max_lines: int = MAX_LINES) -> None:
        self.out, self.bar_stream, self.max_lines = out or sys.stdout, bar_stream or sys.stderr, max_lines
        self.speeds: list[dict[str, float]] = []
        self.tally: Counter[str] = Counter()
        self.what = "top-1"  # what the summary counts: top-1 classes, or detected objects
        self._bar: Any = None

    def __call__(self, index: int, total: int, file: str, predictions: Sequence[dict[str, Any]],
                 speed: dict[str, float]) -> None:
        self.speeds.append(speed)
        if total <= self.max_lines:
            ms = sum(speed.get(k, 0.0) for k in STAGES)
            print(f"image {index + 1}/{total} {file}: {describe(predictions)} {ms:.1f}ms", file=self.out, flush=True)
            return
        self._count(predictions)
        if self._bar is None:
            from tqdm import tqdm

            # disable=None: no bar when the stream is not a terminal (logs, CI, notebooks stay clean)
            self._bar = tqdm(total=total, desc="predict", unit="img", file=self.bar_stream, leave=False,
                             disable=None, dynamic_ncols=True)
        self._bar.update(1)

    def _count(self, predictions: Sequence[dict[str, Any]]) -> None:
        if not predictions:
            return
        first = predictions[0]
        if "pixel_ratio" in first:  # semantic: the class covering most of the image
            first = max(predictions, key=lambda p: p["pixel_ratio"])
        if "height" in first:  # depth: nothing to count
            self.tally["depth map"] += 1
        elif "prob" in first or "box" not in first:  # classification (semantic): the top-1 class
            self.tally[str(first["class"] if "prob" in first else first.get("name"))] += 1
        else:
            self.what = "objects"
            self.tally.update(str(p.get("name", p.get("class"))) for p in predictions)

    def finish(self) -> None:
        """Close the bar; print the summary (many images) and the speed line."""
        if self._bar is not None:
            self._bar.close()
        n = len(self.speeds)
        if n > self.max_lines:
            common = ", ".join(f"{name} {count}" for name, count in self.tally.most_common(5))
            print(f"{n} images, {self.what}: {common or 'none'}", file=self.out)
        if n:
            print(speed_line(mean_speed(self.speeds), n), file=self.out)
