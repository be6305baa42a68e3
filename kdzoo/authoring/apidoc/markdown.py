"""Text for the page: docstrings (reST-flavoured, as kdzoo writes them) as Markdown,
table cells, code blocks, and signatures formatted as written in the source."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

_ROLE = re.compile(r":(?:func|class|data|mod|meth|attr|obj|exc):`~?([^`]+)`")
#: A border line of an RST simple table (``====  ====``).
BORDER = re.compile(r"^=+( +=+)+ *$")


# ----------------------------------------------------------------------------- docstrings
def _rst_table(lines: list[str]) -> list[str]:
    """An RST simple table (three ``===`` borders) as a Markdown table."""
    border = lines[0]
    starts = [m.start() for m in re.finditer(r"=+", border)]

    def cells(line: str) -> list[str]:
        bounds = [*starts[1:], None]
        return [line[start:end].strip() for start, end in zip(starts, bounds)]

    rows = [cells(line) for line in lines if line.strip() and not BORDER.match(line)]
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(starts)]
    out += ["| " + " | ".join(f"`{c}`" if c and c[0].isalpha() and "." in c else c for c in row) + " |" for row in rows[1:]]
    return out


def to_markdown(text: str) -> str:
    """A docstring (reST-flavoured, as kdzoo writes them) as Markdown: inline literals,
    roles, ``::`` literal blocks and simple tables."""
    text = _ROLE.sub(r"``\1``", text)
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if BORDER.match(line):  # a simple table: border, header, border, rows, border
            table = [line]
            i += 1
            borders = 1
            while i < len(lines) and borders < 3:
                table.append(lines[i])
                borders += bool(BORDER.match(lines[i]))
                i += 1
            out += _rst_table(table)
            continue
        if line.rstrip().endswith("::"):
            head = line.rstrip()[:-2].rstrip()
            if head:
                out.append(_inline(head) + ":")
            i += 1
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            while block and not block[0].strip():
                block.pop(0)
            indent = min((len(b) - len(b.lstrip()) for b in block if b.strip()), default=0)
            out += ["", "```", *(b[indent:] for b in block), "```", ""]
            continue
        out.append(_inline(line))
        i += 1
    return "\n".join(out).strip()


def _inline(line: str) -> str:
    return line.replace("``", "`")


def cell(text: str) -> str:
    """Docstring text as the content of one Markdown table cell."""
    return to_markdown(text).replace("|", "\\|").replace("\n", " ")


def code_cell(text: str) -> str:
    """Code as the content of one Markdown table cell."""
    return "`" + text.replace("|", "\\|") + "`"


def code(text: str) -> str:
    """A fenced Python code block."""
    return f"```python\n{text}\n```"


# ----------------------------------------------------------------------------- signatures
def annotation_text(annotation: Any) -> str:
    """An annotation as written in the source (they are strings: ``from __future__ import annotations``)."""
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


def format_signature(obj: Callable[..., Any], drop_first: bool = False) -> str:
    """``(a: int, *, b: str = 'x') -> T`` with annotations as written in the source."""
    signature = inspect.signature(obj)
    params = list(signature.parameters.values())
    if drop_first and params:
        params = params[1:]
    parts: list[str] = []
    star_done = False
    for index, param in enumerate(params):
        text = param.name
        if param.kind is param.VAR_POSITIONAL:
            text, star_done = "*" + text, True
        elif param.kind is param.VAR_KEYWORD:
            text = "**" + text
        elif param.kind is param.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if param.annotation is not param.empty:
            text += ": " + annotation_text(param.annotation)
        if param.default is not param.empty:
            text += (" = " if param.annotation is not param.empty else "=") + repr(param.default)
        parts.append(text)
        if param.kind is param.POSITIONAL_ONLY and (index + 1 == len(params) or params[index + 1].kind is not param.POSITIONAL_ONLY):
            parts.append("/")
    result = "(" + ", ".join(parts) + ")"
    if signature.return_annotation is not signature.empty:
        result += " -> " + annotation_text(signature.return_annotation)
    return result


def wrapped_call(prefix: str, signature: str) -> str:
    """``prefix(signature)``, one argument per line when it is long."""
    line = prefix + signature
    if len(line) <= 100 or not signature.startswith("("):
        return line
    close = _matching_paren(signature)
    inner, rest = signature[1:close], signature[close + 1 :]
    args = _split_top_level(inner)
    return prefix + "(\n" + "".join(f"    {a},\n" for a in args) + ")" + rest


def _matching_paren(text: str) -> int:
    depth = 0
    for index, char in enumerate(text):
        depth += char in "([{"
        depth -= char in ")]}"
        if depth == 0:
            return index
    return len(text) - 1


def _split_top_level(text: str) -> list[str]:
    parts, depth, current, quote = [], 0, "", None
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    if current.strip():
        parts.append(current.strip())
    return parts
