"""The training configuration: YAML -> validated, frozen pydantic models.

``configs/train.default.yaml`` holds the defaults; ``--config FILE`` is merged over it key by key (so a
user's file names only what it changes), then the command line's ``--epochs``/``--seed``/``--pairs``/
``--loss``/``--device`` override that. Unknown keys are refused; an error names the file, the field path
and the bad value.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeav.errors import UserError
from edgeav.preprocess import WindowSpec

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train.default.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WindowCfg(_Strict):
    window_s: float = Field(1.0, gt=0)
    hop_s: float = Field(0.5, gt=0)
    frames_per_window: int = Field(4, ge=1, le=32)
    frame_width: int = Field(112, ge=2)
    frame_height: int = Field(64, ge=2)
    sample_rate: int = Field(16000, ge=8000)

    @model_validator(mode="after")
    def _even(self) -> WindowCfg:
        WindowSpec(**self.model_dump())  # the one place that knows what a valid window is
        return self


class AudioCfg(_Strict):
    n_fft: int = Field(512, ge=32)
    win: int = Field(400, ge=16)
    hop: int = Field(160, ge=1)
    n_mels: int = Field(64, ge=8)
    fmin: float = Field(50.0, ge=0)
    fmax: float = Field(8000.0, gt=0)
    channels: list[int] = Field(default_factory=lambda: [24, 48, 96, 128])
    blocks: list[int] = Field(default_factory=lambda: [0, 1, 1, 1])

    @model_validator(mode="after")
    def _shape(self) -> AudioCfg:
        if self.win > self.n_fft:
            raise ValueError(f"win ({self.win}) must be <= n_fft ({self.n_fft})")
        if self.fmin >= self.fmax:
            raise ValueError(f"fmin ({self.fmin}) must be below fmax ({self.fmax})")
        _check_stages(self.channels, self.blocks)
        return self


class VideoCfg(_Strict):
    channels: list[int] = Field(default_factory=lambda: [24, 48, 96, 128])
    blocks: list[int] = Field(default_factory=lambda: [0, 1, 1, 1])
    grid_channels: int = Field(8, ge=1)  # channels kept per cell of the final grid (position information)
    motion_gain: float = Field(4.0, ge=0)  # weight of the frame-minus-window-mean channels (0: none)

    @model_validator(mode="after")
    def _shape(self) -> VideoCfg:
        _check_stages(self.channels, self.blocks)
        return self


def _check_stages(channels: list[int], blocks: list[int]) -> None:
    if not channels or len(channels) != len(blocks):
        raise ValueError(f"channels {channels} and blocks {blocks} must be non-empty and of the same length")
    if any(c < 1 for c in channels) or any(b < 0 for b in blocks):
        raise ValueError("channels must be >= 1 and blocks >= 0")


class TemperatureCfg(_Strict):
    init: float = Field(0.07, gt=0, le=1)
    learn: bool = True
    min: float = Field(0.01, gt=0)


class ModelCfg(_Strict):
    embed_dim: int = Field(128, ge=8, le=1024)
    audio: AudioCfg = AudioCfg()
    video: VideoCfg = VideoCfg()
    temperature: TemperatureCfg = TemperatureCfg()
    # The budget per encoder; training refuses a config beyond it rather than silently being slow.
    max_params: int = Field(2_000_000, ge=1)
    max_macs: int = Field(200_000_000, ge=1)


class OptimCfg(_Strict):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.2, ge=0)
    batch_size: int = Field(64, ge=2)
    warmup_steps: int = Field(20, ge=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1)
    grad_clip: float = Field(5.0, ge=0)


class DataCfg(_Strict):
    val_fraction: float = Field(0.15, ge=0, lt=0.9)
    cache_dir: str | None = None
    # Windows used to measure normalisation statistics (spread evenly over the training set).
    stats_windows: int = Field(1024, ge=1)


class AugmentCfg(_Strict):
    enabled: bool = True
    hflip: float = Field(0.5, ge=0, le=1)
    shift: float = Field(0.08, ge=0, le=0.5)  # random translation, fraction of the frame size
    brightness: float = Field(0.15, ge=0, le=1)
    contrast: float = Field(0.15, ge=0, le=1)
    audio_gain_db: float = Field(4.0, ge=0)
    audio_noise: float = Field(0.003, ge=0)


class TrainCfg(_Strict):
    epochs: int = Field(10, ge=0)
    seed: int = 0
    pairs: Literal["temporal", "epg", "random"] = "temporal"
    loss: Literal["infonce", "multipos", "fne"] = "infonce"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Stop when validation R@1 has not improved for this many epochs (0: never stop early).
    early_stopping_patience: int = Field(0, ge=0)
    threads: int = Field(0, ge=0)  # torch intra-op threads (0: torch's default)
    progress: bool = True


class Config(_Strict):
    window: WindowCfg = WindowCfg()
    model: ModelCfg = ModelCfg()
    optim: OptimCfg = OptimCfg()
    data: DataCfg = DataCfg()
    augment: AugmentCfg = AugmentCfg()
    train: TrainCfg = TrainCfg()
    # Free-form sections for the pair generators and losses that plug in (EPG, ...): each validates its own.
    pairs: dict[str, Any] = Field(default_factory=dict)
    loss: dict[str, Any] = Field(default_factory=dict)

    @field_validator("pairs", "loss")
    @classmethod
    def _mapping(cls, v: dict[str, Any]) -> dict[str, Any]:
        return dict(v)

    def model_params(self) -> dict[str, Any]:
        """The JSON-able ``params`` dict of the checkpoint (see ``train.models``)."""
        m = self.model
        return {
            "window": self.window.model_dump(),
            "embed_dim": m.embed_dim,
            "audio": m.audio.model_dump(),
            "video": m.video.model_dump(),
            "temperature": m.temperature.model_dump(),
        }

    def window_spec(self) -> WindowSpec:
        return WindowSpec(**self.window.model_dump())


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dst)
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read config ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a training config must be a mapping, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the user's file, then ``overrides`` (nested dict), validated as one config."""
    data = _read_yaml(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else {}
    source = DEFAULT_CONFIG
    if path is not None:
        data = _merge(data, _read_yaml(Path(path)))
        source = Path(path)
    if overrides:
        data = _merge(data, overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            raise UserError(f"{source}: unknown key {loc!r}") from None
        raise UserError(f"{source}: {loc}: {msg} (got {value!r})") from None
