"""The daemon's config: TOML -> typed, validated objects.

Unknown keys are errors, and every error names the TOML path and the bad value. Source
options are checked in a second pass, against the ``Config`` model of the source's kind.
Relative paths are taken from the config file's folder.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fusiond.align.windows import WindowConfig
from fusiond.bus.sockets import DEFAULT_CONTROL, DEFAULT_PUBLISH, DEFAULT_SUBSCRIBE
from fusiond.bus.wire import NAME_RE
from fusiond.errors import ConfigError
from fusiond.ingest import Limits
from fusiond.plugin.registry import SourceRegistry
from fusiond.sources.base import SourceConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecuritySection(_Section):
    """``[bus.security]``: CurveZMQ on every TCP endpoint (docs/operations.md, "Security")."""

    mode: Literal["none", "curve"] = "none"
    server_key: Path | None = None
    """The daemon's secret certificate (``fusiond keys generate server``)."""
    clients: Path | None = None
    """A folder of the public certificates (``NAME.key``) allowed to connect."""
    client_key: Path | None = None
    """The secret certificate the daemon's own sources and workers connect with; its
    public half must be in ``clients``. It may publish on every topic."""
    allow_insecure: bool = False
    """Bind a non-loopback TCP address with ``mode = "none"`` anyway."""
    publishers: dict[str, list[str]] = Field(default_factory=dict)
    """Key name -> the rigs (``demo``) or streams (``demo/cam``) it may publish; when set,
    any other key may only subscribe."""

    @field_validator("publishers")
    @classmethod
    def _targets(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, targets in value.items():
            for target in targets:
                parts = target.split("/")
                if len(parts) > 2 or not all(NAME_RE.match(p) for p in parts):
                    msg = f"{key}: {target!r} is neither a rig nor rig/stream"
                    raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _complete(self) -> SecuritySection:
        if self.mode == "curve":
            missing = [k for k in ("server_key", "clients", "client_key") if getattr(self, k) is None]
            if missing:
                msg = f"mode = \"curve\" needs {', '.join(missing)}"
                raise ValueError(msg)
        return self


class BusSection(_Section):
    """``[bus]``: where publishers and subscribers connect."""

    publish: str = DEFAULT_PUBLISH
    subscribe: str = DEFAULT_SUBSCRIBE
    control: str = DEFAULT_CONTROL
    queue: int = Field(1000, ge=10)
    """Messages each socket queue holds (ZeroMQ's high-water mark), before ``queue_mb`` caps it."""
    max_message_mb: float = Field(1.0, gt=0, le=2048)
    """Largest frame a publisher may send (ZMQ_MAXMSGSIZE); a larger one drops its connection."""
    queue_mb: float = Field(1024.0, gt=0)
    """Bytes any one socket queue may hold: its message limit is cut to ``queue_mb / max_message_mb``."""
    security: SecuritySection = SecuritySection()

    @model_validator(mode="after")
    def _exposed(self) -> BusSection:
        if self.security.mode == "none" and not self.security.allow_insecure:
            for key in ("publish", "subscribe", "control"):
                endpoint = getattr(self, key)
                host = endpoint.removeprefix("tcp://").rpartition(":")[0]
                if endpoint.startswith("tcp://") and host not in ("127.0.0.1", "localhost", "[::1]", "::1"):
                    msg = (f"{key} = {endpoint!r} is reachable from other hosts with no authentication: "
                           "set [bus.security] mode = \"curve\", or allow_insecure = true")
                    raise ValueError(msg)
        return self

    @field_validator("publish", "subscribe", "control")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not value.startswith(("tcp://", "ipc://", "inproc://")):
            msg = "must be a tcp://, ipc:// or inproc:// endpoint"
            raise ValueError(msg)
        return value

    @property
    def max_message_bytes(self) -> int:
        """``max_message_mb`` in bytes."""
        return round(self.max_message_mb * 2**20)

    @property
    def hwm(self) -> int:
        """Messages per socket queue such that a full queue holds at most ``queue_mb``.

        ZeroMQ bounds its queues in messages only; bounding each message's size as well
        makes ``messages * max_message_mb`` a bound in bytes.
        """
        return max(10, min(self.queue, int(self.queue_mb // self.max_message_mb)))


class IngestSection(_Section):
    """``[ingest]``: what the daemon accepts from any one publisher; the rest is counted and dropped."""

    max_clock_skew_ms: float = Field(5000.0, gt=0, le=3_600_000)
    """A block must end within this much of the daemon's clock (after offset correction)."""
    max_block_s: float = Field(60.0, gt=0, le=3600)
    """Longest time span one message may cover."""
    max_frame_pixels: int = Field(3840 * 2160, ge=1, le=2**28)
    """Largest image (height x width) a frame may declare, checked before a JPEG is decoded."""
    max_message_rate: float = Field(1000.0, gt=0, le=1_000_000)
    """Messages per second one stream may send (a source may set its own); excess is ``over_rate``."""
    max_stream_buffer_mb: float = Field(256.0, gt=0)
    """Bytes of samples the aligner holds per stream while its windows are open."""

    def limits(self) -> Limits:
        """The ingest's view, in nanoseconds and bytes."""
        return Limits(
            max_clock_skew_ns=round(self.max_clock_skew_ms * 1e6),
            max_block_ns=round(self.max_block_s * 1e9),
            max_frame_pixels=self.max_frame_pixels,
            max_message_rate=self.max_message_rate,
        )


class RuntimeSection(_Section):
    """``[runtime]``: where the pipeline runs (docs/operations.md, "Scaling out")."""

    engine: Literal["local", "ray"] = "local"
    workers: int | Literal["auto"] = 1
    """Ingest workers; 1 runs everything in the daemon's process, ``auto`` one per core."""
    address: str = ""
    """``engine = "ray"``: the cluster to join (``ray start --head`` prints it); "" starts one."""
    advertise: str = "127.0.0.1"
    """``engine = "ray"``: the address at which actors on other machines reach this daemon."""
    num_gpus: float = Field(0.0, ge=0)
    """``engine = "ray"``: GPUs to reserve for the inference server."""

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 256:
            msg = "must be between 1 and 256, or \"auto\""
            raise ValueError(msg)
        return value

    def worker_count(self, rigs: int) -> int:
        """Workers to start: ``auto`` is the core count; never more than there are rigs."""
        wanted = (os.cpu_count() or 1) if self.workers == "auto" else int(self.workers)
        return max(1, min(wanted, rigs))

    @property
    def sharded(self) -> bool:
        """Whether workers and the server run outside the daemon's process."""
        return self.engine == "ray" or self.workers != 1


class ModelSection(_Section):
    """``[model]``: the checkpoint and how to batch windows into it."""

    path: Path
    device: str = "auto"
    max_batch: int = Field(32, ge=1, le=4096)
    max_delay_ms: float = Field(5.0, ge=0)
    queue: int = Field(8, ge=1)
    runtime: Literal["auto", "torch", "onnx"] = "auto"
    """``onnx``: the model's ONNX export on onnxruntime (CPU; ``pip install fusiond[onnx]``);
    ``auto``: onnx on a CPU when onnxruntime is installed (3-5x faster here), else torch."""
    threads: int = Field(0, ge=0, le=1024)
    """Threads for one forward pass; 0 takes the cores the ingest workers leave."""

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu") and not value.startswith("cuda"):
            msg = "must be auto, cpu or cuda[:N]"
            raise ValueError(msg)
        return value


class WindowSection(_Section):
    """``[window]``: window length, hop and how long to wait for late samples."""

    length_ms: float = Field(1000.0, gt=0)
    hop_ms: float = Field(500.0, gt=0)
    lateness_ms: float = Field(300.0, ge=0)
    min_coverage: float = Field(0.5, gt=0, le=1)

    def to_config(self) -> WindowConfig:
        """The aligner's view, in nanoseconds."""
        return WindowConfig(
            length_ns=round(self.length_ms * 1e6),
            hop_ns=round(self.hop_ms * 1e6),
            lateness_ns=round(self.lateness_ms * 1e6),
            min_coverage=self.min_coverage,
        )

    def with_buffer(self, ingest: IngestSection) -> WindowConfig:
        """:meth:`to_config` with the per-stream byte bound of ``[ingest]``."""
        config = self.to_config()
        return replace(config, max_bytes=round(ingest.max_stream_buffer_mb * 2**20))


class SourceSection(BaseModel):
    """``[rigs.R.sources.S]``: ``kind``, the modality it feeds, then the kind's options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str = ""
    modality: str | None = None
    external: bool = False
    """Published by a process the daemon does not start (``fusiond source`` on a sensor host)."""
    restart_max_s: float = Field(30.0, gt=0)
    max_message_rate: float | None = Field(None, gt=0, le=1_000_000)
    """Messages per second this stream may send; ``ingest.max_message_rate`` when unset."""

    @model_validator(mode="after")
    def _kind_or_external(self) -> SourceSection:
        if self.external and not self.modality:
            msg = "an external source needs its modality (the daemon starts nothing to ask)"
            raise ValueError(msg)
        if not self.external and not self.kind:
            msg = "kind is required (or external = true, with a modality)"
            raise ValueError(msg)
        if self.external and self.model_extra:
            msg = f"an external source takes no kind options (got {sorted(self.model_extra)})"
            raise ValueError(msg)
        return self

    @property
    def options(self) -> dict[str, Any]:
        """The keys left for the kind's own config."""
        return dict(self.model_extra or {})


class RigSection(_Section):
    """``[rigs.R]``: one set of co-located sensors."""

    sources: dict[str, SourceSection]


class LogSection(_Section):
    """``[log]``: level and how often to print the one-line summary."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    summary_s: float = Field(5.0, gt=0)


class MetricsSection(_Section):
    """``[metrics]``: Prometheus exposition over HTTP, off unless ``listen`` is set."""

    listen: str = ""
    """``host:port`` to serve ``/metrics`` on, e.g. ``127.0.0.1:9464``."""

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if value and (not sep or not host or not port.isdigit()):
            msg = "must be host:port"
            raise ValueError(msg)
        return value


class Config(_Section):
    """The whole file."""

    bus: BusSection = BusSection()
    metrics: MetricsSection = MetricsSection()
    ingest: IngestSection = IngestSection()
    runtime: RuntimeSection = RuntimeSection()
    model: ModelSection
    window: WindowSection = WindowSection()
    log: LogSection = LogSection()
    rigs: dict[str, RigSection]
    base_dir: Path = Path(".")

    def message_rates(self) -> dict[tuple[str, str], float]:
        """The sources that set their own ``max_message_rate``: ``(rig, stream) -> rate``."""
        return {(rig, name): s.max_message_rate for rig, section in self.rigs.items()
                for name, s in section.sources.items() if s.max_message_rate is not None}  # fmt: skip

    def source_options(self, registry: SourceRegistry) -> dict[tuple[str, str], SourceConfig]:
        """Every source's options validated by its kind (raises ConfigError)."""
        out = {}
        for rig, section in self.rigs.items():
            for name, source in section.sources.items():
                if source.external:
                    continue
                path = f"rigs.{rig}.sources.{name}"
                out[rig, name] = validate_source(registry, source, path)
        return out


def validate_source(registry: SourceRegistry, source: SourceSection, path: str) -> SourceConfig:
    """One source's options, validated against its kind's ``Config``."""
    cls = registry.get(source.kind)
    if cls is None:
        known = ", ".join(registry) or "none"
        msg = f"unknown source kind {source.kind!r} (known: {known})"
        raise ConfigError(msg, path=f"{path}.kind")
    try:
        return cls.Config.model_validate(source.options)
    except ValidationError as exc:
        raise config_error(exc, prefix=path) from None


def config_error(exc: ValidationError, prefix: str = "", source: str = "") -> ConfigError:
    lines = []
    for error in exc.errors():
        where = ".".join([prefix, *map(str, error["loc"])] if prefix else map(str, error["loc"]))
        if error["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key (value {error['input']!r})")
        elif error["type"] == "missing":
            lines.append(f"{where}: required key is missing")
        else:
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {message} (got {error['input']!r})")
    where = f"{source}: " if source else ""
    return ConfigError(where + "; ".join(lines))


def _check_names(data: dict[str, Any]) -> None:
    rigs = data.get("rigs")
    if not isinstance(rigs, dict):
        return
    for rig, section in rigs.items():
        if not NAME_RE.match(rig):
            msg = f"rig name must be letters, digits, _ or - (got {rig!r})"
            raise ConfigError(msg, path=f"rigs.{rig}")
        sources = section.get("sources", {}) if isinstance(section, dict) else {}
        for name in sources if isinstance(sources, dict) else ():
            if not NAME_RE.match(name):
                msg = f"source name must be letters, digits, _ or - (got {name!r})"
                raise ConfigError(msg, path=f"rigs.{rig}.sources.{name}")


def parse(data: dict[str, Any], base_dir: Path, source: str = "<config>") -> Config:
    """Validate already-parsed TOML data."""
    if "base_dir" in data:
        msg = f"base_dir: unknown key (value {data['base_dir']!r})"
        raise ConfigError(msg, source=source)
    try:
        _check_names(data)
    except ConfigError as exc:
        raise ConfigError(str(exc), source=source) from None
    try:
        config = Config.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        raise config_error(exc, source=source) from None
    model = config.model.model_copy(update={"path": base_dir / config.model.path})
    security = config.bus.security
    paths = {k: base_dir / v for k in ("server_key", "clients", "client_key") if (v := getattr(security, k))}
    bus = config.bus.model_copy(update={"security": security.model_copy(update=paths)})
    return config.model_copy(update={"model": model, "bus": bus})


def load(path: Path) -> Config:
    """Read and validate a config file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        msg = f"config file not found: {path}"
        raise ConfigError(msg) from None
    except OSError as exc:
        msg = f"cannot read config file {path}: {exc.strerror}"
        raise ConfigError(msg) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = f"not valid TOML: {exc}"
        raise ConfigError(msg, source=str(path)) from None
    return parse(data, path.resolve().parent, source=str(path))
