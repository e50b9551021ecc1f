"""Rebuild the default bundle shipped in the package (``edgeav/data/bundle``), by the documented commands.

    python -m export.default_bundle [--out edgeav/data/bundle] [--work DIR] [--epochs N] [--pairs epg ...]

It runs, through the real command line, exactly this sequence (printed as it goes):

1. ``edgeav synth`` training footage: street profile, seeds 1..3, 120 s each, 320x180 at 15 fps;
2. ``edgeav train`` on it (``--epochs``, ``--pairs``, ``--loss``, ``--seed`` as given);
3. ``edgeav export`` the run's last checkpoint into ``--out``;
4. ``edgeav fit-events`` on the training footage's label sidecars;
5. ``edgeav calibrate`` on the same (normal) footage at 1 false alarm per hour;
6. held-out evaluation on footage the bundle never saw (a street-anomalies file, seed 101, and a
   scripted file with one of each anomaly kind among recurring events, seed 102): segment accuracy
   of the event head, anomaly AUROC and the share of anomalous windows above the calibrated
   threshold; written into the manifest's ``metrics`` (the manifest is re-hashed);
7. the same steps 3-6 for untrained encoders (``edgeav train --epochs 0``): the floor the trained
   bundle is compared with (design.md section 3), stored as ``metrics.untrained_floor``.

Calibration picks its features by measurement (``--features auto``) on separate validation footage
(scripted anomalies, seed 103), never on the held-out footage the metrics come from.

Same arguments, same footage and seeds: the synth footage is byte-identical; training on CPU is
deterministic up to thread scheduling. Needs the train extra (torch).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# Held-out seed 102: recurring kinds seen in training, and one of each anomaly kind, spaced apart.
HELD_OUT_EVENTS = [
    {"kind": "car", "start": 2.0}, {"kind": "glass_break", "start": 10.0}, {"kind": "talking", "start": 16.0},
    {"kind": "scream", "start": 26.0}, {"kind": "truck", "start": 32.0}, {"kind": "explosion", "start": 42.0},
    {"kind": "dog", "start": 50.0}, {"kind": "crash", "start": 58.0}, {"kind": "bicycle", "start": 68.0},
    {"kind": "running", "start": 76.0}, {"kind": "car", "start": 84.0},
]
# Validation (seed 103): the same kinds in another order, to choose the anomaly features on.
VALIDATION_EVENTS = [
    {"kind": "truck", "start": 3.0}, {"kind": "running", "start": 10.0}, {"kind": "dog", "start": 18.0},
    {"kind": "crash", "start": 26.0}, {"kind": "car", "start": 36.0}, {"kind": "scream", "start": 44.0},
    {"kind": "bicycle", "start": 52.0}, {"kind": "explosion", "start": 60.0}, {"kind": "talking", "start": 68.0},
    {"kind": "glass_break", "start": 78.0},
]
TRAIN_SEEDS = (1, 2, 3)
HELD_OUT_SEEDS = (101, 102)
VALIDATION_SEED = 103
SIZE = ("320", "180", "15")


def _edgeav(*args: str) -> None:
    cmd = [sys.executable, "-m", "edgeav.cli", *args]
    print("$ edgeav " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def held_out_metrics(bundle_dir: Path, footage: list[Path]) -> dict[str, Any]:
    from edgeav.bundle import embed_footage, load_bundle
    from edgeav.calibrate import auroc

    b = load_bundle(bundle_dir, threads=2)
    emb = embed_footage(b, footage, require_labels=True)
    out: dict[str, Any] = {"footage": [p.name for p in footage], "windows": len(emb.labels)}
    normal = ~emb.anomalous
    if b.event_head is not None:
        known = np.array([lab in b.event_head.class_names for lab in emb.labels]) & normal
        y = np.array(emb.labels)[known]
        pred = np.array(b.event_head.predict(emb.joint[known]))
        out["segment_accuracy"] = round(float((pred == y).mean()), 4)
        out["majority_class_accuracy"] = round(float((y == "background").mean()), 4)
    if b.anomaly is not None:
        scores = b.anomaly.score(emb.features)
        au = auroc(scores, emb.anomalous)
        out["anomaly_auroc"] = round(au, 4) if au is not None else None
        out["anomalous_windows"] = int(emb.anomalous.sum())
        out["anomalous_windows_above_threshold"] = round(float((scores[emb.anomalous] >= b.anomaly.threshold)
                                                               .mean()), 4) if emb.anomalous.any() else None
        out["normal_windows_above_threshold"] = int((scores[normal] >= b.anomaly.threshold).sum())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.default_bundle", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "edgeav" / "data" / "bundle"))
    ap.add_argument("--work", default=None, help="working directory for footage and the run (default: temporary)")
    ap.add_argument("--epochs", default="10")
    ap.add_argument("--pairs", default="temporal")
    ap.add_argument("--loss", default="infonce")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--seconds", default="120", help="seconds of each training footage file")
    args = ap.parse_args(argv)

    from edgeav.bundle import read_manifest, write_manifest

    with tempfile.TemporaryDirectory(prefix="edgeav-default-bundle-") as tmp:
        work = Path(args.work or tmp)
        train_dir, held_dir = work / "footage", work / "held_out"
        train_dir.mkdir(parents=True, exist_ok=True)
        held_dir.mkdir(parents=True, exist_ok=True)
        w, h, fps = SIZE
        for s in TRAIN_SEEDS:
            f = train_dir / f"street_{s}.mp4"
            if not f.exists():
                _edgeav("synth", str(f), "--seconds", args.seconds, "--seed", str(s), "--profile", "street",
                        "--width", w, "--height", h, "--fps", fps)
        f = held_dir / f"anomalies_{HELD_OUT_SEEDS[0]}.mp4"
        if not f.exists():
            _edgeav("synth", str(f), "--seconds", "90", "--seed", str(HELD_OUT_SEEDS[0]), "--profile",
                    "street-anomalies", "--width", w, "--height", h, "--fps", fps)
        f = held_dir / f"scripted_{HELD_OUT_SEEDS[1]}.mp4"
        if not f.exists():
            timeline = work / "held_out_events.json"
            timeline.write_text(json.dumps(HELD_OUT_EVENTS))
            _edgeav("synth", str(f), "--seconds", "90", "--seed", str(HELD_OUT_SEEDS[1]), "--events", str(timeline),
                    "--width", w, "--height", h, "--fps", fps)
        val_dir = work / "validation"
        val_dir.mkdir(exist_ok=True)
        f = val_dir / f"scripted_{VALIDATION_SEED}.mp4"
        if not f.exists():
            timeline = work / "validation_events.json"
            timeline.write_text(json.dumps(VALIDATION_EVENTS))
            _edgeav("synth", str(f), "--seconds", "90", "--seed", str(VALIDATION_SEED), "--events", str(timeline),
                    "--width", w, "--height", h, "--fps", fps)
        held = sorted(held_dir.glob("*.mp4"))
        out = Path(args.out)
        runs = {"trained": (work / "run", args.epochs), "untrained_floor": (work / "run_untrained", "0")}
        results: dict[str, dict[str, Any]] = {}
        for name, (run, epochs) in runs.items():
            bundle = out if name == "trained" else work / "bundle_untrained"
            if (run / "last.pt").is_file():  # a --work directory from an earlier call: training is the slow part
                print(f"reusing the training run in {run}", flush=True)
            else:
                _edgeav("train", str(train_dir), "--out", str(run), "--epochs", epochs, "--pairs", args.pairs,
                        "--loss", args.loss, "--seed", args.seed, "--no-progress", "--cache-dir",
                        str(work / "cache"))
            # The last checkpoint, not the held-out-best: on 15 min of footage the held-out R@1 that picks
            # "best" is noise (0.004-0.011 on 267 windows, chance 0.004) and once picked epoch 6, whose
            # held-out segment accuracy was 0.67 against the last epoch's 0.86.
            _edgeav("export", str(run / "last.pt"), "--out", str(bundle), "--force", "--parity-footage", str(held_dir))
            _edgeav("fit-events", "--models", str(bundle), str(train_dir))
            _edgeav("calibrate", "--models", str(bundle), str(train_dir), "--false-alarms-per-hour", "1",
                    "--features", "auto", "--validate", str(val_dir))
            results[name] = held_out_metrics(bundle, held)
            print(f"{name}: held-out {results[name]}", flush=True)
        metrics = results["trained"]
        manifest = read_manifest(out)
        manifest["metrics"] = {"held_out": metrics, "untrained_floor": results["untrained_floor"]}
        manifest["recipe"] = ("python -m export.default_bundle " + " ".join(
            f"--{k} {v}" for k, v in (("epochs", args.epochs), ("pairs", args.pairs), ("loss", args.loss),
                                      ("seed", args.seed), ("seconds", args.seconds))))
        written = write_manifest(out, manifest)
        print(f"default bundle {written['bundle_id']} at {out}: held-out {metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
