"""Everything a config needs before anything starts, checked: its sources' options, the
model (loaded, and with ``serve``, warmed as the server will), the bus keys and ports.

Used by the daemon at start and on reload, and by ``fusiond check-config``, so the two
agree on what may start.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fusiond.bus.security import Keys, listing, load_pair
from fusiond.config import Config
from fusiond.errors import ConfigError, FusiondError, ModelError
from fusiond.models.card import ModelCard, read_card
from fusiond.models.runner import pick_device
from fusiond.models.serving import resolve_runtime
from fusiond.outputs.base import OutputConfig
from fusiond.pipeline import resolve_streams
from fusiond.plugin import Plugins
from fusiond.publish import reject_thresholds
from fusiond.runtime.engines import ENGINES, engine_class, engine_name
from fusiond.sources.base import SourceConfig

__all__ = ["Prepared", "daemon_keys", "port_problems", "prepare"]


def daemon_keys(config: Config) -> Keys:
    """The daemon's CURVE keys: its server pair and its own sources' client pair."""
    security = config.bus.security
    if security.mode != "curve":
        return Keys()
    assert security.server_key is not None and security.client_key is not None
    public, secret = load_pair(security.server_key, "bus.security.server_key")
    if secret is None:
        msg = f"{security.server_key} holds no secret key: give the NAME.key_secret file"
        raise ConfigError(msg, path="bus.security.server_key")
    client_public, client_secret = load_pair(security.client_key, "bus.security.client_key")
    if client_secret is None:
        msg = f"{security.client_key} holds no secret key: give the NAME.key_secret file"
        raise ConfigError(msg, path="bus.security.client_key")
    assert security.clients is not None
    if client_public.decode() not in {key for _, key, _ in listing(security.clients)}:
        msg = (
            f"the public half of {security.client_key} is not in {security.clients}: the daemon's "
            "own sources would be refused"
        )
        raise ConfigError(msg, path="bus.security.client_key")
    return Keys(public, secret, client_public, client_secret)


@dataclass(frozen=True)
class Prepared:
    """What a config needs before anything starts, every part checked."""

    options: dict[tuple[str, str], SourceConfig]
    outputs: dict[str, OutputConfig]
    card: ModelCard
    """The model's card (read without torch; the server loads the weights)."""
    streams: dict[tuple[str, str], str]
    problems: list[str]
    """What the source kinds see wrong without opening their devices (a missing file, say)."""
    warnings: list[str]
    """What may well be meant but is worth a line (a model input no source of a rig feeds)."""


def prepare(
    config: Config, plugins: Plugins, *, serve: bool = False, engines: Mapping[str, Any] = ENGINES
) -> Prepared:
    """Check ``config`` through and through; every error names the file and the TOML path.

    Used by the daemon at start and on reload, and by ``fusiond check-config``. With
    ``serve``, the model is also loaded exactly as the inference server will load it and
    given a warm-up batch: weights that do not fit the model, or a runtime that cannot run
    it, are one clear line before the daemon starts anything, not a server that fails to
    start for ever.
    """
    options = config.source_options(plugins.sources)
    outputs = config.output_options(plugins.outputs)
    engine_class(engine_name(config), engines)  # an engine the table lacks: one clear line
    try:
        card = read_card(config.model.path, plugins.kinds)
    except ModelError as exc:
        raise config.error(str(exc), "model.path") from None
    try:
        if card.format == "checkpoint":  # an ONNX file runs on onnxruntime's providers, not on torch's device
            pick_device(config.model.device)
    except ModelError as exc:
        raise config.error(str(exc), "model.device") from None
    try:
        served_by = resolve_runtime(config.model.runtime, config.model.device, card)
    except ModelError as exc:
        raise config.error(str(exc), "model.runtime") from None
    if served_by == "onnx" and config.model.providers != "auto" and importlib.util.find_spec("onnxruntime"):
        from fusiond.models.onnx import choose_providers

        try:
            choose_providers(config.model.providers)
        except ModelError as exc:
            raise config.error(str(exc), "model.providers") from None
    streams = resolve_streams(config, plugins.sources, card.spec, card.name)
    m, classifier = config.model, card.task == "classification"
    try:
        reject_thresholds(card.metrics, m.reject and classifier, m.reject_confidence, m.reject_disagreement)
    except ValueError as exc:
        raise config.error(str(exc), "model.reject") from None
    if serve:
        _try_serving(config, plugins)
    problems = []
    for (rig, name), source_options in options.items():
        cls = plugins.sources.get(config.rigs[rig].sources[name].kind)
        assert cls is not None  # source_options checked the kind
        for problem in cls.check(source_options, config.base_dir):
            problems.append(f"rigs.{rig}.sources.{name}.{problem}")
    trained = card.window.get("length_ns")
    if trained is not None and trained != round(config.window.length_ms * 1e6):
        problems.append(
            f"window.length_ms: {config.window.length_ms:g}, but model {card.name} was "
            f"trained on {trained / 1e6:g} ms windows: its scores will not hold"
        )
    labelled = card.task != "regression"  # events follow a classifier's or an anomaly model's label
    warnings = [
        f"{key}: model {card.name} is a {card.task} model; this applies to {to} only"
        for key, on, to in (
            ("model.reject", m.reject and not classifier, "classifiers"),
            ("events.enabled", config.events.enabled and not labelled, "classifiers and anomaly models"),
            (
                "model.anomaly_threshold",
                m.anomaly_threshold is not None and card.task != "anomaly",
                "anomaly models",
            ),
        )
        if on
    ]
    if card.format == "onnx" and config.model.device not in ("auto", "cpu"):
        warnings.append(
            f"model.device: {config.model.device!r} is torch's; an ONNX model runs where "
            'model.providers says (device = "cpu" keeps it on the CPU)'
        )
    if not card.mask:
        warnings.append(
            f"model.path: model {card.name} takes no mask: a missing modality reaches it as zeros "
            "(its predictions still list it as missing)"
        )
    for rig, section in config.rigs.items():
        fed = {streams[rig, name] for name in section.sources}
        for modality in sorted(set(card.spec.modalities) - fed):
            warnings.append(
                f"rigs.{rig}: no source for the model's {modality!r} input: it is masked in every window"
            )
    for name, output_options in outputs.items():
        output_cls = plugins.outputs.get(config.outputs[name].kind)
        assert output_cls is not None  # output_options checked the kind
        problems += [f"outputs.{name}.{problem}" for problem in output_cls.check(output_options)]
    return Prepared(options, outputs, card, streams, problems, warnings)


def _try_serving(config: Config, plugins: Plugins) -> None:
    from fusiond.runtime.server import load_serving

    model = config.model
    try:
        load_serving(
            model.path,
            plugins,
            model.device,
            model.runtime,
            model.threads,
            2,
            Counter(),
            anomaly=model.anomaly_threshold,
            providers=model.providers,
        )
    except FusiondError as exc:
        msg = f"cannot serve this model: {exc}"
        raise config.error(msg, "model.path") from None
    except Exception as exc:  # noqa: BLE001 (whatever loading a foreign model raises: said in one line)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        msg = f"cannot serve this model: {type(exc).__name__}: {first}"
        raise config.error(msg, "model.path") from None


def port_problems(config: Config) -> list[str]:
    """The TCP ports the daemon would bind that are taken now, one line each (the daemon
    itself refuses to start on them; ``check-config`` says so before)."""
    import socket

    wanted = [(key, getattr(config.bus, key)) for key in ("publish", "subscribe", "control")]
    wanted = [(f"bus.{key}", e.removeprefix("tcp://")) for key, e in wanted if e.startswith("tcp://")]
    if config.metrics.listen:
        wanted.append(("metrics.listen", config.metrics.listen))
    out = []
    for key, address in wanted:
        host, _, port = address.rpartition(":")
        if port == "*":
            continue
        with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host.strip("[]").replace("*", "") or "0.0.0.0", int(port)))
            except OSError as exc:
                out.append(f"{key}: cannot bind {address}: {exc.strerror} (is another fusiond running?)")
    return out
