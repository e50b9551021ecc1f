"""The event head: multinomial logistic regression on frozen joint embeddings, in numpy.

Why numpy: it is fitted on the edge box (``edgeav fit-events``) where there is no torch, and at this
size (a few thousand windows, a few hundred features, a handful of classes) full-batch accelerated
gradient descent converges in well under a second. Stored as ``.npz`` loaded with
``allow_pickle=False``: a bundle file can never execute code.

The head sees :func:`edgeav.bundle.joint_embedding` of each window; labels come from the footage's
sidecar via :meth:`edgeav.labels.Labels.segment_label` over the window's span.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeav.errors import UserError
from edgeav.labels import BACKGROUND

log = logging.getLogger("edgeav.heads")

HEAD_FORMAT = "edgeav.event_head/1"


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class EventHead:
    """``p(class | window) = softmax(((x - mean) / scale) @ weights + bias)``."""

    class_names: list[str]
    weights: np.ndarray  # [D, C]
    bias: np.ndarray  # [C]
    mean: np.ndarray  # [D]
    scale: np.ndarray  # [D]
    thresholds: np.ndarray  # [C]: per-class probability at which an event of that class is called

    @property
    def input_size(self) -> int:
        return int(self.weights.shape[0])

    def predict_proba(self, emb: np.ndarray) -> np.ndarray:
        """Joint embeddings ``[B, D]`` -> class probabilities ``[B, C]`` (columns in ``class_names`` order)."""
        x = (np.asarray(emb, dtype=np.float32) - self.mean) / self.scale
        return _softmax(x @ self.weights + self.bias).astype(np.float32)

    def predict(self, emb: np.ndarray) -> list[str]:
        return [self.class_names[i] for i in self.predict_proba(emb).argmax(axis=1)]

    # -- storage ---------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, format=np.array(HEAD_FORMAT), class_names=np.array(self.class_names, dtype=np.str_),
                     weights=self.weights.astype(np.float32), bias=self.bias.astype(np.float32),
                     mean=self.mean.astype(np.float32), scale=self.scale.astype(np.float32),
                     thresholds=self.thresholds.astype(np.float32))

    @classmethod
    def load(cls, path: str | Path) -> EventHead:
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as exc:
            raise UserError(f"{p}: not a readable event head ({exc})") from None
        need = ("format", "class_names", "weights", "bias", "mean", "scale", "thresholds")
        missing = [k for k in need if k not in data]
        if missing:
            raise UserError(f"{p}: event head lacks {', '.join(missing)}")
        if str(data["format"]) != HEAD_FORMAT:
            raise UserError(f"{p}: event head format {str(data['format'])!r} is not {HEAD_FORMAT!r}")
        w = data["weights"]
        c = len(data["class_names"])
        shapes_ok = (w.ndim == 2 and w.shape[1] == c and data["bias"].shape == (c,) and data["thresholds"].shape == (c,)
                     and data["mean"].shape == (w.shape[0],) and data["scale"].shape == (w.shape[0],))
        if not shapes_ok:
            raise UserError(f"{p}: event head arrays have inconsistent shapes")
        return cls(class_names=[str(s) for s in data["class_names"]], weights=w, bias=data["bias"],
                   mean=data["mean"], scale=data["scale"], thresholds=data["thresholds"])

    @classmethod
    def from_bundle(cls, bundle_dir: Path, section: dict[str, Any], joint_size: int) -> EventHead:
        """Load the head a manifest's ``events`` section names and check it fits the bundle."""
        name = section.get("head")
        if not isinstance(name, str):
            raise UserError(f"{bundle_dir / 'manifest.json'}: events.head: {name!r} is not a file name")
        head = cls.load(bundle_dir / name)
        if head.input_size != joint_size:
            raise UserError(f"{bundle_dir / name}: event head takes {head.input_size} features but the bundle's "
                            f"encoders give {joint_size} (head from another bundle?)")
        if list(section.get("class_names", [])) != head.class_names:
            raise UserError(f"{bundle_dir / name}: class names {head.class_names} differ from the manifest's "
                            f"events.class_names {section.get('class_names')}")
        return head


# ---------------------------------------------------------------------------------------------- fitting


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1e-3, iters: int = 400,
                 class_weight_power: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by Nesterov-accelerated gradient descent on standardised ``x``.

    Classes are weighted by ``(1 / frequency) ** class_weight_power``: background dominates
    surveillance footage, and 0.5 lifts rare events without trading away overall segment accuracy.
    The step is 1 / L with L the gradient's Lipschitz bound, so no learning rate needs tuning.
    """
    n, d = x.shape
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    cw = np.where(counts > 0, (counts.sum() / np.maximum(counts, 1)) ** class_weight_power, 0.0)
    sw = cw[y]
    sw = (sw / sw.mean()).astype(np.float32)
    onehot = np.eye(n_classes, dtype=np.float32)[y]
    xb = np.concatenate([x, np.ones((n, 1), dtype=np.float32)], axis=1)
    # Softmax cross-entropy Hessian <= 0.5 * X^T diag(w) X / n; its top eigenvalue bounds L.
    gram = (xb * sw[:, None]).T @ xb / n
    lip = 0.5 * float(np.linalg.eigvalsh(gram.astype(np.float64))[-1]) + l2
    step = 1.0 / lip
    theta = np.zeros((d + 1, n_classes), dtype=np.float32)
    prev = theta.copy()
    for t in range(1, iters + 1):
        look = theta + ((t - 1) / (t + 2)) * (theta - prev)
        p = _softmax(xb @ look)
        grad = xb.T @ ((p - onehot) * sw[:, None]) / n
        grad[:d] += l2 * look[:d]
        prev = theta
        theta = look - step * grad
    return theta[:d], theta[d]


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), 1e-6)
    return mean.astype(np.float32), scale.astype(np.float32)


def best_f1_thresholds(proba: np.ndarray, y: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per class, the probability cut (0.2..0.9) that maximises one-vs-rest F1 on held-out windows."""
    grid = np.round(np.arange(0.2, 0.91, 0.05), 2)
    out = np.full(proba.shape[1], default, dtype=np.float32)
    for c in range(proba.shape[1]):
        truth = y == c
        if not truth.any():
            continue
        best_f1 = -1.0
        for g in grid:
            pred = proba[:, c] >= g
            tp = float((pred & truth).sum())
            f1 = 2 * tp / max(float(pred.sum() + truth.sum()), 1.0)
            if f1 > best_f1 + 1e-9:
                best_f1, out[c] = f1, g
    return out


def holdout_mask(n: int, block: int = 20, every: int = 5) -> np.ndarray:
    """Every ``every``-th block of ``block`` consecutive windows is held out: neighbours overlap in time,
    so a random split would leak; contiguous blocks keep validation honest."""
    return ((np.arange(n) // block) % every) == every - 1


L2_GRID = (0.01, 0.1, 1.0, 10.0)


def _log_loss(proba: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.maximum(proba[np.arange(len(y)), y], 1e-9)).mean())


def fit_event_head(x: np.ndarray, labels: list[str], l2: float | None = None) -> tuple[EventHead, dict[str, Any]]:
    """Fit on all windows; the L2 penalty (unless given), thresholds and reported metrics come from held-out blocks.

    The penalty is chosen by held-out log-loss (smoother than accuracy on a few hundred windows); a
    few hundred windows against a few hundred features need strong regularisation more often than not.
    Returns the head and metrics (held-out segment accuracy, per-class counts, the chosen penalty).
    """
    class_names = [BACKGROUND, *sorted({lab for lab in labels if lab != BACKGROUND})]
    if len(class_names) < 2:
        raise UserError("fit-events: the labels hold no event (every window is background): nothing to learn")
    index = {c: i for i, c in enumerate(class_names)}
    y = np.array([index[lab] for lab in labels], dtype=np.int64)
    x = np.asarray(x, dtype=np.float32)
    hold = holdout_mask(len(y))
    metrics: dict[str, Any] = {"windows": len(y),
                               "windows_per_class": {c: int((y == i).sum()) for i, c in enumerate(class_names)}}
    thresholds = np.full(len(class_names), 0.5, dtype=np.float32)
    chosen = l2 if l2 is not None else 1.0
    if hold.any() and (~hold).any() and len(np.unique(y[~hold])) >= 2:
        mean, scale = standardiser(x[~hold])
        xs_train, xs_val = (x[~hold] - mean) / scale, (x[hold] - mean) / scale
        best: tuple[float, float, np.ndarray] | None = None
        for cand in ([l2] if l2 is not None else L2_GRID):
            w, b = fit_logistic(xs_train, y[~hold], len(class_names), l2=cand)
            val = _softmax(xs_val @ w + b)
            loss = _log_loss(val, y[hold])
            if best is None or loss < best[0]:
                best, chosen = (loss, cand, val), cand
        assert best is not None
        val = best[2]
        metrics["heldout_windows"] = int(hold.sum())
        metrics["heldout_segment_accuracy"] = round(float((val.argmax(1) == y[hold]).mean()), 4)
        metrics["heldout_log_loss"] = round(best[0], 4)
        thresholds = best_f1_thresholds(val, y[hold])
    metrics["l2"] = chosen
    mean, scale = standardiser(x)
    w, b = fit_logistic((x - mean) / scale, y, len(class_names), l2=chosen)
    head = EventHead(class_names, w, b, mean, scale, thresholds)
    metrics["train_segment_accuracy"] = round(float((head.predict_proba(x).argmax(1) == y).mean()), 4)
    return head, metrics


# ---------------------------------------------------------------------------------------------- command


def run(args: argparse.Namespace) -> int:
    from edgeav.bundle import embed_footage, load_bundle, replace_part, writable_bundle_dir

    d = writable_bundle_dir(args.models, "fit-events")
    bundle = load_bundle(d, threads=args.threads, with_heads=False)
    emb = embed_footage(bundle, args.footage, require_labels=True)
    x, labels, paths = emb.joint, emb.labels, emb.files
    if len(labels) < 10:
        raise UserError(f"fit-events: only {len(labels)} windows in the footage given; need at least 10")
    head, metrics = fit_event_head(x, labels, l2=args.l2)
    written = replace_part(d, bundle.manifest, "events", head.save, file_field="head", section={
        "model": "multinomial logistic regression (numpy), standardised inputs",
        "features": "joint",
        "joint": "concat(l2norm(audio), l2norm(video))",
        "precision": bundle.precision,
        "class_names": head.class_names,
        "thresholds": {c: round(float(t), 3) for c, t in zip(head.class_names, head.thresholds, strict=True)},
        "footage": [str(p) for p in paths],
        "metrics": metrics,
    })
    acc = metrics.get("heldout_segment_accuracy")
    print(f"fit-events: {len(labels)} windows, classes {', '.join(head.class_names)}; held-out segment accuracy "
          f"{acc if acc is not None else 'n/a'}; bundle {written['bundle_id']} ({d})")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("fit-events", help="fit the event head on labelled footage (no torch needed)",
                              description="Fit the bundle's event head (multinomial logistic regression on the "
                                          "frozen embeddings) from each footage file's .labels.json sidecar.")
    p.add_argument("--models", default=None, metavar="BUNDLE_DIR",
                   help="model bundle to add the head to (modified in place)")
    p.add_argument("footage", nargs="+", metavar="FOOTAGE", help="footage files or directories of them")
    p.add_argument("--l2", type=float, default=None,
                   help="L2 penalty on the standardised weights (default: chosen on held-out windows)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default 2)")
    p.set_defaults(func=run)
