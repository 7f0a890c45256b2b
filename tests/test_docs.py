"""The docs state every hook with its exact signature (as Datasette's test_docs does)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from fusiond.plugin import hookspecs

DOCS = Path(__file__).parent.parent / "docs"


def hook_signatures() -> dict[str, str]:
    out = {}
    for name, func in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("fusiond_"):
            out[name] = name + str(inspect.signature(func)).replace("'", "")
    return out


def test_every_hook_is_documented_with_its_exact_signature():
    text = (DOCS / "plugins.md").read_text()
    documented = dict(re.findall(r"^### `((fusiond_\w+)\(.*\) -> .*)`$", text, re.M))
    documented = {name: sig for sig, name in documented.items()}
    assert documented == hook_signatures()


def test_every_hook_has_a_docstring_with_its_params():
    for name, func in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("fusiond_"):
            for param in inspect.signature(func).parameters:
                assert f":param {param}:" in (func.__doc__ or ""), name
