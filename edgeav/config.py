"""The typed configuration: YAML -> frozen pydantic models, and ``edgeav config check``.

Every key of design.md section 6 lives here, with its default, in one place: the
models below. Validation is strict (``port: "1883"`` or ``discovery: 1`` are refused
rather than guessed at) and unknown keys are refused, so a typo never silently
falls back to a default. Any problem becomes ONE line,
``<file>: <field path>: <bad value>: <what is allowed>``, raised as
:class:`~edgeav.errors.UserError` (exit 2).

Public API: :func:`load_config`, :func:`parse_config`, :class:`Config` and its
section classes, :func:`effective_config_yaml`, :func:`apply_logging`, :func:`mask_url`.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import json
import logging
import os
import re
import socket
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from edgeav.errors import UserError
from edgeav.log import redact, setup_logging
from edgeav.outbox import DEFAULT_MAX_MESSAGES, MIN_MAX_MESSAGES

log = logging.getLogger(__name__)

URL_SCHEMES = ("rtsp", "rtsps", "http", "https")
AudioSource = Literal["camera", "microphone", "none"]
LogLevel = Literal["debug", "info", "warning", "error"]
AUDIO_SOURCES: tuple[str, ...] = typing.get_args(AudioSource)
LOG_LEVELS: tuple[str, ...] = typing.get_args(LogLevel)
# Names end up in MQTT topics and file names: nothing that needs quoting or escaping anywhere.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NAME_RULE = "1 to 64 letters, digits, '_' or '-'"
# Query parameters that some cameras (e.g. ?user=admin&password=...) use for credentials.
_SECRET_QUERY = re.compile(r"pass|pwd|secret|token|key|auth|sig", re.IGNORECASE)


def _bad(message: str) -> PydanticCustomError:
    """A validation error whose message is shown to the user as is (see :func:`_describe`)."""
    return PydanticCustomError("edgeav", message.replace("{", "{{").replace("}", "}}"))


# --------------------------------------------------------------------------- field types


def _lower(value: Any) -> Any:
    """Accept ``INFO`` / ``Microphone``: the case of a keyword is not worth an error."""
    return value.lower() if isinstance(value, str) else value


def _path_in(value: Any) -> Path:
    if not isinstance(value, str):
        raise _bad("expected a path (text)")
    if not value.strip():
        raise _bad("expected a path, got an empty string")
    return Path(os.path.expanduser(value))


def _path_out(value: Path, info: ValidationInfo) -> Path:
    """Relative paths are relative to the config file's folder, not to wherever the daemon was started."""
    base = (info.context or {}).get("base_dir")
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return Path(os.path.abspath(value))


def _readable_file(value: Path, info: ValidationInfo) -> Path:
    """Checked at load time so a missing secret or footage file fails `config check`, not the daemon at 3 am.

    The file is opened (which also honours ACLs and root's rights) but never read here.
    """
    where = "" if value.is_absolute() else f" ({_path_out(value, info)})"
    value = _path_out(value, info)
    if not value.exists():
        raise _bad(f"no such file{where}")
    if value.is_dir():
        raise _bad(f"is a directory{where}, expected a readable file")
    try:
        with open(value, "rb"):
            pass
    except OSError as exc:
        raise _bad(f"cannot be opened for reading ({exc.strerror or exc})") from None
    return value


ConfigPath = Annotated[Path, BeforeValidator(_path_in), AfterValidator(_path_out)]
ReadableFile = Annotated[Path, BeforeValidator(_path_in), AfterValidator(_readable_file)]


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise _bad(f"allowed: {NAME_RULE} (the name is used in MQTT topics and file names)")
    return value


Name = Annotated[str, AfterValidator(_check_name)]


def _check_token(value: str) -> str:
    """Host names, client ids, user names: non-empty, no spaces (a stray space is always a mistake)."""
    if not value or any(ch.isspace() for ch in value):
        raise _bad("expected non-empty text without spaces")
    return value


Token = Annotated[str, AfterValidator(_check_token)]


def _check_host(value: str) -> str:
    """A broker host: a name or an address, without the scheme or port some users paste along."""
    _check_token(value)
    if "://" in value or "/" in value:
        raise _bad("expected a host name or address only, such as broker.lan or 10.0.0.2 (no scheme, no path)")
    if ":" in value:
        try:
            ipaddress.IPv6Address(value.strip("[]"))
        except ValueError:
            raise _bad("expected a host name or address only; put the port in mqtt.port") from None
    return value


Host = Annotated[str, AfterValidator(_check_host)]


def _check_topic_prefix(value: str) -> str:
    if not value or value.startswith("/") or value.endswith("/") or "//" in value:
        raise _bad("expected topic levels like 'edgeav' or 'site/edgeav' (no leading, trailing or double '/')")
    if any(ch in value for ch in "+#\0") or any(ch.isspace() for ch in value):
        raise _bad("must not contain MQTT wildcards '+' or '#', NUL or spaces")
    return value


TopicPrefix = Annotated[str, AfterValidator(_check_topic_prefix)]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def _byte_size(value: Any) -> int:
    """A byte count as an integer or with a unit: ``10GB``, ``500 MB``, ``1.5GiB``."""
    if isinstance(value, bool):
        raise _bad("expected a byte count such as 10000000000 or '10GB'")
    if isinstance(value, int):
        if value < 0:
            raise _bad("must not be negative")
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise _bad("expected a byte count such as 10000000000, '10GB', '500MB' or '2GiB'")
    unit = match.group(2).lower().removesuffix("b")
    return int(float(match.group(1)) * _UNITS[unit])


ByteSize = Annotated[int, BeforeValidator(_byte_size)]


def _device(value: Any) -> Any:
    """A PortAudio device: its index (as sounddevice lists them) or (part of) its name."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    if isinstance(value, str) and value.strip():
        return value
    raise _bad("expected a device name (text) or a device index (a whole number >= 0)")


def mask_url(url: str) -> str:
    """``url`` with its user-info and credential-looking query values replaced by ``***``."""
    text = redact(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if not parts.query:
        return text
    query = [(k, "***" if _SECRET_QUERY.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


# --------------------------------------------------------------------------- models


class _Section(BaseModel):
    """Shared rules: frozen, unknown keys refused, no type guessing, no NaN/inf."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_are_defaults(cls, data: Any) -> Any:
        # `events:` with nothing under it (YAML null) means "all defaults", not "expected a mapping".
        if not isinstance(data, dict):
            return data
        return {key: value for key, value in data.items()
                if not (value is None and key in cls.model_fields and _is_required_section(cls, key))}


def _is_required_section(model: type[BaseModel], key: str) -> bool:
    ann = model.model_fields[key].annotation
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _default_node_name() -> str:
    """The host's short name made safe for topics: what a one-box install wants without thinking."""
    host = socket.gethostname().split(".")[0]
    name = re.sub(r"[^A-Za-z0-9_-]", "-", host)[:64].strip("-")
    return name or "edgeav"


class NodeConfig(_Section):
    """This box. Its name is the second MQTT topic level: ``<prefix>/<node name>/...``."""

    name: Name = Field(default_factory=_default_node_name)


class ModelsConfig(_Section):
    """Which model bundle (made by ``edgeav export``) the daemon loads."""

    bundle: ConfigPath | None = None  # None: the default bundle shipped inside the package


class VideoConfig(_Section):
    """Exactly one video source: a network stream or a file (played on its own clock)."""

    url: str | None = None
    file: ReadableFile | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        allowed = ", ".join(URL_SCHEMES)
        if not value.strip() or any(ch.isspace() for ch in value):
            raise _bad(f"expected a URL without spaces, such as rtsp://HOST/PATH (schemes: {allowed})")
        if "://" not in value:
            raise _bad(f"the URL has no scheme; write it as rtsp://HOST/PATH (allowed schemes: {allowed})")
        parts = urlsplit(value)
        if parts.scheme.lower() not in URL_SCHEMES:
            raise _bad(f"scheme {parts.scheme!r} is not supported; allowed schemes: {allowed}")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise _bad("the URL's port is not a number between 1 and 65535") from None
        if not parts.hostname:
            raise _bad("the URL has no host")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> VideoConfig:
        if (self.url is None) == (self.file is None):
            got = "both" if self.url is not None else "neither"
            raise _bad(f"needs exactly one of url (a camera stream) or file (footage); got {got}")
        return self


class AudioConfig(_Section):
    """Where a camera's sound comes from: its own stream, a local microphone, or nowhere."""

    source: Annotated[AudioSource, BeforeValidator(_lower)] = "camera"
    device: Annotated[str | int | None, BeforeValidator(_device)] = None  # microphone: name or index
    sample_rate: int | None = Field(default=None, ge=8000, le=192000)  # microphone: None = device default

    @field_validator("device", "sample_rate")
    @classmethod
    def _microphone_only(cls, value: Any, info: ValidationInfo) -> Any:
        source = info.data.get("source")
        if value is not None and source is not None and source != "microphone":
            raise _bad(f"only used with source: microphone (this audio source is {source!r})")
        return value


class CameraConfig(_Section):
    """One pipeline: a video source, its audio, and the known lag between them."""

    name: Name
    video: VideoConfig
    audio: AudioConfig = AudioConfig()
    # How many ms later the sound arrives than the picture (negative: earlier). Capture subtracts it
    # from the audio timestamps so both modalities land on one timeline.
    av_offset_ms: float = Field(default=0.0, ge=-60_000, le=60_000)


class EventsConfig(_Section):
    """The event localiser's hysteresis (design.md section 4)."""

    start_threshold: float = Field(default=0.6, ge=0.0, le=1.0)
    end_threshold: float = Field(default=0.4, ge=0.0, le=1.0)
    start_windows: int = Field(default=1, ge=1, le=10_000)
    end_windows: int = Field(default=2, ge=1, le=10_000)

    @field_validator("end_threshold")
    @classmethod
    def _end_not_above_start(cls, value: float, info: ValidationInfo) -> float:
        start = info.data.get("start_threshold")
        if start is not None and value > start:
            raise _bad(f"must be <= start_threshold ({start:g}), or events would flicker")
        return value


class AnomalyConfig(_Section):
    """The anomaly alert policy: how often a false alarm is acceptable, and how alerts are paced."""

    # None: the rate the bundle was calibrated for (`edgeav calibrate --false-alarms-per-hour`)
    false_alarms_per_hour: float | None = Field(default=None, gt=0.0, le=3600.0)
    min_duration_s: float = Field(default=1.0, ge=0.0)
    cooldown_s: float = Field(default=3.0, ge=0.0)  # see edgeav.decide.AnomalyParams
    # A run within the cooldown peaking above this many times the incident's peak gets its own alert; null: never
    escalation: float | None = Field(default=1.5, ge=1.0, le=1000.0)


class TlsConfig(_Section):
    """TLS to the broker. No ``ca_file``: the system's CA store; ``cert_file`` + ``key_file``: client certificate."""

    ca_file: ReadableFile | None = None
    cert_file: ReadableFile | None = None
    key_file: ReadableFile | None = Field(default=None, validate_default=True)

    @field_validator("key_file")
    @classmethod
    def _pair(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if "cert_file" not in info.data:  # cert_file itself was bad: that error is the one to report
            return value
        if (value is None) != (info.data["cert_file"] is None):
            raise _bad("cert_file and key_file go together: give both (client certificate) or neither")
        return value


class MqttConfig(_Section):
    """The broker connection and topic layout (design.md sections 4 and 6)."""

    host: Host = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)  # default 8883 when tls is set
    prefix: TopicPrefix = "edgeav"
    qos: int = Field(default=1, ge=0, le=2)
    # MQTT protocol version; YAML reads `5` as a number, so numbers are taken as their text.
    protocol: Annotated[Literal["3.1.1", "5"], BeforeValidator(lambda v: str(v) if isinstance(v, int) else v)] = "3.1.1"
    keepalive: int = Field(default=60, ge=1, le=65535)  # seconds; the broker sends our last will after 1.5x this
    client_id: Annotated[str, AfterValidator(_check_token)] | None = None  # None: edgeav-<node name> (see Config)
    username: Token | None = None
    password_file: ReadableFile | None = None  # read only when connecting; never printed or logged
    tls: TlsConfig | None = None
    discovery: bool = False  # Home Assistant MQTT discovery
    discovery_prefix: TopicPrefix = "homeassistant"
    # Events and alerts kept on disk while the broker does not acknowledge them; past this the oldest events
    # are dropped first, then the oldest alerts (counted and logged): a broker gone for days must not fill the disk.
    outbox_max_messages: int = Field(default=DEFAULT_MAX_MESSAGES, ge=MIN_MAX_MESSAGES, le=100_000_000)

    @model_validator(mode="before")
    @classmethod
    def _tls_port(cls, data: Any) -> Any:
        if isinstance(data, dict) and "port" not in data and data.get("tls") is not None:
            data = {**data, "port": 8883}
        return data

    @field_validator("password_file")
    @classmethod
    def _needs_username(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("username") is None:
            raise _bad("a password needs a username: set mqtt.username too")
        return value

    def read_password(self) -> str | None:
        """The broker password: the file's first line. Raises UserError when the file became unreadable."""
        if self.password_file is None:
            return None
        try:
            text = self.password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"mqtt.password_file: {self.password_file}: cannot be read ({exc.__class__.__name__})") \
                from None
        return text.splitlines()[0] if text else ""


class RetentionConfig(_Section):
    """Evidence clips are deleted oldest first when either limit is passed; 0 means no limit."""

    max_age_days: float = Field(default=7.0, ge=0.0)
    max_bytes: ByteSize = 10_000_000_000


class StorageConfig(_Section):
    """Where state (the MQTT outbox, the normal memory, the index) and evidence clips live."""

    state_dir: ConfigPath = Path("/var/lib/edgeav")
    clips_dir: ConfigPath = Path("/var/lib/edgeav/clips")  # default: <state_dir>/clips
    retention: RetentionConfig = RetentionConfig()
    # An alert's evidence clip spans these many seconds before its start and after its end (the alert is
    # published once the seconds after have been recorded).
    clip_pre_s: float = Field(default=5.0, ge=0.0, le=60.0)
    clip_post_s: float = Field(default=5.0, ge=0.0, le=60.0)

    @model_validator(mode="before")
    @classmethod
    def _clips_under_state(cls, data: Any) -> Any:
        if isinstance(data, dict) and "clips_dir" not in data and isinstance(data.get("state_dir"), str):
            data = {**data, "clips_dir": os.path.join(os.path.expanduser(data["state_dir"]), "clips")}
        return data


_LISTEN = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.\-_]*)):(?P<port>\d{1,5})$")


class MetricsConfig(_Section):
    """The Prometheus-style metrics endpoint; ``listen: null`` turns it off."""

    listen: str | None = "127.0.0.1:9108"

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is None:
            return value
        match = _LISTEN.match(value)
        if not match or not 1 <= int(match.group("port")) <= 65535:
            raise _bad("expected HOST:PORT such as 127.0.0.1:9108, 0.0.0.0:9108 or [::1]:9108 (port 1..65535)")
        return value

    @property
    def host(self) -> str | None:
        """The address to bind ('' binds every interface); None when metrics are off."""
        if self.listen is None:
            return None
        match = _LISTEN.match(self.listen)
        assert match is not None  # validated
        return match.group("v6") or match.group("host")

    @property
    def port(self) -> int | None:
        return None if self.listen is None else int(self.listen.rsplit(":", 1)[1])


class LoggingConfig(_Section):
    """Log verbosity; ``edgeav --log-level`` overrides it for one run."""

    level: Annotated[LogLevel, BeforeValidator(_lower)] = "info"


class Config(_Section):
    """A whole ``edgeav`` config file (design.md section 6). Absent sections take their defaults."""

    node: NodeConfig = Field(default_factory=NodeConfig)
    models: ModelsConfig = ModelsConfig()
    cameras: tuple[CameraConfig, ...] = Field(default=(), strict=False)  # YAML gives a list
    events: EventsConfig = EventsConfig()
    anomaly: AnomalyConfig = AnomalyConfig()
    mqtt: MqttConfig | None = None  # None: no MQTT (replay then writes JSON lines only)
    storage: StorageConfig = StorageConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()

    @field_validator("cameras")
    @classmethod
    def _unique_names(cls, cameras: tuple[CameraConfig, ...]) -> tuple[CameraConfig, ...]:
        first: dict[str, int] = {}
        for index, camera in enumerate(cameras):
            if camera.name in first:
                raise PydanticCustomError(
                    "edgeav",
                    "camera names must be unique (cameras[{other}] has this name too)",
                    {"other": first[camera.name], "subpath": (index, "name"), "value": camera.name},
                )
            first[camera.name] = index
        return cameras

    @model_validator(mode="after")
    def _default_client_id(self) -> Config:
        # The client id defaults to one derived from the node name; filled in here so `config check` shows it.
        if self.mqtt is not None and self.mqtt.client_id is None:
            object.__setattr__(self, "mqtt", self.mqtt.model_copy(update={"client_id": f"edgeav-{self.node.name}"}))
        return self

    def camera(self, name: str) -> CameraConfig:
        """The camera called ``name``; KeyError when there is none."""
        for camera in self.cameras:
            if camera.name == name:
                return camera
        raise KeyError(name)


SECTIONS: tuple[str, ...] = tuple(Config.model_fields)


# --------------------------------------------------------------------------- loading and errors


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML would silently keep the last one."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # an unhashable key: construct_mapping reports it
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (a key may appear once per mapping)", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate the YAML config at ``path``. Raises UserError with a one-line message."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{source}: is a directory, expected a YAML config file") from None
    except OSError as exc:
        raise UserError(f"{source}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{source}: is not UTF-8 text (bad byte at offset {exc.start}); expected a YAML file") \
            from None
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        if "<block" in problem:  # PyYAML's words for "the indentation does not line up"
            problem += " (check the indentation)"
        raise UserError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{source}: YAML error: {' '.join(str(exc).split())}") from None
    if data is None:
        raise UserError(f"{source}: the file is empty (or only comments): "
                        f"expected a mapping with sections such as {', '.join(SECTIONS)}")
    return parse_config(data, source, base_dir=Path(path).resolve().parent)


def parse_config(data: dict, source: str, base_dir: str | os.PathLike[str] | None = None) -> Config:
    """Validate an already-parsed mapping. ``source`` names it in errors; relative paths join ``base_dir``."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: top level: got {_kind(data)}: "
                        f"expected a mapping with sections such as {', '.join(SECTIONS)}")
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        # An unknown key is usually a typo that also makes a required key look "missing": report it first.
        errors = sorted(exc.errors(), key=lambda err: err["type"] != "extra_forbidden")
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise UserError(_describe(errors[0], source) + more) from None
    _warn_loose_permissions(config)
    return config


def _warn_loose_permissions(config: Config) -> None:
    """Like ssh, say so when a secret is readable by every user on the box (a warning, not an error)."""
    if config.mqtt is not None and config.mqtt.password_file is not None:
        try:
            if config.mqtt.password_file.stat().st_mode & 0o004:
                log.warning("mqtt.password_file %s is readable by every user; chmod 600 it",
                            config.mqtt.password_file)
        except OSError:
            pass


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, str):
        return "text"
    if value is None:
        return "nothing"
    return f"a {type(value).__name__}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``X | None``, ``tuple[X, ...]``, ``Annotated[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _walk(loc: list[Any], unknown_key: bool) -> tuple[str, type[BaseModel] | None, str | None]:
    """Turn a pydantic ``loc`` into ``cameras[1].audio.device``; also the model and the last field name."""
    path, field = "", None
    model: type[BaseModel] | None = Config
    for position, item in enumerate(loc):
        last = position == len(loc) - 1
        if unknown_key and last:
            path += f".{item}" if path else str(item)
        elif isinstance(item, int):
            path += f"[{item}]"
        elif model is not None and item in model.model_fields:
            path += f".{item}" if path else item
            field = item
            model_next = _model_in(model.model_fields[item].annotation)
            if not last:
                model = model_next
        # anything else is a pydantic-internal tag (a union member, a validator name): not part of the path
    return path or "top level", model, field


def _show(value: Any) -> str:
    """A bad value as the user wrote it, short, with credentials masked."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, str):
        # Mask "user:pass@host" even without a scheme: exactly the URL that failed validation.
        text = json.dumps(mask_url(re.sub(r"^[^/@\s]+@", "***@", value)))
    else:
        text = json.dumps(value, default=str, ensure_ascii=False)
        text = redact(text)
    return text if len(text) <= 80 else text[:77] + "..."


_TYPE_WORDS = {
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected text",
    "model_type": "expected a mapping (key: value lines)",
    "model_attributes_type": "expected a mapping (key: value lines)",
    "dict_type": "expected a mapping (key: value lines)",
    "list_type": "expected a list (lines starting with '- ')",
    "tuple_type": "expected a list (lines starting with '- ')",
    "path_type": "expected a path (text)",
}


def _bounds(model: type[BaseModel] | None, field: str | None) -> str | None:
    """'must be between 1 and 65535' from the field's own constraints, so message and rule cannot differ."""
    if model is None or field is None or field not in model.model_fields:
        return None
    limits: dict[str, float] = {}
    for meta in model.model_fields[field].metadata:
        for name in ("ge", "le", "gt", "lt"):
            if getattr(meta, name, None) is not None:
                limits[name] = getattr(meta, name)
    if "ge" in limits and "le" in limits:
        return f"must be between {limits['ge']:g} and {limits['le']:g}"
    if limits.get("ge") == 0:
        return "must not be negative"
    words = {"ge": ">=", "le": "<=", "gt": ">", "lt": "<"}
    parts = [f"{words[name]} {limit:g}" for name, limit in limits.items()]
    return "must be " + " and ".join(parts) if parts else None


def _describe(err: Any, source: str) -> str:
    """One pydantic error -> ``<file>: <field path>: <bad value>: <what is allowed>``."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    loc = list(err["loc"]) + list(ctx.get("subpath", ()))
    path, model, field = _walk(loc, unknown_key=kind == "extra_forbidden")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        keys = list(model.model_fields) if model is not None else []
        hint = difflib.get_close_matches(key, keys, n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"{source}: {path}: unknown key: allowed keys are {', '.join(keys)}{did_you_mean}"
    if kind == "invalid_key":
        where, _, _ = _walk(loc[:-1], unknown_key=False)
        return f"{source}: {where}: key {_show(loc[-1])}: keys must be text"
    if kind == "missing":
        return f"{source}: {path}: missing: this key is required"
    value = _show(ctx["value"] if "value" in ctx else err.get("input"))
    allowed: str
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        allowed = _bounds(model, field) or err["msg"].lower()
    elif kind == "literal_error":
        allowed = f"allowed: {ctx.get('expected', '')}".replace("'", "")
    elif kind in _TYPE_WORDS:
        allowed = _TYPE_WORDS[kind]
        bounds = _bounds(model, field)
        if bounds and kind.startswith(("int", "float")):
            allowed += f" that {bounds.removeprefix('must ').replace('be ', 'is ', 1)}"
    elif kind == "value_error":
        allowed = err["msg"].removeprefix("Value error, ")
    else:
        allowed = err["msg"]
    return f"{source}: {path}: {value}: {allowed}"


# --------------------------------------------------------------------------- using a config


def effective_config(config: Config) -> dict[str, Any]:
    """The config with every default filled in, as plain data, secrets masked: what `config check` prints."""
    data = config.model_dump(mode="json")
    for camera in data["cameras"]:
        if camera["video"].get("url"):
            camera["video"]["url"] = mask_url(camera["video"]["url"])
    return data


def effective_config_yaml(config: Config) -> str:
    """:func:`effective_config` as YAML; redacted once more as a whole, in case a URL hides elsewhere."""
    return redact(yaml.safe_dump(effective_config(config), sort_keys=False, default_flow_style=False,
                                 allow_unicode=True))


def apply_logging(config: Config, cli_level: str | None = None) -> None:
    """Set the log level from the config, unless ``edgeav --log-level`` chose one for this run."""
    setup_logging(cli_level or config.logging.level)


# --------------------------------------------------------------------------- the `config` command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config", help="check a config file",
        description="Work with edgeav YAML config files (see configs/edgeav.example.yaml).")
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    check = actions.add_parser(
        "check", help="validate FILE and print the effective config (defaults filled in, secrets masked)",
        description="Validate FILE. On success print the effective config as YAML (every default filled in, "
                    "credentials masked) and exit 0; on a problem print one line naming the file, the field, "
                    "the bad value and what is allowed, and exit 2.")
    check.add_argument("file", metavar="FILE", help="the YAML config file")
    check.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    apply_logging(config, getattr(args, "log_level", None))
    sys.stdout.write(f"# effective config of {args.file}: defaults filled in, secrets masked\n")
    sys.stdout.write(effective_config_yaml(config))
    sys.stdout.flush()
    cameras = len(config.cameras)
    sys.stderr.write(f"edgeav: {args.file}: OK ({cameras} camera{'s' if cameras != 1 else ''})\n")
    return 0


__all__ = [
    "AnomalyConfig", "AudioConfig", "CameraConfig", "Config", "EventsConfig", "LoggingConfig", "MetricsConfig",
    "ModelsConfig", "MqttConfig", "NodeConfig", "RetentionConfig", "StorageConfig", "TlsConfig", "VideoConfig",
    "apply_logging", "effective_config", "effective_config_yaml", "load_config", "mask_url", "parse_config",
]
