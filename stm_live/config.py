"""Configuration: checked once at start-up into frozen, typed objects.

Precedence, lowest first: built-in defaults < the YAML file < environment
variables < command-line flags. The file is ``--config PATH``, else
``$STM_LIVE_CONFIG``, else ``./config.yaml`` when it exists, else none.

Environment variables are ``STM_LIVE_<SECTION>_<KEY>`` (section names hold no
underscore, so ``STM_LIVE_PUBLISH_LABEL_MAPS=false`` sets
``publish.label_maps``); values are parsed as YAML scalars or lists.

Unknown keys, wrong types and impossible values are errors
(:class:`~stm_live.errors.ConfigError`) that name where the value came from
(file, environment variable or flag), the key, the value and what was
expected. Relative paths in the file are relative to the file's folder;
relative paths from the environment or command line to the working directory.

Validation uses pydantic: it gives typed, frozen models whose errors carry the
location and the offending input, which is exactly what the messages need,
without a hand-written type checker.
"""

from __future__ import annotations

import os
import reprlib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from .bridge.settings import BridgeSection
from .decide.rules import DecideSection
from .errors import ConfigError
from .limits import MAX_LENGTH_M, MIN_LENGTH_M
from .ranges import Lines, Messages, Range, Seconds, Sigmas, check_retry_max

__all__ = [
    "ENV_PREFIX",
    "Config",
    "default_config_path",
    "dump_config",
    "load_config",
]

ENV_PREFIX = "STM_LIVE_"
_CONFIG_ENV = "STM_LIVE_CONFIG"

#: Largest configuration file read (the shipped one is about 6 kB).
MAX_FILE_BYTES = 1 << 20
#: Largest configuration after YAML aliases are expanded, in nodes plus characters:
#: a few hundred times any real configuration, far below what an alias bomb
#: ("billion laughs") expands to. Checked on the loaded structure, where aliases
#: are shared references, in time proportional to the file.
MAX_EXPANDED_SIZE = 1 << 20
#: Longest message a configuration error carries, and the most problems it lists.
MAX_ERROR_CHARS = 2000
_MAX_ERROR_LINES = 20

_SHOW = reprlib.Repr()  # values in messages: short, bounded work whatever their size
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxtuple, _SHOW.maxdict = 2, 6, 6, 6
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlong = 80, 80, 40


def _clip(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _first_lines(lines: list[str]) -> list[str]:
    """As many problem lines as fit :data:`MAX_ERROR_CHARS` (and at most 20), then how many more."""
    kept: list[str] = []
    used = 0
    for line in lines:
        if len(kept) == _MAX_ERROR_LINES or used + len(line) + 3 > MAX_ERROR_CHARS - 60:
            return [*kept, f"... and {len(lines) - len(kept)} more problems"]
        kept.append(line)
        used += len(line) + 3
    return kept


def _show(value: Any) -> str:
    """A value as an error message shows it: ``repr`` for short values, bounded for any."""
    return _clip(_SHOW.repr(value), 120)


#: A physical length in nanometres (the scan size limits of :mod:`stm_live.limits`).
LengthNm = Annotated[float, Range(MIN_LENGTH_M * 1e9, MAX_LENGTH_M * 1e9, unit="nm")]
Fraction = Annotated[float, Range(0.0, 1.0)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


def _endpoint(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if "://" not in value:
        raise ValueError("expected a ZeroMQ endpoint such as tcp://127.0.0.1:5555, ipc:///tmp/x or inproc://x")
    return value


class InputSection(_Section):
    """Which image of a scan is segmented, and sizes for files that lack them."""

    channel: str = "Z"
    direction: Literal["forward", "backward"] = "forward"
    width_nm: LengthNm | None = None
    height_nm: LengthNm | None = None


class LevelSection(_Section):
    """How images are levelled before segmentation (:mod:`stm_live.level`)."""

    frame_method: Literal[
        "step-aware", "plane", "plane2", "flatten", "median", "median_diff", "poly", "matching"
    ] = "step-aware"
    remove_scars: bool = False
    reject: Sigmas = 3.0
    stream_reference_lines: Annotated[float, Range(1.0, 32768.0)] = 4.0
    stream_reject: Sigmas = 3.0
    stream_anchor: bool = True
    stream_restore_slope_lines: Lines | None = 8.0
    stream_restore_offset_lines: Lines | None = None


class ModelSection(_Section):
    """The segmentation model and how onnxruntime runs it."""

    path: Path | None = None
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Annotated[int, Range(0, 1024)] = 0
    min_score: Fraction | None = None
    min_area_nm2: Annotated[float, Range(0.0, 1e6, unit="nm^2")] | None = None


class WatchSection(_Section):
    """Folders watched for finished scan files."""

    folders: list[Path] = []
    patterns: list[str] = ["*.sxm", "*.npy", "*.npz"]
    recursive: bool = False
    settle_timeout_s: Seconds = 600.0
    retry_initial_s: Seconds = 0.1
    retry_max_s: Seconds = 5.0
    polling: bool = False

    @field_validator("retry_max_s")
    @classmethod
    def _check_retry(cls, value: float, info: ValidationInfo) -> float:
        return check_retry_max(value, info)


class IngestSection(_Section):
    """ZeroMQ SUB socket that controller bridges publish scan lines to."""

    endpoint: str | None = "tcp://127.0.0.1:5555"
    max_open_scans: Annotated[int, Range(1, 1024)] = 4
    scan_timeout_s: Seconds = 600.0
    rcv_hwm: Messages = 10000
    max_messages_per_s: Annotated[float, Range(1.0, 1e6, unit="messages/s")] = 5000.0
    max_new_scans_per_min: Annotated[int, Range(1, 100_000)] = 30
    max_mb_per_hour: Annotated[int, Range(1, 1 << 20, unit="MB")] = 16384

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        return _endpoint(value)


class PublishSection(_Section):
    """ZeroMQ PUB socket results and heartbeats go out on."""

    endpoint: str | None = "tcp://127.0.0.1:5556"
    label_maps: bool = True
    heartbeat_s: Annotated[float, Range(1e-2, 3600.0, unit="s")] = 2.0
    send_hwm: Messages = 1000

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        return _endpoint(value)


class LiveSection(_Section):
    """Line-by-line segmentation of scans streamed over ZeroMQ (the daemon's live path)."""

    cadence_lines: Annotated[int, Range(1, 32768)] = 1
    freeze_rows: Annotated[int, Range(1, 32768)] = 32
    whole_frame_nice: Annotated[int, Range(0, 19)] = 10


Megabytes = Annotated[int, Range(1, 1 << 20, unit="MB")]


class LimitsSection(_Section):
    """Memory for inputs waiting to be processed, and the largest frame the model runs in one piece."""

    assembler_mb: Megabytes = 768
    ingest_queue_mb: Megabytes = 128
    frames_queue_mb: Megabytes = 256
    sink_queue_mb: Megabytes = 64
    store_queue_mb: Megabytes = 512
    tile_model_px: Annotated[int, Range(64, 16384, unit="px")] = 1024
    max_upsample: Annotated[float, Range(1.0, 64.0)] = 4.0


class ResultsSection(_Section):
    """Where results, the event log and quarantined files are kept."""

    dir: Path = Path("stm-live-results")
    overlay_png: bool = True
    events_max_mb: Megabytes = 64
    events_backups: Annotated[int, Range(0, 100)] = 5


class SecuritySection(_Section):
    """ZeroMQ CURVE authentication of the daemon's sockets and of stm-live's own clients (:mod:`stm_live.security`)."""

    server_secret_key: Path | None = None
    allowed_clients: Path | None = None
    server_public_key: Path | None = None
    client_secret_key: Path | None = None
    insecure: bool = False

    @field_validator("allowed_clients")
    @classmethod
    def _check_allowed(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        server = info.data.get("server_secret_key")
        if server is not None and value is None:
            raise ValueError("required when security.server_secret_key is set: the folder of the allowed "
                             "clients' public keys (NAME.key files from `stm-live keys`)")
        if server is None and value is not None:
            raise ValueError("has no effect without security.server_secret_key (the daemon's key pair)")
        return value

    @field_validator("client_secret_key")
    @classmethod
    def _check_client(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if (info.data.get("server_public_key") is None) != (value is None):
            raise ValueError("security.server_public_key and security.client_secret_key go together: "
                             "a client needs the daemon's public key and its own key pair")
        return value


class LogSection(_Section):
    """Logging of the service."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class ViewerSection(_Section):
    """The page: live overlay in the browser and teach-in (``docs/viewer.md``)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Range(0, 65535)] = 8765
    token: str | None = None
    client_buffer_kb: Annotated[int, Range(64, 1 << 20, unit="kB")] = 4096
    keep_frames: Annotated[int, Range(1, 1000)] = 24
    keep_mb: Megabytes = 128

    @field_validator("token")
    @classmethod
    def _check_token(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 16:
            raise ValueError("expected a secret of at least 16 characters (or null)")
        return value or None


class Config(_Section):
    """The whole configuration; see ``config.yaml`` for every key explained."""

    input: InputSection = InputSection()
    level: LevelSection = LevelSection()
    model: ModelSection = ModelSection()
    watch: WatchSection = WatchSection()
    ingest: IngestSection = IngestSection()
    publish: PublishSection = PublishSection()
    live: LiveSection = LiveSection()
    limits: LimitsSection = LimitsSection()
    results: ResultsSection = ResultsSection()
    log: LogSection = LogSection()
    security: SecuritySection = SecuritySection()
    bridge: BridgeSection = BridgeSection()
    decide: DecideSection = DecideSection()
    viewer: ViewerSection = ViewerSection()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able form (paths as strings)."""
        return self.model_dump(mode="json")


def _is_path_type(annotation: Any) -> bool:
    if annotation is Path:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list):
        return any(_is_path_type(a) for a in typing.get_args(annotation))
    return False


def _path_keys(model: type[BaseModel] = Config, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys |= _path_keys(ann, f"{prefix}{name}.")
        elif _is_path_type(ann):
            keys.add(prefix + name)
    return keys


def _resolve_paths(raw: Any, base: Path, key: str, path_keys: set[str]) -> Any:
    if isinstance(raw, dict):
        return {k: _resolve_paths(v, base, f"{key}.{k}" if key else str(k), path_keys) for k, v in raw.items()}
    if key in path_keys:
        if isinstance(raw, str):
            return str((base / Path(raw).expanduser()).resolve()) if raw else raw
        if isinstance(raw, list):
            return [str((base / Path(v).expanduser()).resolve()) if isinstance(v, str) else v for v in raw]
    return raw


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(_flatten(v, key + "."))
        flat[key] = v
    return flat


def default_config_path() -> Path | None:
    """The file used when none is named: ``$STM_LIVE_CONFIG`` or ``./config.yaml``."""
    env = os.environ.get(_CONFIG_ENV)
    if env:
        return Path(env)
    local = Path("config.yaml")
    return local if local.is_file() else None


def _expanded_size(node: Any, limit: int) -> int:
    """Nodes plus characters of ``node`` with every YAML alias expanded, counting up to ``limit``.

    Aliases load as shared references, so the walk memoises by identity and
    costs time proportional to the file, not to the expansion. Raises
    ValueError for a structure that contains itself (``a: &a [*a]``) and
    RecursionError for nesting deeper than Python's stack.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(item: Any) -> int:
        key = id(item)
        if key in sizes:
            return sizes[key]
        if isinstance(item, dict | list):
            if key in active:
                raise ValueError("an alias refers to a node that contains it (a structure without end)")
            active.add(key)
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            total = 1
            for child in children:
                total += size(child)
                if total > limit:
                    break
            active.discard(key)
        else:
            total = 1 + (len(item) if isinstance(item, str | bytes) else 0)
        sizes[key] = total
        return total

    return size(node)


def _check_size(source: str, raw: Any) -> None:
    """Refuse a loaded YAML value that expands beyond :data:`MAX_EXPANDED_SIZE` (an alias bomb)."""
    try:
        total = _expanded_size(raw, MAX_EXPANDED_SIZE)
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply (a configuration is a few levels of sections)") from None
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if total > MAX_EXPANDED_SIZE:
        raise ConfigError(
            f"{source}: too large once YAML aliases are expanded (over {MAX_EXPANDED_SIZE} nodes and "
            "characters; an alias bomb?): a configuration needs no more than a few kilobytes"
        )


def _safe_load(source: str, text: str) -> Any:
    """``yaml.safe_load`` with the size of what it builds checked (see :func:`_check_size`)."""
    try:
        raw = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply (a configuration is a few levels of sections)") from None
    _check_size(source, raw)
    return raw


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a configuration file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration file: {_clip(str(exc))}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_FILE_BYTES} bytes; not a configuration file")
    try:
        raw = _safe_load(str(path), text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{where}: {_clip(problem)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    return _resolve_paths(raw, path.resolve().parent, "", _path_keys())


def _read_env(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    tree: dict[str, Any] = {}
    origins: dict[str, str] = {}
    sections = set(Config.model_fields)
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == _CONFIG_ENV:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section not in sections or not key:
            raise ConfigError(
                f"environment variable {_clip(name, 80)}: unknown setting; expected {ENV_PREFIX}<SECTION>_<KEY> "
                f"with SECTION one of {', '.join(s.upper() for s in sorted(sections))}"
            )
        try:
            value = _safe_load(f"environment variable {name}", text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        dotted = f"{section}.{key}"
        _set(tree, dotted, value)
        origins[dotted] = f"environment variable {name}"
    return tree, origins


def _expected(err: Mapping[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "literal_error":
        ctx = err.get("ctx") or {}
        return f"expected one of {ctx.get('expected', '')}"
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    return "expected " + msg.removeprefix("Input should be ") if msg.startswith("Input should be ") else msg


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    use_default_file: bool = True,
) -> Config:
    """Build the effective configuration.

    Parameters
    ----------
    path : path-like, optional
        YAML file; default :func:`default_config_path` when
        ``use_default_file`` is true.
    overrides : Mapping[str, Any], optional
        Command-line values by dotted key (``{"watch.folders": ["/data"]}``);
        ``None`` values are ignored (flag not given).
    environ : Mapping[str, str], optional
        Environment to read ``STM_LIVE_*`` from (default ``os.environ``).

    Raises
    ------
    ConfigError
        Naming the source, the key, the value and what was expected.
    """
    try:
        return _load_config(path, overrides=overrides, environ=environ, use_default_file=use_default_file)
    except ConfigError as exc:
        message = str(exc)
        if len(message) <= MAX_ERROR_CHARS:
            raise
        # A backstop: every part is bounded already, but no error may echo megabytes.
        raise ConfigError(_clip(message, MAX_ERROR_CHARS)) from None


def _load_config(
    path: str | os.PathLike[str] | None,
    *,
    overrides: Mapping[str, Any] | None,
    environ: Mapping[str, str] | None,
    use_default_file: bool,
) -> Config:
    environ = os.environ if environ is None else environ
    file_path = Path(path) if path is not None else (default_config_path() if use_default_file else None)
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if file_path is not None:
        from_file = _read_file(file_path)
        merged = _merge(merged, from_file)
        origins.update({k: str(file_path) for k in _flatten(from_file)})
    env_tree, env_origins = _read_env(environ)
    merged = _merge(merged, env_tree)
    origins.update(env_origins)
    cli_tree: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set(cli_tree, dotted, value)
            origins[dotted] = f"command-line option for {dotted}"
    merged = _merge(merged, cli_tree)
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            dotted = ".".join(loc)
            origin = next(
                (origins[k] for k in (".".join(loc[:i]) for i in range(len(loc), 0, -1)) if k in origins),
                "defaults",
            )
            value = err.get("input")
            shown = "" if err.get("type") == "missing" else f" = {_show(value)}"
            lines.append(f"{origin}: {_clip(dotted, 120)}{shown}: {_clip(_expected(err))}")
        lines = _first_lines(lines)
        if len(lines) == 1:
            raise ConfigError(f"invalid configuration: {lines[0]}") from None
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def dump_config(config: Config) -> str:
    """The configuration as YAML text (what ``stm-live config`` prints)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
