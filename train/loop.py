"""The training loop behind ``edgeav train``: data, encoders, AdamW + cosine, checkpoints, DDP.

Run it as one process, or under ``torchrun --nproc-per-node N`` (PyTorch DDP; gloo on CPU, NCCL on GPUs).
Under DDP the configured ``batch_size`` is the *global* batch: every rank draws the same global batches,
takes its slice, and gathers the other ranks' embeddings so the loss sees every negative of the global
batch, exactly as one process would. The per-window augmentation is seeded by window, not by rank.

Outputs in RUN_DIR: ``checkpoints/epoch_NNN.pt`` every epoch, ``last.pt``, ``best.pt`` (best held-out
audio->video R@1), ``train_log.jsonl`` (one JSON object per step and per epoch), ``config.yaml`` (the
resolved config).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from tqdm import tqdm

from edgeav.errors import UserError
from edgeav.media import find_footage
from train.augment import Augmenter
from train.data import WindowDataset, build_dataset, default_cache_dir, probe_footage
from train.models import CHECKPOINT_FORMAT, AudioEncoder, VideoEncoder, budget, build_encoders
from train.objective import resolve_loss, resolve_pairs
from train.params import Config

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ distributed


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_dist(device: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _resolve_device(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _gather(z: torch.Tensor, d: Dist) -> torch.Tensor:
    """Concatenate every rank's rows in rank order; only the local rows carry gradient."""
    if d.world == 1:
        return z
    parts = [torch.empty_like(z) for _ in range(d.world)]
    dist.all_gather(parts, z.detach().contiguous())
    parts[d.rank] = z
    return torch.cat(parts)


def _broadcast_error(message: str | None, d: Dist) -> None:
    """Make a user error on rank 0 the error of every rank (the others would wait forever otherwise)."""
    if d.world == 1:
        if message:
            raise UserError(message)
        return
    box = [message]
    dist.broadcast_object_list(box, src=0)
    if box[0]:
        raise UserError(box[0])


# ------------------------------------------------------------------------------------------ the model pair


class DualEncoder(nn.Module):
    """Both encoders and the contrastive temperature (learnt as log logit scale, CLIP-style)."""

    def __init__(self, audio: AudioEncoder, video: VideoEncoder, params: dict[str, Any]) -> None:
        super().__init__()
        self.audio = audio
        self.video = video
        t = params["temperature"]
        init = torch.tensor(math.log(1.0 / float(t["init"])))
        self.max_log_scale = math.log(1.0 / float(t["min"]))
        if t.get("learn", True):
            self.log_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_scale", init)

    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=self.max_log_scale).exp()

    def forward(self, wave: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.audio(wave), self.video(frames), self.logit_scale()


@torch.no_grad()
def set_normalisation(model: DualEncoder, ds: WindowDataset, n_windows: int, device: str) -> None:
    """Measure pixel and log-mel statistics in one pass over (an even sample of) the training windows."""
    idx = ds.train_idx
    if len(idx) > n_windows:
        idx = idx[np.linspace(0, len(idx) - 1, n_windows).round().astype(np.int64)]
    s_v = np.zeros(3)
    s2_v = np.zeros(3)
    count_v = 0
    mel_sum: torch.Tensor | None = None
    mel_sq: torch.Tensor | None = None
    count_a = 0
    for start in range(0, len(idx), 128):
        frames, audio = ds.fetch(idx[start:start + 128])
        x = frames.reshape(-1, 3).astype(np.float64) / 255.0
        s_v += x.sum(0)
        s2_v += (x * x).sum(0)
        count_v += len(x)
        mel = model.audio.frontend(torch.from_numpy(audio).to(device))  # [B, M, T]
        m = mel.transpose(0, 1).reshape(mel.shape[1], -1).double()
        mel_sum = m.sum(1) if mel_sum is None else mel_sum + m.sum(1)
        mel_sq = (m * m).sum(1) if mel_sq is None else mel_sq + (m * m).sum(1)
        count_a += m.shape[1]
    mean_v = s_v / count_v
    std_v = np.sqrt(np.maximum(s2_v / count_v - mean_v ** 2, 0.0))
    model.video.set_normalisation(torch.tensor(mean_v, dtype=torch.float32), torch.tensor(std_v, dtype=torch.float32))
    assert mel_sum is not None and mel_sq is not None
    mean_a = mel_sum / count_a
    std_a = (mel_sq / count_a - mean_a ** 2).clamp_min(0).sqrt()
    model.audio.set_normalisation(mean_a.float(), std_a.float())


@torch.no_grad()
def embed_windows(model: DualEncoder, ds: WindowDataset, idx: np.ndarray, device: str,
                  batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode embeddings (no augmentation) of the given windows: (z_audio, z_video) numpy."""
    was_training = model.training
    model.eval()
    za, zv = [], []
    for start in range(0, len(idx), batch):
        frames, audio = ds.fetch(idx[start:start + batch])
        za.append(model.audio(torch.from_numpy(audio).to(device)).cpu().numpy())
        zv.append(model.video(torch.from_numpy(frames).to(device)).cpu().numpy())
    model.train(was_training)
    d = int(model.audio.proj[-1].out_features)
    if not za:
        return np.zeros((0, d), np.float32), np.zeros((0, d), np.float32)
    return np.concatenate(za), np.concatenate(zv)


def retrieval(z_audio: np.ndarray, z_video: np.ndarray) -> dict[str, float]:
    """Cross-modal retrieval of the aligned partner: R@1 both ways, audio->video R@5, mean rank, chance."""
    n = len(z_audio)
    if n < 2:
        return {}
    sim = z_audio @ z_video.T
    diag = np.diag(sim)
    rank_a2v = (sim > diag[:, None]).sum(1)  # 0 = the partner is the nearest
    rank_v2a = (sim > diag[None, :]).sum(0)
    return {
        "r1_a2v": float((rank_a2v == 0).mean()),
        "r1_v2a": float((rank_v2a == 0).mean()),
        "r5_a2v": float((rank_a2v < 5).mean()),
        "mean_rank_a2v": float(rank_a2v.mean() + 1),
        "chance_r1": 1.0 / n,
        "n": n,
    }


# ------------------------------------------------------------------------------------------ checkpoints


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@contextmanager
def _jsonl(path: Path, enabled: bool):
    fh = open(path, "a", encoding="utf-8") if enabled else None  # noqa: SIM115 (closed in finally)

    def write(obj: dict[str, Any]) -> None:
        if fh is not None:
            fh.write(json.dumps({"time": round(time.time(), 3), **obj}) + "\n")
            fh.flush()

    try:
        yield write
    finally:
        if fh is not None:
            fh.close()


def _lr_lambda(total_steps: int, warmup: int, min_ratio: float):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norms, biases and the temperature (they are not weights that overfit)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------------------ the run


def train(footage: list[str], out_dir: str | Path, cfg: Config, *, resume: bool = False, skip_bad: bool = False,
          cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Train encoders on ``footage`` into ``out_dir``; returns the run summary (also in the checkpoints)."""
    out = Path(out_dir)
    device = _resolve_device(cfg.train.device)
    loss_fn = resolve_loss(cfg.train.loss)
    strategy_cls = resolve_pairs(cfg.train.pairs)
    d = _init_dist(device)
    if device == "cuda" and d.world > 1:
        device = f"cuda:{d.local_rank}"
        torch.cuda.set_device(d.local_rank)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    elif d.world > 1 and device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", d.world))))

    last = out / "last.pt"
    error = None
    if d.main:
        if resume and not last.is_file():
            error = f"--resume: {out} holds no run to resume ({last.name} not found)"
        elif not resume and last.is_file():
            error = f"{out} already holds a training run ({last.name}); use --resume to continue it or another --out"
    _broadcast_error(error, d)

    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if d.main else (lambda msg: None)
    # Cheap checks first: every file's headers, then the encoders' budget; only then is anything decoded.
    paths = find_footage(footage)
    infos: list = []
    bad: list = []
    error = None
    if d.main:
        try:
            infos, bad = probe_footage(paths, skip_bad)
        except UserError as exc:
            error = str(exc)
    _broadcast_error(error, d)
    if not d.main:
        infos, bad = probe_footage(paths, skip_bad)
    seed = cfg.train.seed
    torch.manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    params = cfg.model_params()
    audio, video = build_encoders(params)
    b = budget(audio, video, params)
    for name in ("audio", "video"):
        say(f"edgeav train: {name} encoder: {b[name]['params']:,} parameters, "
            f"{b[name]['macs'] / 1e9:.3f} GMACs per window")
        if b[name]["params"] > cfg.model.max_params or b[name]["macs"] > cfg.model.max_macs:
            raise UserError(f"model.{name}: {b[name]['params']:,} parameters / {b[name]['macs']:,} MACs per window "
                            f"is over the budget ({cfg.model.max_params:,} / {cfg.model.max_macs:,})")

    spec = cfg.window_spec()
    cache = Path(cache_dir or cfg.data.cache_dir or default_cache_dir())
    # Rank 0 decodes into the cache first; the other ranks then find every file there.
    ds: WindowDataset | None = None
    error = None
    probed_bad = bad
    if d.main:
        try:
            ds, bad = build_dataset(infos, spec, cache, cfg.data.val_fraction, skip_bad, probed_bad)
        except UserError as exc:
            error = str(exc)
    _broadcast_error(error, d)
    if not d.main:
        ds, bad = build_dataset(infos, spec, cache, cfg.data.val_fraction, skip_bad, probed_bad)
    assert ds is not None
    for bf in bad:
        say(f"edgeav train: skipped {bf.reason}")
    if bad:
        say(f"edgeav train: skipped {len(bad)} bad file(s) of {len(paths)}; training on {len(ds.files)}")
    say(f"edgeav train: {len(ds.files)} file(s), {ds.footage_seconds:.1f} s of footage, {len(ds)} windows "
        f"({len(ds.train_idx)} train, {len(ds.val_idx)} held out), "
        f"{sum(f.from_cache for f in ds.files)} from the cache in {cache}")

    model = DualEncoder(audio, video, params).to(device)
    strategy = strategy_cls(cfg, ds)

    steps_per_epoch = len(strategy.epoch_batches(0, cfg.optim.batch_size))
    if steps_per_epoch and cfg.optim.batch_size % d.world:
        raise UserError(f"optim.batch_size {cfg.optim.batch_size} must be a multiple of the {d.world} processes")
    total_steps = max(1, steps_per_epoch * cfg.train.epochs)
    opt = torch.optim.AdamW(_param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(total_steps, min(cfg.optim.warmup_steps, total_steps // 4), cfg.optim.min_lr_ratio))

    start_epoch = 1
    resumed_summary: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    best = -1.0
    best_epoch = 0
    untrained: dict[str, float] = {}
    if resume:
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{last}: not an {CHECKPOINT_FORMAT} checkpoint")
        if ckpt["params"] != params:
            raise UserError(f"--resume: the model/window config differs from the run in {out} "
                            f"(resume with the run's own config: {out / 'config.yaml'})")
        model.audio.load_state_dict(ckpt["audio"])
        model.video.load_state_dict(ckpt["video"])
        with torch.no_grad():
            model.log_scale.copy_(torch.tensor(math.log(float(ckpt["logit_scale"]))))
        if ckpt.get("optimizer"):
            opt.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scheduler"):
            sched.load_state_dict(ckpt["scheduler"])
        strategy.load_state_dict(ckpt.get("pairs_state") or {})
        start_epoch = int(ckpt["epoch"]) + 1
        s = ckpt.get("summary") or {}
        history = list(s.get("history") or [])
        best = float(s.get("metrics", {}).get("best_val_r1_a2v", -1.0))
        best_epoch = int(s.get("metrics", {}).get("best_epoch", 0))
        untrained = dict(s.get("metrics", {}).get("untrained") or {})
        resumed_summary = dict(s)
        say(f"edgeav train: resuming {out} after epoch {start_epoch - 1}")
    else:
        set_normalisation(model, ds, cfg.data.stats_windows, device)

    if d.main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    if d.world > 1:
        dist.barrier()

    ddp: nn.Module = model
    if d.world > 1:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if device != "cpu" else None)
    augment = Augmenter(cfg.augment, seed)
    val_idx = ds.val_idx
    if len(val_idx) > 2000:  # retrieval among 2000 is plenty and keeps the check cheap on long footage
        val_idx = val_idx[np.linspace(0, len(val_idx) - 1, 2000).round().astype(np.int64)]

    def validate() -> dict[str, float]:
        return retrieval(*embed_windows(model, ds, val_idx, device))

    base_summary = {
        "footage_seconds": round(ds.footage_seconds, 3), "windows": len(ds), "train_windows": len(ds.train_idx),
        "val_windows": len(ds.val_idx), "files": [str(f.path) for f in ds.files],
        "skipped": [{"path": str(bf.path), "reason": bf.reason} for bf in bad], "pairs": strategy.name,
        "loss_name": cfg.train.loss, "seed": seed, "world_size": d.world, "budget": b,
    }

    def checkpoint(epoch: int, loss: float | None, metrics: dict[str, Any], is_best: bool) -> dict[str, Any]:
        summary = {**base_summary, "loss": loss, "epochs": epoch, "metrics": metrics, "history": history}
        if d.main:
            ckpt = {
                "format": CHECKPOINT_FORMAT, "params": params,
                "audio": model.audio.state_dict(), "video": model.video.state_dict(),
                "logit_scale": float(model.logit_scale().detach()), "epoch": epoch,
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "pairs_state": strategy.state_dict(), "summary": summary,
            }
            _atomic_save(ckpt, out / "checkpoints" / f"epoch_{epoch:03d}.pt")
            _atomic_save(ckpt, last)
            if is_best:
                _atomic_save(ckpt, out / "best.pt")
        return summary

    summary: dict[str, Any] = resumed_summary
    with _jsonl(out / "train_log.jsonl", d.main) as write_log:
        if not resume:
            untrained = validate()
            write_log({"event": "untrained", "epoch": 0, **{f"val_{k}": v for k, v in untrained.items()}})
            say(f"edgeav train: untrained held-out R@1 audio->video {untrained.get('r1_a2v', float('nan')):.3f} "
                f"(chance {untrained.get('chance_r1', float('nan')):.3f})")
            # epoch_000.pt: the untrained encoders with their normalisation, the floor every evaluation reports.
            metrics = {"untrained": untrained, **{f"val_{k}": v for k, v in untrained.items()}}
            summary = checkpoint(0, None, metrics, is_best=False)
        if start_epoch > cfg.train.epochs and resume:
            say(f"edgeav train: {out} already trained for {start_epoch - 1} epoch(s); nothing to do")
        stale = 0
        loss_value: float | None = None
        for epoch in range(start_epoch, cfg.train.epochs + 1):
            model.train()
            batches = strategy.epoch_batches(epoch, cfg.optim.batch_size)
            t0 = time.perf_counter()
            seen = 0
            losses: list[float] = []
            bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.train.epochs}", unit="batch", file=sys.stderr,
                       disable=not (cfg.train.progress and d.main), dynamic_ncols=True, leave=True)
            for gb in bar:
                per = len(gb) // d.world
                local = gb[d.rank * per:(d.rank + 1) * per]
                frames, audio_np = ds.fetch(local)
                frames, audio_np = augment(frames, audio_np, local, epoch)
                za, zv, scale = ddp(torch.from_numpy(audio_np).to(device), torch.from_numpy(frames).to(device))
                za, zv = _gather(za, d), _gather(zv, d)
                pos = strategy.positives(gb[: per * d.world])
                pos_t = torch.from_numpy(np.asarray(pos, dtype=bool)).to(device) if pos is not None else None
                loss = loss_fn(za, zv, pos_t, scale)
                opt.zero_grad(set_to_none=True)
                # Each rank's loss is the whole global batch's, but only its own rows carry gradient, and DDP
                # averages over ranks: scaling by the world size makes the update equal to one process's.
                (loss * d.world).backward()
                if d.world > 1 and model.log_scale.grad is not None:
                    # The temperature acts on every row on every rank, so its averaged gradient is world x too big.
                    model.log_scale.grad.div_(d.world)
                if cfg.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                opt.step()
                sched.step()
                seen += len(gb)
                lv = float(loss.detach())
                losses.append(lv)
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{lv:.4f}", win_s=f"{rate:.0f}")
                write_log({"event": "step", "epoch": epoch, "step": len(losses), "loss": lv,
                           "lr": sched.get_last_lr()[0], "batch": len(gb)})
            bar.close()
            seconds = time.perf_counter() - t0
            loss_value = float(np.mean(losses)) if losses else None
            extra = strategy.end_epoch(epoch, lambda idx: embed_windows(model, ds, np.asarray(idx), device)) or {}
            val = validate()
            r1 = val.get("r1_a2v", -1.0)
            is_best = bool(val) and r1 > best
            if is_best:
                best, best_epoch, stale = r1, epoch, 0
            else:
                stale += 1
            record = {"event": "epoch", "epoch": epoch, "loss": loss_value, "seconds": round(seconds, 3),
                      "windows_per_s": round(seen / max(seconds, 1e-9), 1), "lr": sched.get_last_lr()[0],
                      "temperature": round(1.0 / float(model.logit_scale().detach()), 5),
                      **{f"val_{k}": v for k, v in val.items()}, **{f"pairs_{k}": v for k, v in extra.items()}}
            history.append({k: v for k, v in record.items() if k != "event"})
            write_log(record)
            say(f"edgeav train: epoch {epoch}: loss {loss_value if loss_value is not None else float('nan'):.4f}, "
                f"{record['windows_per_s']:.0f} windows/s, held-out R@1 audio->video {r1:.3f}"
                f"{' (best)' if is_best else ''}")
            metrics = {"untrained": untrained, "best_val_r1_a2v": best, "best_epoch": best_epoch,
                       **{f"val_{k}": v for k, v in val.items()}}
            summary = checkpoint(epoch, loss_value, metrics, is_best)
            patience = cfg.train.early_stopping_patience
            if patience and stale >= patience:
                say(f"edgeav train: early stop after epoch {epoch}: no better held-out R@1 for {patience} epochs "
                    f"(best epoch {best_epoch})")
                break
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary
