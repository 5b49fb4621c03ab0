"""The API reference, generated offline from the registry and the docstrings.

``attrkit docs --out DIR`` (or ``python -m attrkit.docs --out DIR``) writes Markdown:

* ``index.md`` — what is where;
* one page per component kind (``method.md``, ``projector.md``, ``solver.md``...): every
  registered component with its parameters (type, default, allowed values, meaning), its
  capabilities, flags, plugin and an example spec — the :class:`~attrkit.describe.Description`
  that ``attrkit plugins NAME`` prints;
* ``attrkit.md`` and ``attrkit.plugin.md`` — the public API (``__all__``) of the user's
  and the plugin author's modules, from their docstrings via :mod:`inspect`.

Nothing is imported but attrkit and the installed plugins; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attrkit.describe import Description, by_kind
from attrkit.parameters import SECTIONS, to_json
from attrkit.registry import Registry, default_registry

__all__ = ["API_MODULES", "api_page", "kind_page", "main", "markdown", "write_docs"]

#: The modules whose public API gets a page.
API_MODULES = ("attrkit", "attrkit.plugin")


def _inline(text: str) -> str:
    """RST inline markup as Markdown: ````x```` -> ```x```, ``:func:`~a.b``` -> ```b```."""
    text = re.sub(r":\w+:`~[\w.]*?\.?(\w+)`", r"`\1`", text)
    text = re.sub(r":\w+:`([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def markdown(doc: str) -> str:
    """A Google-style docstring as Markdown: section headers in bold, their ``name: text``
    entries as list items, ``>>>`` examples and ``::`` literal blocks fenced as Python,
    inline markup converted."""
    lines = inspect.cleandoc(doc).splitlines()
    out: list[str] = []
    i, literal = 0, False
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(">>>"):
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(re.sub(r"^(>>> |\.\.\. ?)", "", lines[i].strip()).split("  # doctest")[0])
                i += 1
            out += ["```python", *block, "```"]
            continue
        if literal and stripped:
            indent = len(line) - len(line.lstrip())
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) >= indent):
                block.append(lines[i][indent:])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["```python", *block, "```", ""]
            literal = False
            continue
        if stripped.endswith(":") and stripped[:-1] in SECTIONS:
            out += ["", f"**{stripped[:-1]}:**", ""]
            i += 1
            indent = None
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                entry = lines[i]
                if not entry.strip():
                    i += 1
                    continue
                depth = len(entry) - len(entry.lstrip())
                if entry.strip().startswith(">>>"):
                    break
                if indent is None or depth <= indent:
                    indent = depth
                    match = re.match(r"^([\w., *]+?)(\s*\([^)]*\))?:\s(.*)$", entry.strip())
                    out.append(f"- **{match[1]}**{match[2] or ''}: {_inline(match[3])}" if match
                               else f"- {_inline(entry.strip())}")
                else:
                    out[-1] += " " + _inline(entry.strip())
                i += 1
            out.append("")
            continue
        if stripped:
            literal = stripped.endswith("::")
        out.append(_inline(line[:-1] if stripped.endswith("::") else line))
        i += 1
    return _squeeze(out).strip() + "\n"


def _squeeze(lines: list[str]) -> str:
    """Join ``lines``, with runs of blank lines outside code fences cut to one."""
    out: list[str] = []
    fenced = False
    for line in "\n".join(lines).splitlines():
        fenced ^= line.startswith("```")
        if not fenced and not line.strip() and out and not out[-1].strip():
            continue
        out.append(line)
    return "\n".join(out)


def _cell(text: str) -> str:
    return _inline(text).replace("|", "\\|").replace("\n", " ")


def _component(d: Description) -> list[str]:
    out = [f"## `{d.name}`", "", f"*{d.kind}* from plugin `{d.plugin}` ({d.distribution} {d.version})", ""]
    if d.unavailable:
        out += [f"> Unavailable on the machine these pages were written on: {_inline(d.unavailable)}", ""]
    out += [markdown(d.summary) if d.summary else "", ""]
    if d.parameters:
        out += ["| parameter | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        for p in d.parameters:
            default = "required" if p.required else f"`{to_json(p.default)}`"
            out.append(f"| `{p.name}` | `{_cell(p.type)}` | {default} | {_cell('; '.join(p.allowed)) or '–'} | "
                       f"{_cell(p.meaning)} |")
    else:
        out.append("No parameters.")
    needs = "; ".join(f"`{c}` (from {', '.join(d.providers[c]) or 'no registered component'})" for c in d.requires)
    provides = ", ".join(f"`{c}`" for c in d.provides) or "nothing"
    out += ["", f"**Requires:** {needs or 'nothing'}  ", f"**Provides:** {provides}"]
    if d.flags:
        out[-1] += "  "
        out.append("**Flags:** " + ", ".join(f"`{k} = {to_json(v)}`" for k, v in d.flags.items()))
    call = (f"attrkit.metric({to_json(d.example)})" if d.kind == "metric"
            else f"attrkit.compose({to_json(d.example)}, task)")
    out += ["", "```python", call, "```", ""]
    return out


def kind_page(kind: str, found: Sequence[Description]) -> str:
    """The Markdown page of one kind: every component of it, by name."""
    out = [f"# {kind} components", "",
           f"Generated by `attrkit docs` from the registry; `attrkit plugins NAME` prints the same. "
           f"{len(found)} registered: " + ", ".join(f"[`{d.name}`](#{d.name})" for d in found) + ".", ""]
    for d in found:
        out += _component(d)
    return _squeeze(out) + "\n"


def _signature(obj: Any) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def _doc(obj: Any) -> str:
    doc = inspect.getdoc(obj)
    return markdown(doc) if doc else "*(undocumented)*\n"


def _members(cls: type) -> list[str]:
    out = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        raw = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
        if isinstance(value, property):
            out += [f"#### `{cls.__name__}.{name}` (property)", "", _doc(value)]
        elif inspect.isfunction(raw):
            out += [f"#### `{cls.__name__}.{name}{_signature(raw)}`", "", _doc(raw)]
    return out


def api_page(module_name: str) -> str:
    """The Markdown page of a module's public API: each name of its ``__all__`` with its
    signature and docstring (a class's public methods and properties too)."""
    module = importlib.import_module(module_name)
    out = [f"# `{module_name}`", "", _doc(module), ""]
    for name in sorted(getattr(module, "__all__", ())):
        obj = getattr(module, name)
        if inspect.isclass(obj):
            out += [f"### class `{module_name}.{name}{_signature(obj)}`", "", _doc(obj), *_members(obj)]
        elif inspect.ismodule(obj):
            out += [f"### module `{obj.__name__}`", "", _doc(obj)]
        elif callable(obj):
            out += [f"### `{module_name}.{name}{_signature(obj)}`", "", _doc(obj)]
        else:
            out += [f"### `{module_name}.{name}` = `{obj!r}`", ""]
    return _squeeze(out) + "\n"


def write_docs(out: str | Path, registry: Registry | None = None) -> list[Path]:
    """Write the reference pages into ``out`` (created if missing); returns their paths.

    Args:
        out: the directory.
        registry: whose components to document; default every installed plugin.
    """
    registry = registry or default_registry()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    pages: dict[str, str] = {}
    kinds = list(by_kind(registry))
    for kind, found in kinds:
        pages[f"{kind}.md"] = kind_page(kind, found)
    for module in API_MODULES:
        pages[f"{module}.md"] = api_page(module)
    index = ["# attrkit API reference", "",
             "Generated offline by `attrkit docs --out DIR` from the installed plugins and the docstrings.", "",
             "## Components", ""]
    index += [f"- [{kind}]({kind}.md): " + (", ".join(f"`{d.name}`" for d in found) or "none") for kind, found in kinds]
    if registry.presets:
        index += ["", "## Presets", ""]
        presets = sorted(registry.presets.items())
        index += [f"- `{name}` ({info.name}): `{to_json(spec)}`" for name, (spec, info) in presets]
    index += ["", "## Python API", ""] + [f"- [`{m}`]({m}.md)" for m in API_MODULES]
    pages["index.md"] = "\n".join(index) + "\n"
    written = []
    for name, text in pages.items():
        path = root / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m attrkit.docs --out DIR``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m attrkit.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory to write the pages into")
    args = parser.parse_args(argv)
    pages = write_docs(args.out)
    print(f"wrote {len(pages)} pages to {args.out}: {', '.join(p.name for p in pages)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
