"""``edgeav synth``: deterministic audio-visual street footage with exact ground truth.

    from edgeav.synth import synthesize
    labels = synthesize("street.mp4", seconds=60, seed=1, profile="street-anomalies")

Modules: ``kinds`` (event kinds and profiles), ``timeline`` (scripted or random
events with their spans), ``scene`` and ``sprites`` (the picture), ``audio`` (the
soundtrack), ``encode`` (MP4 writing), ``generate`` (the one call), ``cli`` and
``grid`` (the frame-grid figure).
"""

from __future__ import annotations

from typing import Any

from edgeav.synth.kinds import ANOMALIES, KINDS, PROFILES, RECURRING

__all__ = ["ANOMALIES", "KINDS", "PROFILES", "RECURRING", "synthesize"]


def __getattr__(name: str) -> Any:
    # Imported on first use: registering the CLI command (`edgeav --help`) must not load PyAV/OpenCV.
    if name == "synthesize":
        from edgeav.synth.generate import synthesize

        return synthesize
    raise AttributeError(name)
