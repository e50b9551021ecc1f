"""The method's ablation (issue #5): train each variant x seed on the same synth footage, evaluate each.

    python -m train.ablation --out DIR [--train-minutes 20] [--seeds 0 1 2] [--epochs 10]
                             [--variants untrained temporal_infonce epg_multipos epg_fne random_multipos]

1. ``edgeav synth`` footage into ``DIR/footage`` (kept and reused by later calls: same arguments, same
   bytes): training footage (profile ``street``, seeds 1000+, files of at most 5 minutes); probe footage
   (``street``, seeds 2000+; also the normal memory of the anomaly scorer); test footage (``street-anomalies``,
   seeds 3000+, plus one scripted file with one of each anomaly kind among recurring events, seed 3900).
2. per variant (``configs/ablation/VARIANT.yaml``, merged over the default training config) and seed:
   ``edgeav train`` (``--epochs`` for every variant whose config does not fix it, i.e. all but the untrained
   floor); the run's ``best.pt`` (held-out R@1 early stopping) or, untrained, ``last.pt``;
3. :func:`train.evaluate.evaluate` of it (exported to a temporary ONNX bundle; footage decoded once);
4. one line per run appended to ``DIR/results.jsonl`` (a run already there is not redone: the command
   can be stopped and called again), then the markdown table over all runs: mean ± sample standard
   deviation over seeds, per task, and for the mined variants the pair precision (against its chance
   level) and the pairs per anchor of the last mining that the evaluated checkpoint saw.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "ablation"
VARIANTS = ("untrained", "temporal_infonce", "epg_multipos", "epg_fne", "random_multipos")
FILE_MINUTES = 5.0
SIZE = ("320", "180", "15")
SCRIPTED_SEED = 3900


def edgeav(*args: str, log: Path | None = None) -> None:
    """Run the real command line (as a user would); its output goes to ``log`` when given."""
    print("$ edgeav " + " ".join(shlex.quote(a) for a in args), flush=True)
    cmd = [sys.executable, "-m", "edgeav", *args]
    if log is None:
        proc = subprocess.run(cmd, cwd=REPO)
    else:
        with open(log, "a") as f:
            proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"ablation: `edgeav {args[0]}` failed with exit code {proc.returncode}"
                         + (f" (see {log})" if log else ""))


def synth_set(root: Path, name: str, minutes: float, profile: str, first_seed: int) -> list[Path]:
    out = []
    n = max(1, int(np.ceil(minutes / FILE_MINUTES - 1e-9)))
    w, h, fps = SIZE
    for i in range(n):
        path = root / name / f"{profile}-{first_seed + i}-{minutes * 60 / n:g}s.mp4"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            edgeav("synth", str(path), "--seconds", f"{minutes * 60 / n:g}", "--seed", str(first_seed + i),
                   "--profile", profile, "--width", w, "--height", h, "--fps", fps)
        out.append(path)
    return out


def scripted_test(root: Path) -> Path:
    """A test file certain to hold one of each anomaly kind (a random profile may draw none in a few minutes)."""
    from export.default_bundle import HELD_OUT_EVENTS

    path = root / "test" / f"scripted-{SCRIPTED_SEED}.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        timeline = root / "scripted_events.json"
        timeline.write_text(json.dumps(HELD_OUT_EVENTS))
        w, h, fps = SIZE
        edgeav("synth", str(path), "--seconds", "90", "--seed", str(SCRIPTED_SEED), "--events", str(timeline),
               "--width", w, "--height", h, "--fps", fps)
    return path


def pair_summary(run: Path, use_best: bool) -> dict[str, Any]:
    """From the run's log: the epoch evaluated (best or last), and the last mining that shaped it."""
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    epochs = [r for r in records if r.get("event") == "epoch"]
    if not epochs:
        return {"epochs_run": 0, "best_epoch": 0, "evaluated_epoch": 0}
    best = max(epochs, key=lambda r: (r.get("val_r1_a2v", -1.0), -r["epoch"]))
    evaluated = best if use_best else epochs[-1]
    out: dict[str, Any] = {"epochs_run": epochs[-1]["epoch"], "best_epoch": best["epoch"],
                           "best_val_r1_a2v": best.get("val_r1_a2v"), "evaluated_epoch": evaluated["epoch"],
                           "evaluated_val_r1_a2v": evaluated.get("val_r1_a2v")}
    # pairs mined at the end of epoch e are used from epoch e + 1: those the evaluated checkpoint trained on
    mined = [r for r in epochs if "pairs_per_anchor_mean" in r and r["epoch"] < evaluated["epoch"]]
    out["minings_used"] = len(mined)
    if mined:
        last = mined[-1]
        out["pairs"] = {k[len("pairs_"):]: last[k] for k in ("pairs_precision", "pairs_chance", "pairs_per_anchor_mean",
                                                              "pairs_share_with_any", "pairs_pairs") if k in last}
        out["pairs"]["mined_after_epoch"] = last["epoch"]
    every = [r for r in epochs if "pairs_per_anchor_mean" in r]
    if every:  # the whole run's minings, also those after the evaluated checkpoint: how the pairs evolved
        out["pairs_by_epoch"] = {str(r["epoch"]): {k[len("pairs_"):]: r.get(k) for k in (
            "pairs_precision", "pairs_chance", "pairs_per_anchor_mean")} for r in every}
    return out


def _train_section(variant: str) -> dict[str, Any]:
    path = CONFIGS / f"{variant}.yaml"
    cfg = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    return dict(cfg.get("train") or {})


def frozen_config(out: Path, variant: str) -> Path:
    """The variant's full training config, resolved once per ablation directory and reused by every run.

    Every run of one ablation must train the same model under the same defaults even when
    ``configs/train.default.yaml`` changes while it runs (hours, on a shared checkout): the variant's
    file is merged over the defaults of the first call and written out whole.
    """
    from train.params import load_config

    path = out / "configs" / f"{variant}.yaml"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        cfg = load_config(CONFIGS / f"{variant}.yaml").model_dump(mode="json")
        path.write_text(f"# {variant}: configs/ablation/{variant}.yaml over the defaults of the first call\n"
                        + yaml.safe_dump(cfg, sort_keys=False))
    return path


def fixed_epochs(variant: str) -> bool:
    """The config fixes its epochs (the untrained floor): ``--epochs`` does not apply."""
    return "epochs" in _train_section(variant)


def early_stopped(variant: str) -> bool:
    """Early-stopped variants are evaluated at their best held-out epoch (``best.pt``), the others at
    their last (``last.pt``): the mined pairs only act after the warm-up, so a checkpoint chosen before
    them would measure the warm-up, not the method."""
    return int(_train_section(variant).get("early_stopping_patience", 0)) > 0


def mines(variant: str) -> bool:
    """The variant adds positives beyond the temporal ones (EPG or the random-partner control)."""
    return _train_section(variant).get("pairs", "temporal") != "temporal" and not fixed_epochs(variant)


# ---------------------------------------------------------------------------------------------- table


def _get(rec: dict[str, Any], path: str) -> float | None:
    cur: Any = rec
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return float(cur) if isinstance(cur, (int, float)) else None


def _stat(values: list[float | None]) -> tuple[float, float, int] | None:
    v = [x for x in values if x is not None and np.isfinite(x)]
    if not v:
        return None
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)


def _fmt(s: tuple[float, float, int] | None, digits: int = 3) -> str:
    if s is None:
        return "–"
    return f"{s[0]:.{digits}f} ± {s[1]:.{digits}f}" if s[2] > 1 else f"{s[0]:.{digits}f}"


COLUMNS = [("segment acc.", "eval.localisation.segment_accuracy"),
           ("event F1", "eval.localisation.event_macro_f1"),
           ("anomaly AUROC (joint emb.)", "eval.anomaly.joint.auroc"),
           ("P@10", "eval.search.p_at_10"),
           ("mAP@10", "eval.search.map_at_10")]


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per variant (mean ± sample std over seeds), then anomaly AUROC per feature choice."""
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in results)]
    variants += sorted({r["variant"] for r in results} - set(variants))
    lines = ["| variant | seeds | evaluated epoch | " + " | ".join(c for c, _ in COLUMNS)
             + " | minings used | pair precision (chance) | pairs / anchor |",
             "|---|---|---|" + "---|" * len(COLUMNS) + "---|---|---|"]
    for v in variants:
        rs = [r for r in results if r["variant"] == v]
        cells = [_fmt(_stat([_get(r, p) for r in rs])) for _, p in COLUMNS]
        prec = _stat([_get(r, "train.pairs.precision") for r in rs])
        chance = _stat([_get(r, "train.pairs.chance") for r in rs])
        per = _stat([_get(r, "train.pairs.per_anchor_mean") for r in rs])
        pp = f"{_fmt(prec)} ({_fmt(chance)})" if prec else "–"
        be = _fmt(_stat([_get(r, "train.evaluated_epoch") or _get(r, "train.best_epoch") for r in rs]), 1)
        mu = _fmt(_stat([_get(r, "train.minings_used") for r in rs]), 1) if mines(v) else "–"
        lines.append(f"| {v} | {len(rs)} | {be} | " + " | ".join(cells) + f" | {mu} | {pp} | {_fmt(per, 2)} |")
    from train.evaluate import ANOMALY_FEATURE_SETS

    order = {f: i for i, f in enumerate(ANOMALY_FEATURE_SETS)}
    feats = sorted({f for r in results for f in r["eval"]["anomaly"]}, key=lambda f: (order.get(f, len(order)), f))
    floor = {f: _stat([_get(r, f"eval.anomaly.{f}.auroc") for r in results if r["variant"] == "untrained"])
             for f in feats}
    lines += ["", "Anomaly AUROC per feature choice (kNN, k=3, normal memory = probe footage); "
              "↑ = mean above the untrained floor's mean for the same feature:", "",
              "| variant | " + " | ".join(feats) + " |", "|---|" + "---|" * len(feats)]
    for v in variants:
        rs = [r for r in results if r["variant"] == v]
        cells = []
        for f in feats:
            s = _stat([_get(r, f"eval.anomaly.{f}.auroc") for r in rs])
            fl = floor.get(f)
            up = " ↑" if s and fl and v != "untrained" and s[0] > fl[0] else ""
            cells.append(_fmt(s) + up)
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Anomaly feature names of results written before the bundles exported their features (edgeav < 0.2).
_LEGACY_FEATURES = {"embedding_joint": "joint", "embedding_audio": "audio", "embedding_video": "video",
                    "pre_audio": "audio_pre", "pre_video": "video_pre"}


def load_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    results = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in results:
        an = r.get("eval", {}).get("anomaly", {})
        r["eval"]["anomaly"] = {_LEGACY_FEATURES.get(k, k): v for k, v in an.items()}
    return results


# ---------------------------------------------------------------------------------------------- main


def run_dir(out: Path, variant: str, seed: int, setting: dict[str, Any]) -> Path:
    return out / "runs" / f"{variant}-e{setting['epochs']}-m{setting['train_minutes']:g}" / f"seed{seed}"


def reevaluate(out: Path, results_path: Path, setting: dict[str, Any], probe: list[Path], test: list[Path],
               cache: dict[str, Any]) -> int:
    """Evaluate the checkpoint of every finished run of ``setting`` again (an evaluation that changed, e.g.
    new anomaly features) and rewrite ``results.jsonl`` in place (a temporary file renamed over it)."""
    from train.evaluate import evaluate

    results = [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]
    for rec in results:
        if rec["setting"] != setting:
            continue
        run = run_dir(out, rec["variant"], rec["seed"], setting)
        use_best = early_stopped(rec["variant"]) and (run / "best.pt").is_file()
        t0 = time.time()
        rec["eval"] = evaluate(run / ("best.pt" if use_best else "last.pt"), probe, test, threads=2, cache=cache)
        rec["eval_seconds"] = round(time.time() - t0, 1)
        print(f"ablation: {rec['variant']} seed {rec['seed']}: evaluated again in {rec['eval_seconds']:.0f} s",
              flush=True)
    tmp = results_path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in results))
    tmp.replace(results_path)
    print(table([r for r in load_results(results_path) if r["setting"] == setting]))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.ablation", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="working directory: footage, runs, results.jsonl")
    ap.add_argument("--train-minutes", type=float, default=20.0)
    ap.add_argument("--probe-minutes", type=float, default=5.0)
    ap.add_argument("--test-minutes", type=float, default=5.0, help="street-anomalies minutes (plus 90 s scripted)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=sorted(
        p.stem for p in CONFIGS.glob("*.yaml")))
    ap.add_argument("--table-only", action="store_true", help="print the table of DIR/results.jsonl and stop")
    ap.add_argument("--reevaluate", action="store_true",
                    help="evaluate every run already in DIR/results.jsonl again with today's evaluation "
                         "(its checkpoints, the same footage; nothing is retrained) and rewrite the file")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    if args.table_only:
        print(table(load_results(results_path)))
        return 0

    import torch

    torch.set_num_threads(2)
    from train.evaluate import evaluate

    root = out / "footage"
    t0 = time.time()
    train = synth_set(root, f"train-{args.train_minutes:g}min", args.train_minutes, "street", 1000)
    probe = synth_set(root, f"probe-{args.probe_minutes:g}min", args.probe_minutes, "street", 2000)
    test = [*synth_set(root, f"test-{args.test_minutes:g}min", args.test_minutes, "street-anomalies", 3000),
            scripted_test(root)]
    print(f"ablation: footage ready ({time.time() - t0:.0f} s)", flush=True)
    cache: dict[str, Any] = {}
    setting = {"train_minutes": args.train_minutes, "probe_minutes": args.probe_minutes,
               "test_minutes": args.test_minutes, "epochs": args.epochs}
    if args.reevaluate:
        return reevaluate(out, results_path, setting, probe, test, cache)
    for seed in args.seeds:  # seed-major: a run stopped early still has every variant for the first seeds
        for variant in args.variants:
            done = load_results(results_path)
            if any(r["variant"] == variant and r["seed"] == seed and r["setting"] == setting for r in done):
                print(f"ablation: {variant} seed {seed}: already in {results_path}", flush=True)
                continue
            run = run_dir(out, variant, seed, setting)
            run.mkdir(parents=True, exist_ok=True)
            train_args = ["train", *map(str, train), "--out", str(run), "--config", str(frozen_config(out, variant)),
                          "--seed", str(seed), "--no-progress", "--cache-dir", str(out / "cache")]
            if not fixed_epochs(variant):
                train_args += ["--epochs", str(args.epochs)]
            t1 = time.time()
            done_marker = run / "train.done"
            if not done_marker.is_file():  # absent: never trained, or interrupted: train from scratch
                shutil.rmtree(run)
                run.mkdir(parents=True)
                edgeav(*train_args, log=run / "train.out")
                done_marker.write_text(" ".join(train_args) + "\n")
            t2 = time.time()
            use_best = early_stopped(variant) and (run / "best.pt").is_file()
            metrics = evaluate(run / ("best.pt" if use_best else "last.pt"), probe, test, threads=2, cache=cache)
            t3 = time.time()
            rec = {"variant": variant, "seed": seed, "setting": setting,
                   "config": yaml.safe_load((run / "config.yaml").read_text()),
                   "train": {**pair_summary(run, use_best), "seconds": round(t2 - t1, 1)},
                   "eval_seconds": round(t3 - t2, 1), "eval": metrics}
            with open(results_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            loc, an, se = metrics["localisation"], metrics["anomaly"]["joint"], metrics["search"]
            print(f"ablation: {variant} seed {seed}: train {t2 - t1:.0f} s (evaluated epoch "
                  f"{rec['train'].get('evaluated_epoch')}), eval {t3 - t2:.0f} s: segment accuracy "
                  f"{loc['segment_accuracy']}, anomaly AUROC {an['auroc']}, P@10 {se['p_at_10']}", flush=True)
    print(table([r for r in load_results(results_path) if r["setting"] == setting]))
    print(f"ablation: done in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
