"""A stream's header as a template: the bytes that stay, and the three numbers that move.

A publisher sends the same header on every message of a stream but for ``seq``, ``t_ns``
and ``t_pub_ns``. Once a header has passed every check, its bytes less those three
values are a template: a later header whose bytes match it, with three msgpack integers
in ``[0, 2**63)`` where the template's were (of any width, signed or not), decodes to the
same map with other numbers in it, so it would pass every check of the header alone
again. Ingest then reads those three numbers and skips unpacking the map, the field
checks and the block's layout checks (:meth:`fusiond.ingest.Ingest.handle`): 0.7 us a
demo header instead of 6 (``python bench/bench_header.py``).

Matching is exact, bytes against bytes: ``1.0`` where ``1`` was, a key added or moved, a
negative stamp, anything else at all takes the full decode and checks, which say what
is wrong, if anything is.
"""

from __future__ import annotations

import struct
from typing import Final

import msgpack

from fusiond.bus.wire import MAX_INT

__all__ = ["HeaderTemplate", "STAMPS"]

STAMPS: Final = ("seq", "t_ns", "t_pub_ns")
"""The header fields that change from one message of a stream to the next, in the order
:meth:`HeaderTemplate.match` returns them."""

_WIDTH: Final = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
"""msgpack's integer tags and their widths (0xD0-0xD3 signed)."""
_CODES: Final = {0xCC: "B", 0xCD: "H", 0xCE: "I", 0xCF: "Q", 0xD0: "b", 0xD1: "h", 0xD2: "i", 0xD3: "q"}
"""The ``struct`` code of each integer tag (big-endian, as msgpack's)."""


class HeaderTemplate:
    """The bytes of one checked header around its three stamps."""

    __slots__ = ("_parts", "_slots", "_tail", "frames", "_fast", "_statics", "_bounds")

    def __init__(self, parts: tuple[bytes, ...], slots: tuple[int, ...], tail: bytes, frames: int) -> None:
        self._parts = parts
        """The bytes before each stamp's value (from the end of the previous one)."""
        self._slots = slots
        """Which of :data:`STAMPS` each value is, in the order they come."""
        self._tail = tail
        self.frames = frames
        """How many frames the message had: a header matches only with as many."""
        self._fast: struct.Struct | None = None
        self._statics: tuple[bytes, ...] = ()
        self._bounds: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] = ((), (), ())

    @classmethod
    def of(cls, raw: bytes, frames: int) -> HeaderTemplate | None:
        """The template of a header that passed every check (``raw``: its bytes), or None
        when it has no single top-level ``seq``, ``t_ns`` and ``t_pub_ns``."""
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=max(len(raw), 1))
        try:
            unpacker.feed(raw)
            parts: list[bytes] = []
            slots: list[int] = []
            start = 0
            for _ in range(unpacker.read_map_header()):
                key = unpacker.unpack()
                if isinstance(key, str) and key in STAMPS:
                    at = unpacker.tell()
                    parts.append(raw[start:at])
                    slots.append(STAMPS.index(key))
                    unpacker.skip()
                    start = unpacker.tell()
                else:
                    unpacker.skip()
            if unpacker.tell() != len(raw):
                return None
        except Exception:  # whatever msgpack makes of it: no template, the full checks every time
            return None
        if sorted(slots) != [0, 1, 2]:
            return None
        return cls(tuple(parts), tuple(slots), raw[start:], frames)

    def match(self, raw: bytes) -> tuple[int, int, int] | None:
        """``(seq, t_ns, t_pub_ns)`` of a header whose bytes are this template's with other
        integers in ``[0, 2**63)`` for the stamps; None for any other header."""
        fast = self._fast
        if fast is not None and len(raw) == fast.size:
            u = fast.unpack_from(raw)
            lo, hi, order = self._bounds
            if (
                u[::2] == self._statics
                and lo[0] <= u[1] <= hi[0]
                and lo[1] <= u[3] <= hi[1]
                and lo[2] <= u[5] <= hi[2]
            ):
                return u[order[0]], u[order[1]], u[order[2]]
        return self._match(raw)

    def _match(self, raw: bytes) -> tuple[int, int, int] | None:
        """:meth:`match` byte by byte; on a match, the stamps' widths (which change as ``seq``
        grows) become the one-call layout :meth:`match` tries first."""
        values = [0, 0, 0]
        tags: list[int] = []
        at = 0
        end = len(raw)
        for part, slot in zip(self._parts, self._slots, strict=True):
            if not raw.startswith(part, at):
                return None
            at += len(part)
            if at >= end:
                return None
            tag = raw[at]
            tags.append(tag)
            if tag < 0x80:  # positive fixint
                values[slot] = tag
                at += 1
                continue
            width = _WIDTH.get(tag)
            if width is None or at + 1 + width > end:
                return None
            value = int.from_bytes(raw[at + 1 : at + 1 + width], "big", signed=tag >= 0xD0)
            if not 0 <= value <= MAX_INT:
                return None
            values[slot] = value
            at += 1 + width
        if end - at != len(self._tail) or not raw.endswith(self._tail):
            return None
        self._learn(tags)
        return values[0], values[1], values[2]

    def _learn(self, tags: list[int]) -> None:
        """One ``struct`` layout for these widths: the static bytes (each value's tag with
        them) as strings, each value as the integer its tag says, all in one call."""
        fmt = [">"]
        statics: list[bytes] = []
        lo: list[int] = []
        hi: list[int] = []
        for part, tag in zip(self._parts, tags, strict=True):
            if tag < 0x80:
                static, code, low, high = part, "B", 0, 0x7F
            else:
                static, code = part + bytes([tag]), _CODES[tag]
                low, high = 0, min(MAX_INT, 2 ** (8 * _WIDTH[tag] - (tag >= 0xD0)) - 1)
            fmt += [f"{len(static)}s", code]
            statics.append(static)
            lo.append(low)
            hi.append(high)
        fmt.append(f"{len(self._tail)}s")
        statics.append(self._tail)
        # u = (static, value, static, value, static, value, static): u[1 + 2 * i] is the
        # i-th value in the bytes, which is stamp self._slots[i].
        order = [0, 0, 0]
        for i, slot in enumerate(self._slots):
            order[slot] = 1 + 2 * i
        self._fast = struct.Struct("".join(fmt))
        self._statics = tuple(statics)
        self._bounds = (tuple(lo), tuple(hi), tuple(order))
