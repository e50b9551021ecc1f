"""Build the model bundle that ships inside the package (``edgeav/data/bundle``), end to end, by our own code.

    python -m train.default_bundle --out edgeav/data/bundle [--train-minutes 20] [--eval-minutes 20]

Every step is the user's command line, in order:
1. ``edgeav synth``: unlabeled training footage (profile ``street``), labelled footage for the event head
   (other seeds), and held-out evaluation footage with anomalies (``street-anomalies``, other seeds again);
2. ``edgeav train`` on the training footage (``--config`` to choose pairs/loss/epochs);
3. ``edgeav export`` (fp32 and int8); 4. ``edgeav fit-events`` on the labelled footage;
5. ``edgeav calibrate`` on the training footage (normal: no anomalies) at the target false-alarm rate;
6. ``edgeav replay`` of the evaluation footage, scored with :mod:`edgeav.scoring`; the figures are written
   into the manifest's ``evaluation`` section and printed.
Synthesised footage lands in ``--work`` and is reused when it is already there (same arguments, same bytes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

FILE_MINUTES = 5.0


def edgeav(*args: str) -> None:
    cmd = [sys.executable, "-m", "edgeav", *args]
    print("+ edgeav " + " ".join(args), flush=True)
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"default_bundle: `edgeav {args[0]}` failed with exit code {proc.returncode}")


def synth_set(work: Path, name: str, minutes: float, profile: str, first_seed: int, size: tuple[int, int],
              fps: float) -> list[Path]:
    out = []
    n = max(1, round(minutes / FILE_MINUTES))
    for i in range(n):
        path = work / name / f"{name}-{first_seed + i}.mp4"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            edgeav("synth", str(path), "--seconds", str(minutes * 60 / n), "--seed", str(first_seed + i),
                   "--profile", profile, "--width", str(size[0]), "--height", str(size[1]), "--fps", str(fps))
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.default_bundle", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="bundle directory to (re)write")
    ap.add_argument("--work", default="/tmp/edgeav-default-bundle", help="footage and run directory")
    ap.add_argument("--train-minutes", type=float, default=20.0)
    ap.add_argument("--label-minutes", type=float, default=10.0)
    ap.add_argument("--eval-minutes", type=float, default=20.0)
    ap.add_argument("--config", help="training config (YAML) merged over configs/train.default.yaml")
    ap.add_argument("--epochs", type=int, help="override the config's epochs")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--false-alarms-per-hour", type=float, default=1.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--fps", type=float, default=15.0)
    args = ap.parse_args(argv)

    from edgeav.bundle import read_manifest, write_manifest
    from edgeav.labels import load_labels, sidecar_path
    from edgeav.scoring import combine, score_replay

    work = Path(args.work)
    size = (args.width, args.height)
    t0 = time.time()
    train = synth_set(work, "train", args.train_minutes, "street", 1000, size, args.fps)
    labelled = synth_set(work, "labelled", args.label_minutes, "street", 2000, size, args.fps)
    evaluation = synth_set(work, "eval", args.eval_minutes, "street-anomalies", 3000, size, args.fps)

    run_dir = work / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    train_args = ["train", *map(str, train), "--out", str(run_dir), "--seed", str(args.seed), "--no-progress"]
    if args.config:
        train_args += ["--config", args.config]
    if args.epochs is not None:
        train_args += ["--epochs", str(args.epochs)]
    edgeav(*train_args)
    out = Path(args.out)
    edgeav("export", str(run_dir), "--out", str(out), "--quantize", "int8", "--force")
    edgeav("fit-events", "--models", str(out), *map(str, labelled))
    edgeav("calibrate", "--models", str(out), "--false-alarms-per-hour", str(args.false_alarms_per_hour),
           *map(str, train))

    scores = []
    for f in evaluation:
        windows, events = work / f"{f.stem}.windows.jsonl", work / f"{f.stem}.events.jsonl"
        edgeav("replay", str(f), "--models", str(out), "--windows", str(windows), "--out", str(events), "--quiet")
        recs = [json.loads(line) for line in windows.read_text().splitlines()]
        alerts = [r for r in map(json.loads, events.read_text().splitlines()) if r["type"] == "alert"]
        scores.append(score_replay(load_labels(sidecar_path(f)), recs, alerts))
    result = combine(scores)
    manifest = read_manifest(out)
    manifest["evaluation"] = {
        "footage": f"{len(evaluation)} held-out synth files, profile street-anomalies, "
                   f"{args.eval_minutes:g} min, {size[0]}x{size[1]} @ {args.fps:g} fps, seeds 3000+",
        "command": "python -m train.default_bundle " + " ".join(argv if argv is not None else sys.argv[1:]),
        **result,
    }
    write_manifest(out, manifest)
    print(json.dumps(manifest["evaluation"], indent=1))
    print(f"default_bundle: done in {time.time() - t0:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
