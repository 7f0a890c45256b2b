"""The daemon's config: TOML -> typed, validated objects.

Validation is strict: a number is never read from a string (``hop_ms = "500"``), nor a bool
from a string or a number (``loop = "yes"``); an integer is accepted where a float is
meant. Unknown keys are errors with a "did you mean" when a known key is close, and every
error names the file, the TOML path and the bad value. Source options are checked in a
second pass, against the ``Config`` model of the source's kind. Relative paths are taken
from the config file's folder.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import types
import typing
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fusiond.align.windows import WindowConfig
from fusiond.bus.sockets import DEFAULT_CONTROL, DEFAULT_PUBLISH, DEFAULT_SUBSCRIBE
from fusiond.bus.wire import NAME_RE
from fusiond.errors import ConfigError
from fusiond.events import EventsSection
from fusiond.ingest import Limits
from fusiond.outputs.base import OutputConfig
from fusiond.plugin.registry import OutputRegistry, SourceRegistry
from fusiond.sources.base import SourceConfig
from fusiond.strict import Strict

__all__ = [
    "BusSection",
    "Config",
    "config_error",
    "IngestSection",
    "load",
    "OutputSection",
    "validate_output",
    "LogSection",
    "MetricsSection",
    "ModelSection",
    "parse",
    "RigSection",
    "RuntimeSection",
    "SecuritySection",
    "SourceSection",
    "validate",
    "validate_source",
    "WindowSection",
]


class SecuritySection(Strict):
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
                msg = f'mode = "curve" needs {", ".join(missing)}'
                raise ValueError(msg)
        return self


class BusSection(Strict):
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
                    msg = (
                        f"{key} = {endpoint!r} is reachable from other hosts with no authentication: "
                        'set [bus.security] mode = "curve", or allow_insecure = true'
                    )
                    raise ValueError(msg)
        return self

    @field_validator("publish", "subscribe", "control")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not value.startswith(("tcp://", "ipc://", "inproc://")):
            msg = "must be a tcp://, ipc:// or inproc:// endpoint"
            raise ValueError(msg)
        if value.startswith("tcp://"):
            port = value.removeprefix("tcp://").rpartition(":")[2]
            if ":" not in value.removeprefix("tcp://") or not (port == "*" or port.isdigit()):
                msg = "a tcp:// endpoint needs a port (tcp://HOST:PORT)"
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


class IngestSection(Strict):
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


class RuntimeSection(Strict):
    """``[runtime]``: where the pipeline runs (docs/operations.md, "Scaling out")."""

    engine: str = Field("local", pattern=r"^[a-z][a-z0-9_]{0,31}$")
    """``local`` (threads with one worker, else processes), ``threads``, ``processes`` or
    ``ray`` (:data:`fusiond.runtime.engines.ENGINES`; checked when the daemon prepares)."""
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
            msg = 'must be between 1 and 256, or "auto"'
            raise ValueError(msg)
        return value

    def worker_count(self, rigs: int) -> int:
        """Workers to start: ``auto`` is the core count; never more than there are rigs."""
        wanted = (os.cpu_count() or 1) if self.workers == "auto" else int(self.workers)
        return max(1, min(wanted, rigs))


class ModelSection(Strict):
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
    reject: bool = False
    """Publish ``label = "unknown"`` (scores kept) for a window the model is unsure of:
    its top score under ``reject_confidence``, or its modalities disagreeing beyond
    ``reject_disagreement``. Both default to what training chose on validation windows."""
    reject_confidence: float | None = Field(None, ge=0, le=1)
    reject_disagreement: float | None = Field(None, ge=0, le=1)
    providers: Literal["auto"] | list[str] = "auto"
    """onnxruntime's execution providers, in order of preference: ``auto`` takes CUDA when
    onnxruntime lists it (onnxruntime-gpu), else OpenVINO when onnxruntime-openvino is
    installed, else the CPU (with ``device = "cpu"``: the CPU); or name them
    (``["TensorrtExecutionProvider", "CUDAExecutionProvider"]``).
    The CPU is always last: what a provider cannot run falls to it."""
    anomaly_threshold: float | None = Field(None, gt=0, le=1e12)
    """An anomaly model's score above which a window is an anomaly, whatever is missing;
    unset: the model's own, chosen in training for its false-alarm rate with every
    modality and with each one missing."""

    @field_validator("providers", mode="before")
    @classmethod
    def _providers_given(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if not isinstance(value, list):
            msg = 'must be "auto" or a list of names like "CUDAExecutionProvider"'
            raise ValueError(msg)  # one line, not the union's two
        return value

    @field_validator("providers")
    @classmethod
    def _providers(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and (
            not 1 <= len(value) <= 8
            or not all(re.fullmatch(r"[A-Za-z]{1,40}ExecutionProvider", p) for p in value)
        ):
            msg = 'must be "auto" or a list of 1 to 8 names like "CUDAExecutionProvider"'
            raise ValueError(msg)
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d{1,2})?", value):
            msg = "must be auto, cpu or cuda[:N]"
            raise ValueError(msg)
        return value


MANY_RIGS = 64
"""Rigs from which aligned windows are warned about: with the demo's model on 2 cores,
a burst of this many closes puts p99 close -> publish at about 100 ms (against 19 ms
staggered: ``python bench/bench_scale.py --rigs 64 --grid aligned,staggered``)."""


class WindowSection(Strict):
    """``[window]``: window length, hop and how long to wait for late samples."""

    length_ms: float = Field(1000.0, ge=1, le=3_600_000)
    hop_ms: float = Field(500.0, ge=1, le=3_600_000)
    """At most ``length_ms``: a longer hop would leave samples that no window ever sees."""
    lateness_ms: float = Field(300.0, ge=0, le=600_000)
    """How long a window waits for late samples; every prediction lags by at least this much,
    so more than ten minutes is refused as a mistake."""
    min_coverage: float = Field(0.5, gt=0, le=1)
    stagger: bool = False
    """Shift each rig's windows by a phase of its own within the hop, so that many rigs do
    not close theirs at the same instant (docs/operations.md, "Many rigs")."""

    @model_validator(mode="after")
    def _hop(self) -> WindowSection:
        if self.hop_ms > self.length_ms:
            msg = (
                f"hop_ms ({self.hop_ms:g}) is longer than length_ms ({self.length_ms:g}): "
                "the samples between windows would never be seen"
            )
            raise ValueError(msg)
        return self

    def warnings(self) -> list[str]:
        """Legal but probably unintended settings, one line each."""
        out = []
        if self.lateness_ms > 10 * self.length_ms:
            out.append(
                f"window.lateness_ms = {self.lateness_ms:g}: every prediction waits at least "
                f"{self.lateness_ms / 1000:g} s, over ten windows"
            )
        if self.length_ms / self.hop_ms > 100:
            out.append(
                f"window.hop_ms = {self.hop_ms:g}: each sample is in "
                f"{self.length_ms / self.hop_ms:.0f} windows"
            )
        return out

    def to_config(self) -> WindowConfig:
        """The aligner's view, in nanoseconds."""
        return WindowConfig(
            length_ns=round(self.length_ms * 1e6),
            hop_ns=round(self.hop_ms * 1e6),
            lateness_ns=round(self.lateness_ms * 1e6),
            min_coverage=self.min_coverage,
            stagger=self.stagger,
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


class OutputSection(BaseModel):
    """``[outputs.N]``: ``kind``, then the kind's options (docs/outputs.md)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str
    queue: int = Field(1000, ge=1, le=1_000_000)
    """Predictions the bridge holds while its output falls behind (past that, the newest
    are dropped and counted)."""
    restart_max_s: float = Field(30.0, gt=0)

    @property
    def options(self) -> dict[str, Any]:
        """The kind's own options (everything but the fields above)."""
        return dict(self.model_extra or {})


class RigSection(Strict):
    """``[rigs.R]``: one set of co-located sensors."""

    sources: dict[str, SourceSection]


class LogSection(Strict):
    """``[log]``: level and how often to print the one-line summary."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    summary_s: float = Field(5.0, gt=0)


class MetricsSection(Strict):
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


class Config(Strict):
    """The whole file."""

    bus: BusSection = BusSection()
    metrics: MetricsSection = MetricsSection()
    ingest: IngestSection = IngestSection()
    runtime: RuntimeSection = RuntimeSection()
    model: ModelSection
    window: WindowSection = WindowSection()
    log: LogSection = LogSection()
    rigs: dict[str, RigSection]
    outputs: dict[str, OutputSection] = {}
    """Where predictions go besides the bus, each in a bridge process of its own."""
    events: EventsSection = EventsSection()
    base_dir: Path = Path(".")
    source: str = "<config>"
    """The file it was read from, for error messages."""

    @model_validator(mode="after")
    def _endpoints(self) -> Config:
        seen: dict[str, str] = {}
        for key in ("publish", "subscribe", "control"):
            endpoint = getattr(self.bus, key)
            if endpoint in seen:
                msg = f"bus.{key} = {endpoint!r} is also bus.{seen[endpoint]}: each needs its own address"
                raise ValueError(msg)
            seen[endpoint] = key
        if self.metrics.listen:
            port = self.metrics.listen.rpartition(":")[2]
            for endpoint, key in seen.items():
                if endpoint.startswith("tcp://") and endpoint.rpartition(":")[2] == port:
                    msg = f"metrics.listen = {self.metrics.listen!r} takes the port of bus.{key} ({endpoint})"
                    raise ValueError(msg)
        return self

    def warnings(self) -> list[str]:
        """Settings that are legal but probably not meant (logged at start, shown by check-config)."""
        out = self.window.warnings()
        if len(self.rigs) >= MANY_RIGS and not self.window.stagger:
            out.append(
                f"window.stagger = false with {len(self.rigs)} rigs: they all close their windows "
                "at the same instant, and the last in each burst waits for the others; "
                'stagger = true spreads them over the hop (docs/operations.md, "Many rigs")'
            )
        return out

    def error(self, message: str, path: str = "") -> ConfigError:
        """A :class:`ConfigError` about this config, naming its file."""
        return ConfigError(message, path=path, source=self.source)

    def message_rates(self) -> dict[tuple[str, str], float]:
        """The sources that set their own ``max_message_rate``: ``(rig, stream) -> rate``."""
        return {
            (rig, name): s.max_message_rate
            for rig, section in self.rigs.items()
            for name, s in section.sources.items()
            if s.max_message_rate is not None
        }

    def output_options(self, registry: OutputRegistry) -> dict[str, OutputConfig]:
        """Every output's options validated by its kind (raises ConfigError)."""
        out = {}
        for name, output in self.outputs.items():
            options = validate_output(registry, output, f"outputs.{name}", self.source)
            unknown = sorted(set(options.rigs) - set(self.rigs))
            if unknown:
                msg = f"no such rig(s): {', '.join(unknown)} (known: {', '.join(self.rigs)})"
                raise ConfigError(msg, path=f"outputs.{name}.rigs", source=self.source)
            out[name] = options
        return out

    def source_options(self, registry: SourceRegistry) -> dict[tuple[str, str], SourceConfig]:
        """Every source's options validated by its kind (raises ConfigError)."""
        out = {}
        for rig, section in self.rigs.items():
            for name, source in section.sources.items():
                if source.external:
                    continue
                path = f"rigs.{rig}.sources.{name}"
                out[rig, name] = validate_source(registry, source, path, self.source)
        return out


_Model = TypeVar("_Model", bound=BaseModel)


def validate(
    model: type[_Model],
    data: dict[str, Any],
    prefix: str = "",
    source: str = "",
    context: dict[str, Any] | None = None,
) -> _Model:
    """``data`` (parsed TOML) checked against ``model`` strictly; errors name ``prefix.key``.

    Validating as JSON in strict mode refuses every string-to-number and string-to-bool
    coercion, while a path may still be written as a string. ``context`` reaches the
    model's validators (a recipe's: the modality kinds).
    """
    text = json.dumps(data, default=str)
    try:
        return model.model_validate_json(text, strict=True, context=context)
    except ValidationError as exc:
        raise config_error(exc, model, prefix=prefix, source=source) from None


def validate_output(
    registry: OutputRegistry, output: OutputSection, path: str, file: str = ""
) -> OutputConfig:
    """One output's options, validated against its kind's ``Config``."""
    cls = registry.get(output.kind)
    if cls is None:
        known = ", ".join(registry) or "none (pip install 'fusiond[mqtt]' adds mqtt)"
        msg = f"unknown output kind {output.kind!r} (known: {known})"
        raise ConfigError(msg, path=f"{path}.kind", source=file)
    return validate(cls.Config, output.options, prefix=path, source=file)


def validate_source(
    registry: SourceRegistry, source: SourceSection, path: str, file: str = ""
) -> SourceConfig:
    """One source's options, validated against its kind's ``Config``."""
    cls = registry.get(source.kind)
    if cls is None:
        known = ", ".join(registry) or "none"
        near = difflib.get_close_matches(source.kind, list(registry), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        msg = f"unknown source kind {source.kind!r} (known: {known}){hint}"
        raise ConfigError(msg, path=f"{path}.kind", source=file)
    return validate(cls.Config, source.options, prefix=path, source=file)


_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a table",
    "model_type": "a table",
    "list_type": "an array",
    "tuple_type": "an array",
    "path_type": "a path",
}
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def config_error(
    exc: ValidationError, model: type[BaseModel] | None = None, *, prefix: str = "", source: str = ""
) -> ConfigError:
    """One line per problem, each naming the TOML path and the value."""
    expected: dict[str, list[str]] = {}  # a union's members report one error each: merged
    got: dict[str, Any] = {}
    lines: dict[str, str] = {}
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        if model is not None and len(loc) > 1 and _is_tag(loc[-1]) and not _known_keys(model, loc[:-1]):
            loc = loc[:-1]
        where = ".".join([prefix, *loc] if prefix else loc)
        kind, value, ctx = error["type"], error["input"], error.get("ctx", {})
        if kind in _EXPECTED or kind == "literal_error":
            what = _EXPECTED.get(kind) or str(ctx.get("expected", "")).replace("'", '"')
            expected.setdefault(where, []).append(what)
            got[where] = value
            lines[where] = ""
            continue
        if kind == "extra_forbidden":
            near = difflib.get_close_matches(loc[-1], _known_keys(model, loc[:-1]), n=1) if model else []
            hint = f"; did you mean {near[0]!r}?" if near else ""
            line = f"unknown key (value {value!r}){hint}"
        elif kind == "missing":
            line = "required key is missing"
        elif kind in _BOUNDS:
            bound = next(iter(ctx.values()))
            bound = f"{bound:g}" if isinstance(bound, float) else bound
            line = f"must be {_BOUNDS[kind]} {bound} (got {value!r})"
        elif isinstance(value, dict):  # a check across the table's keys: its message says it all
            line = error["msg"].removeprefix("Value error, ")
        else:
            line = f"{error['msg'].removeprefix('Value error, ')} (got {value!r})"
        lines[where] = line
    for where, whats in expected.items():
        value = got[where]
        lines[where] = f"expected {' or '.join(whats)}, got {value!r} ({_toml_type(value)})"
    text = "; ".join(f"{where}: {line}" if where else line for where, line in lines.items())
    return ConfigError(text, source=source)


def _is_tag(part: str) -> bool:
    return part in ("int", "float", "str", "bool", "none") or part.startswith(("literal[", "function-"))


def _toml_type(value: Any) -> str:
    names = {
        bool: "a bool",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }
    return names.get(type(value), type(value).__name__)


def _known_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The keys the table at ``loc`` takes (empty when ``loc`` is not a table of ``model``)."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            if field is None:
                return []
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        else:
            return []
        if typing.get_origin(current) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(current) if a is not type(None)]
            current = members[0] if len(members) == 1 else None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _check_names(data: dict[str, Any]) -> None:
    outputs = data.get("outputs")
    for name in outputs if isinstance(outputs, dict) else ():
        if not NAME_RE.match(name):
            msg = f"output name must be letters, digits, _ or - (got {name!r})"
            raise ConfigError(msg, path=f"outputs.{name}")
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
    for reserved in ("base_dir", "source"):
        if reserved in data:
            msg = f"{reserved}: unknown key (value {data[reserved]!r})"
            raise ConfigError(msg, source=source)
    try:
        _check_names(data)
    except ConfigError as exc:
        raise ConfigError(str(exc), source=source) from None
    config = validate(Config, {**data, "base_dir": str(base_dir), "source": source}, source=source)
    model = config.model.model_copy(update={"path": base_dir / config.model.path})
    security = config.bus.security
    paths = {k: base_dir / v for k in ("server_key", "clients", "client_key") if (v := getattr(security, k))}
    bus = config.bus.model_copy(update={"security": security.model_copy(update=paths)})
    return config.model_copy(update={"model": model, "bus": bus})


def _toml_error(exc: tomllib.TOMLDecodeError, text: str) -> str:
    """The parser's message, with the line it points at: "Cannot overwrite a value" alone
    does not say which key was given twice."""
    found = re.search(r"at line (\d+)", str(exc))
    lines = text.splitlines()
    if found is None or not 0 < int(found.group(1)) <= len(lines):
        return str(exc)
    line = lines[int(found.group(1)) - 1].strip()
    key = line.split("=", 1)[0].strip() if "=" in line else line
    again = f" (the key {key!r} is given twice?)" if "overwrite" in str(exc) else ""
    return f"{exc}: {line[:120]!r}{again}"


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
        msg = f"not valid TOML: {_toml_error(exc, text)}"
        raise ConfigError(msg, source=str(path)) from None
    return parse(data, path.resolve().parent, source=str(path))
