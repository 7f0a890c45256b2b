from __future__ import annotations

import json
import types

import numpy as np
import pytest

from fusiond import testing
from fusiond.bus.wire import decode_sample, encode_sample
from fusiond.errors import PluginError
from fusiond.plugin import hookimpl, load_plugins
from fusiond.sources import Source

from .helpers import fusiond


def test_the_plugin_table_has_column_headers():
    lines = fusiond("plugins").stdout.splitlines()
    assert lines[0].split() == ["TYPE", "NAME", "MODALITY", "FROM"]
    assert any(line.split()[:2] == ["source", "camera"] for line in lines[1:])


def test_builtin_kinds_come_from_the_entry_point_group():
    result = fusiond("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {(r["type"], r["name"]): r for r in json.loads(result.stdout)}
    for kind, module in [("camera", "camera"), ("audiofile", "audiofile"), ("csvfile", "numeric")]:
        assert rows["source", kind]["from"].startswith("fusiond ")
        assert rows["source", kind]["from"].endswith(f"(fusiond_plugins.{module})")
    assert ("encoder", "logmel_cnn") in rows


def test_a_plugin_registers_through_the_same_hook():
    plugins = load_plugins(extra=[testing])
    assert plugins.sources.get("fake") is testing.FakeSource
    assert {"camera", "fake"} <= set(plugins.sources)


def test_a_misspelled_hook_fails_at_start():
    bad = types.ModuleType("bad_plugin")

    @hookimpl
    def fusiond_add_source(registry):  # missing the final s
        pass

    bad.fusiond_add_source = fusiond_add_source
    with pytest.raises(PluginError, match="fusiond does not define"):
        load_plugins(extra=[bad])


def test_registries_reject_what_they_cannot_use():
    class NoKind(Source):
        kind = "Not A Name"
        Config = testing.FakeConfig

    bad = types.ModuleType("clash")

    @hookimpl
    def fusiond_add_sources(registry):
        registry.add(NoKind)

    bad.fusiond_add_sources = fusiond_add_sources
    with pytest.raises(PluginError, match="must be a lowercase name"):
        load_plugins(extra=[bad])


def test_bus_pair_carries_frames():
    with testing.bus_pair(b"s/") as (pub, sub):
        pub.send_multipart(
            encode_sample(
                rig="r",
                stream="x",
                modality="imu",
                seq=0,
                t_ns=0,
                t_pub_ns=0,
                rate_hz=1.0,
                data=np.ones((2, 2), np.float32),
            )
        )
        assert sub.poll(2000)
        assert decode_sample(sub.recv_multipart()).data.sum() == 4


def test_a_client_program_loads_neither_torch_nor_opencv_nor_the_config_machinery():
    import subprocess
    import sys

    code = (
        "import sys, fusiond.client; "
        "print(sorted(m for m in ('torch', 'cv2', 'pydantic', 'pluggy', 'mcap') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_everyday_commands_start_without_torch(tmp_path):
    """status, echo, hz, plugins, info and keys import neither torch nor the model code."""
    import json
    import subprocess
    import sys

    from mcap.writer import Writer

    with (tmp_path / "r.mcap").open("wb") as f:
        writer = Writer(f)
        writer.start()
        channel = writer.register_channel("s/demo/imu", "fusiond", writer.register_schema("", "", b""))
        writer.add_message(channel, log_time=1, data=b"x", publish_time=1)
        writer.finish()
    nowhere = "tcp://127.0.0.1:9"  # discard port: nothing answers there
    commands = [
        ["status", "--connect", nowhere, "--timeout", "0.1"],
        ["echo", "--connect", nowhere, "--timeout", "0.1"],
        ["hz", "s/demo/imu", "--connect", nowhere, "--duration", "0.1"],
        ["plugins", "--json"],
        ["info", str(tmp_path / "r.mcap"), "--json"],
        ["keys", "generate", "reader", "--dir", str(tmp_path / "keys")],
        ["keys", "list", "--dir", str(tmp_path / "keys")],
    ]
    code = (
        "import json, sys; from fusiond.cli import main; rc = main(json.loads(sys.argv[1])); "
        "print('LOADED', json.dumps(sorted(m for m in ('torch', 'cv2', 'fusiond.models', 'onnxruntime') "
        "if m in sys.modules)), rc)"
    )
    for argv in commands:
        result = subprocess.run(
            [sys.executable, "-c", code, json.dumps(argv)], capture_output=True, text=True
        )
        last = result.stdout.strip().splitlines()[-1]
        assert last.startswith("LOADED "), (argv, result.stdout, result.stderr)
        loaded, rc = last.removeprefix("LOADED ").rsplit(" ", 1)
        assert not {"torch", "fusiond.models"} & set(json.loads(loaded)), (argv, loaded)
        assert rc == ("1" if argv[0] in ("status", "echo") else "0"), (argv, result.stderr)
    listed = subprocess.run(
        [sys.executable, "-m", "fusiond", "plugins", "--json"], capture_output=True, text=True
    )
    encoders = {row["name"] for row in json.loads(listed.stdout) if row["type"] == "encoder"}
    assert {"frames_cnn", "logmel_cnn", "series_cnn", "vector_mlp"} <= encoders


def test_builtin_encoder_and_fusion_references_resolve_to_the_classes():
    from fusiond.models import encoders, fusion
    from fusiond.plugin import load_plugins

    plugins = load_plugins()
    types, fusions = plugins.encoders.types, plugins.fusions.types
    assert types["frames_cnn"] is encoders.FramesEncoder and types["text_gru"] is encoders.TextEncoder
    assert fusions["attention"] is fusion.AttentionFusion and fusions["early"] is fusions["concat"]
    for name, cls in {**types, **fusions}.items():
        assert plugins.origin(cls).startswith("fusiond "), name


def test_every_package_of_the_source_tree_is_installed():
    """A pip install (not editable) ships exactly the packages pyproject.toml lists."""
    import tomllib

    from .helpers import ROOT

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fusiond").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)


def test_tiny_model_builds_with_a_plugins_fusion(tmp_path):
    """The registries a plugin adds to are the ones models are built from: a fusion that only
    a plugin provides can be named in a test model, and the checkpoint serves with it."""
    import torch

    from fusiond.models import load
    from fusiond.models.fusion import LateFusion
    from fusiond.models.serving import make_runner

    class MaxFusion(LateFusion):
        """Late fusion under a plugin's own name."""

    plugin = types.SimpleNamespace(
        fusiond_add_fusions=hookimpl(lambda registry: registry.add("maxish", MaxFusion))
    )
    plugins = load_plugins(extra=[plugin])
    with pytest.raises(Exception, match="unknown fusion strategy 'maxish'"):
        testing.tiny_model(tmp_path / "no.pt", fusion="maxish", parts=load_plugins().parts)
    testing.tiny_model(tmp_path / "m.pt", fusion="maxish", parts=plugins.parts)
    checkpoint = load(tmp_path / "m.pt")
    assert checkpoint.fusion["name"] == "maxish"
    model = checkpoint.build(plugins.parts).eval()
    assert isinstance(model.fusion, MaxFusion)
    x = {"imu": torch.randn(4, *checkpoint.spec.modalities["imu"].shape)}
    with torch.inference_mode():
        scores = model(x, torch.ones(4, 1, dtype=torch.bool))
    assert scores.shape == (4, 2) and torch.isfinite(scores).all()
    assert make_runner(checkpoint, plugins.parts, runtime="torch").model.fusion.__class__ is MaxFusion


class _Pressure:
    """A plugin adding a modality kind of its own (a vector of readings)."""

    from fusiond.align.fit import VectorKind

    class Kind(VectorKind):
        name = "pressure"

    @hookimpl
    def fusiond_add_modality_kinds(self, registry):
        registry.add(self.Kind)


def test_modality_kinds_belong_to_the_plugin_set_that_registered_them(tmp_path):
    """No process-wide table: a kind one plugin set adds is unknown to another, and a
    checkpoint naming it reads only with that set's registry."""
    from fusiond.align import InputSpec, ModalitySpec
    from fusiond.errors import ModelError
    from fusiond.models import load

    with_it = load_plugins(extra=[_Pressure()])
    without = load_plugins()
    assert "pressure" in with_it.kinds and "pressure" not in without.kinds
    assert {"frames", "series", "vector", "tokens"} <= set(without.kinds)  # built-ins, by the same hook
    kind = with_it.kinds.get("pressure")
    spec = InputSpec({"baro": ModalitySpec("pressure", 1, 3, kind_of=kind)})
    assert InputSpec.from_dict(spec.to_dict(), with_it.kinds) == spec
    with pytest.raises(ValueError, match=r"unknown modality kind 'pressure' \(known: frames, series"):
        InputSpec.from_dict(spec.to_dict())
    testing.tiny_model(tmp_path / "p.pt", spec, parts=with_it.parts)
    assert load(tmp_path / "p.pt", with_it.kinds).spec.modalities["baro"].kind_of is kind
    with pytest.raises(ModelError, match="unknown modality kind 'pressure'"):
        load(tmp_path / "p.pt", without.kinds)
    from fusiond.errors import ConfigError
    from fusiond.training.recipe import load_recipe

    recipe = 'name = "p"\n[inputs.baro]\nkind = "pressure"\nlength = 1\nchannels = 3\n'
    (tmp_path / "r.toml").write_text(recipe)
    assert load_recipe(tmp_path / "r.toml", with_it.kinds).spec == spec
    with pytest.raises(ConfigError, match=r"inputs\.baro.*unknown modality kind 'pressure'"):
        load_recipe(tmp_path / "r.toml", without.kinds)
