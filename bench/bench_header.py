"""Decoding a sample message's header: fusiond's decoder and its stream templates against a
typed msgspec one. Prints figures, asserts nothing.

    python bench/bench_header.py [--messages 20000] [--repeat 5]

The headers are the demo rig's own (``config.toml``'s file sources, framed as the sources
frame them: camera JPEG frames, audio blocks, IMU blocks). Three ways through each:

- ``msgpack``: ``msgpack.unpackb`` of the header frame alone (no check at all: the floor);
- ``fusiond``: :func:`fusiond.bus.wire.decode_sample_header`, every check it makes;
- ``template``: the header matched against its stream's template
  (:class:`fusiond.bus.template.HeaderTemplate`, made from the stream's first header), as
  ingest reads a header like its stream's last checked one; the share that matched is
  printed with it;
- ``msgspec`` (when ``pip install msgspec`` is there): a ``msgspec.msgpack.Decoder`` of a
  typed ``Struct`` with the same type and range checks on the common fields (version,
  type, names' types, clock, seq and times in 0..2^63-1, rate), then fusiond's own name
  checks and cached buffer layouts, as its fast path does after decoding.

Figures are microseconds per header (best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def demo_frames(count: int) -> list[list[bytes]]:
    from fusiond import config as config_mod
    from fusiond.plugin import load_plugins
    from fusiond.training.files import file_messages

    config = config_mod.load(ROOT / "config.toml")
    _, merged = file_messages(config, load_plugins())
    out = []
    for _, frames in merged:
        out.append([bytes(f) for f in frames])
        if len(out) >= count:
            break
    return out


try:
    import msgspec
except ImportError:
    msgspec = None
else:
    from fusiond.bus import wire

    Big = Annotated[int, msgspec.Meta(ge=0, le=wire.MAX_INT)]

    class Header(msgspec.Struct, forbid_unknown_fields=False):
        """The common fields, typed and ranged as decode_sample_header's fast path checks them."""

        v: tuple[int, int]
        type: Literal["sample"]
        rig: str
        stream: str
        modality: str
        clock: Literal["realtime", "monotonic"]
        seq: Big
        t_ns: Big
        t_pub_ns: Big
        rate_hz: float
        buffers: list[dict[str, Any]]


def msgspec_decoder() -> Any:
    """A typed decoder with the fast path's checks, or None without msgspec."""
    if msgspec is None:
        return None
    decoder = msgspec.msgpack.Decoder(Header)

    def decode(frames: list[bytes]) -> Any:
        h = decoder.decode(frames[1])
        if h.v[0] != wire.PROTOCOL_VERSION[0] or not (
            h.rate_hz == 0 or wire.MIN_RATE_HZ <= h.rate_hz <= wire.MAX_RATE_HZ
        ):
            raise ValueError
        if not 0 < len(h.buffers) == len(frames) - 2:
            raise ValueError
        wire._check_names(h.rig, h.stream, h.modality)
        return tuple(wire._cached_spec(b) for b in h.buffers)

    return decode


def best(fn: Any, frames: list[list[bytes]], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for f in frames:
            fn(f)
        runs.append((time.perf_counter_ns() - t0) / len(frames) / 1e3)
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import msgpack

    from fusiond.bus.template import HeaderTemplate
    from fusiond.bus.wire import decode_sample_header

    base = demo_frames(2000)
    frames = (base * (args.messages // len(base) + 1))[: args.messages]
    print(f"{len(frames)} demo headers ({len(base)} distinct), best of {args.repeat}")
    rows = [
        ("msgpack", lambda f: msgpack.unpackb(f[1], raw=False)),
        ("fusiond", decode_sample_header),
    ]
    templates: dict[bytes, Any] = {}
    for f in frames:
        templates.setdefault(f[0], HeaderTemplate.of(f[1], len(f)))
    matched = sum(templates[f[0]].match(f[1]) is not None for f in frames)
    rows.append(("template", lambda f: templates[f[0]].match(f[1])))
    typed = msgspec_decoder()
    if typed is None:
        print("msgspec not installed: pip install msgspec to compare")
    else:
        rows.append(("msgspec", typed))
    for name, fn in rows:
        said = f" ({matched / len(frames):.0%} matched)" if name == "template" else ""
        print(f"  {name:<8}{best(fn, frames, args.repeat):7.2f} us/header{said}")


if __name__ == "__main__":
    main()
