"""Deploy a bundle at a new synthetic site and measure what replay reports, end to end.

    python -m edgeav.site_eval [--models BUNDLE] [--site 4242] [--calibrate-minutes 20] [--test-minutes 60]
        [--test-seed 1001]

What a user does on a new box, on footage whose truth is known: ``edgeav synth`` normal recordings of one
site (``--site``, seeds 1, 2, ...: other days of the same camera) and a held-out recording of the same
site with rare anomalies; ``edgeav calibrate`` a copy of the bundle on the normal recordings; ``edgeav
replay`` the held-out one; then :func:`edgeav.scoring.score_replay` against its labels: anomalies caught,
false alarms per hour, segment accuracy; then the same replay at other rates (``rate_curve``) and the threshold
rule cross-validated on the replay's own normal windows (``threshold_check``:
:func:`edgeav.scoring.threshold_check`). The figures in the README come from this command. Footage is kept in
``--work`` and reused (same arguments, same bytes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

FILE_MINUTES = 10.0
RATE_CURVE = (0.25, 1.0, 3.0, 10.0, 30.0)  # false alarms per hour the replay is also scored at


def _edgeav(*args: str) -> None:
    print("$ edgeav " + " ".join(args), flush=True)
    proc = subprocess.run([sys.executable, "-m", "edgeav", *args])
    if proc.returncode != 0:
        raise SystemExit(f"site_eval: `edgeav {args[0]}` failed (exit {proc.returncode})")


def _recordings(work: Path, name: str, minutes: float, profile: str, site: int, first_seed: int) -> list[Path]:
    n = max(1, round(minutes / FILE_MINUTES))
    out = []
    for i in range(n):
        path = work / f"{name}-{site}-{first_seed + i}.mp4"
        if not path.exists():
            _edgeav("synth", str(path), "--seconds", f"{minutes * 60 / n:g}", "--seed", str(first_seed + i),
                    "--site", str(site), "--profile", profile)
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeav.site_eval", description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="bundle to deploy (default: the shipped one)")
    ap.add_argument("--site", type=int, default=4242, help="synth site (the place; default 4242)")
    ap.add_argument("--calibrate-minutes", type=float, default=20.0)
    ap.add_argument("--test-minutes", type=float, default=60.0)
    ap.add_argument("--false-alarms-per-hour", type=float, default=1.0)
    ap.add_argument("--features", default=None, help="calibrate --features (default: calibrate's)")
    ap.add_argument("--pitch-semitones", type=int, default=None,
                    help="calibrate --pitch-semitones (default: calibrate's)")
    ap.add_argument("--test-seed", type=int, default=1001,
                    help="seed of the first test recording (default 1001). Seeds set the day's events and --site "
                         "the place, so every site's default test hours hold the same anomaly schedule: another "
                         "seed gives another schedule")
    ap.add_argument("--work", default="/tmp/edgeav-site-eval")
    args = ap.parse_args(argv)
    if args.test_seed < 1:
        ap.error(f"--test-seed {args.test_seed}: must be a positive seed")

    from edgeav.bundle import load_bundle, resolve_bundle_dir
    from edgeav.labels import load_labels, sidecar_path
    from edgeav.scoring import alerts_at, combine, score_replay, threshold_check

    t0 = time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    normal = _recordings(work, "normal", args.calibrate_minutes, "street", args.site, 1)
    test = _recordings(work, "test", args.test_minutes, "street-anomalies", args.site, args.test_seed)
    bundle = work / "bundle"
    if bundle.exists():
        shutil.rmtree(bundle)
    shutil.copytree(resolve_bundle_dir(args.models), bundle)
    _edgeav("calibrate", "--models", str(bundle), "--false-alarms-per-hour", str(args.false_alarms_per_hour),
            *(["--features", args.features] if args.features else []),
            *(["--pitch-semitones", str(args.pitch_semitones)] if args.pitch_semitones is not None else []),
            *map(str, normal))
    scores, replayed = [], []
    for f in test:
        windows, events = work / f"{f.stem}.windows.jsonl", work / f"{f.stem}.events.jsonl"
        _edgeav("replay", str(f), "--models", str(bundle), "--windows", str(windows), "--out", str(events),
                "--quiet")
        recs = [json.loads(line) for line in windows.read_text().splitlines()]
        alerts = [r for r in map(json.loads, events.read_text().splitlines()) if r["type"] == "alert"]
        labels = load_labels(sidecar_path(f))
        scores.append(score_replay(labels, recs, alerts))
        replayed.append((labels, recs))
    result = combine(scores)
    result["calibration_minutes"] = args.calibrate_minutes
    result["target_false_alarms_per_hour"] = args.false_alarms_per_hour
    # The same replay at other rates: the memory keeps its calibration scores, so each rate's threshold is
    # what `anomaly.false_alarms_per_hour` in the config would set; the window scores go through the decider.
    deployed = load_bundle(bundle)
    memory = deployed.anomaly
    if memory is not None and memory.normal is not None:
        curve = {}
        for rate in RATE_CURVE:
            thr = memory.threshold_for(rate, deployed.window_spec.hop_s)
            c = combine([score_replay(labels, [], alerts_at(recs, thr)) for labels, recs in replayed])
            curve[f"{rate:g}"] = {"caught": c["anomalies_caught"], "false_alarms": c["false_alarms"]}
        result["rate_curve"] = curve
    # Is the threshold rule itself honest? The same rule, set on as many of the replayed files as the calibration
    # had and counted on the others: exchangeable footage under one memory, so only the rule's own error is left.
    per_fold = min(len(replayed) - 1, max(1, round(args.calibrate_minutes / FILE_MINUTES)))
    if per_fold >= 1:
        result["threshold_check"] = {"files_per_fold": per_fold, **threshold_check(
            replayed, RATE_CURVE, deployed.window_spec.hop_s, per_fold)}
    print(json.dumps(result, indent=1))
    print(f"site_eval: {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
