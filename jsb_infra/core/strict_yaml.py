"""Read YAML the way YAML 1.2 does, and refuse what YAML 1.1 tools would read differently.

PyYAML implements YAML 1.1, where `on`/`yes`/`no` are booleans, `010` is octal 8, `0x1F` is 31, `1:30`
is the sexagesimal 90 and `2026-01-01` is a date. YAML 1.2 (and the people writing the config) read all
of these as text or as the decimal they look like. This loader resolves plain scalars with the YAML 1.2
core rules restricted to decimal numbers (null, true/false, decimal integers and floats; anything else
is a string), and refuses a plain scalar whose meaning YAML 1.1 and 1.2 disagree on, with what to write
instead: a config read by different tools (this CLI, Pulumi, an editor) must mean one thing.

Duplicate keys are refused with both locations. Files are read as UTF-8; other encodings are refused.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import BaseResolver, Resolver

STR_TAG = "tag:yaml.org,2002:str"
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"^[-+]?(?:(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)$")
_SPECIAL_FLOAT = re.compile(r"^(?:[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")


class YamlProblem(ValueError):
    """A file that is not strict YAML; the message names the place (`file:line:column`) and the fix."""


class _Core12Resolver(BaseResolver):
    """YAML 1.2 core schema, decimal numbers only (hex `0x` and octal `0o` stay strings)."""


for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", _BOOL, list("tTfF")),
    ("tag:yaml.org,2002:int", _INT, list("-+0123456789")),
    ("tag:yaml.org,2002:float", _FLOAT, list("-+.0123456789")),
    ("tag:yaml.org,2002:float", _SPECIAL_FLOAT, list("-+.")),
):
    _Core12Resolver.add_implicit_resolver(_tag, _pattern, _first)

_YAML11 = Resolver()


_YAML11_SHORT_BOOLS = frozenset("yYnN")  # booleans in the YAML 1.1 spec that PyYAML leaves out


def _yaml11_tag(value: str) -> str:
    if value in _YAML11_SHORT_BOOLS:
        return "tag:yaml.org,2002:bool"
    return str(_YAML11.resolve(ScalarNode, value, (True, False)))


def _ascii_digits(value: str) -> str:
    return "".join(
        str(unicodedata.decimal(ch)) if ch.isdecimal() and not ch.isascii() else ch for ch in value
    )


def _what_to_write(value: str, yaml11_tag: str) -> str:
    """Why `value` is ambiguous, and the unambiguous spellings."""
    quoted = f"quote it ('{value}') for text"
    kind11 = yaml11_tag.rsplit(":", 1)[-1]
    if kind11 == "bool":
        return f"YAML 1.1 reads {value} as a boolean, YAML 1.2 as text; write true or false, or {quoted}"
    if kind11 in ("int", "float"):
        try:
            decimal = yaml.load(value, Loader=yaml.SafeLoader)  # the YAML 1.1 reading, to show it
        except yaml.YAMLError:
            decimal = None
        hint = f" (YAML 1.1 reads it as {decimal!r})" if decimal is not None else ""
        if ":" in value:
            return (
                f"{value} is a base-60 number in YAML 1.1{hint}; write a duration such as 1m30s, a plain "
                f"decimal number, or {quoted}"
            )
        return f"{value} is not a plain decimal number{hint}; write the number in decimal, or {quoted}"
    if kind11 == "timestamp":
        return f"YAML 1.1 reads {value} as a date; {quoted}"
    if kind11 in ("merge", "value"):
        return f"YAML 1.1 gives {value} a special meaning ({kind11} key); {quoted}"
    number = float(value)
    plain = int(number) if number.is_integer() and abs(number) < 2**63 else number
    return (
        f"YAML 1.1 reads {value} as text and YAML 1.2 as the number {number!r}; write the number "
        f"in plain decimal ({plain!r}), or {quoted}"
    )


class _StrictConstructor(SafeConstructor):
    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    raise ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        "a key must be text or a number",
                        key_node.start_mark,
                    ) from None
                if first is not None:
                    raise ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"duplicate key {key!r} (first at line {first.line + 1}); each key may appear once",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]

    def construct_yaml_str(self, node: Node) -> Any:
        value = self.construct_scalar(node)  # type: ignore[arg-type]
        if isinstance(node, ScalarNode) and node.style is None and node.tag == STR_TAG:
            yaml11 = _yaml11_tag(value)
            if yaml11 != STR_TAG:
                raise ConstructorError(None, None, _what_to_write(value, yaml11), node.start_mark)
            ascii_form = _ascii_digits(value)
            if ascii_form != value and (_INT.match(ascii_form) or _FLOAT.match(ascii_form)):
                raise ConstructorError(
                    None,
                    None,
                    f"{value} is written with non-ASCII digits; write {ascii_form} for the number, "
                    f"or quote it ('{value}') for text",
                    node.start_mark,
                )
        return value

    def construct_yaml_float(self, node: Node) -> Any:
        value = self.construct_scalar(node)  # type: ignore[arg-type]
        if isinstance(node, ScalarNode) and node.style is None and _yaml11_tag(value) == STR_TAG:
            raise ConstructorError(None, None, _what_to_write(value, STR_TAG), node.start_mark)
        return super().construct_yaml_float(node)  # type: ignore[arg-type]


_StrictConstructor.add_constructor(STR_TAG, _StrictConstructor.construct_yaml_str)  # type: ignore[type-var]
_StrictConstructor.add_constructor(  # type: ignore[type-var]
    "tag:yaml.org,2002:float", _StrictConstructor.construct_yaml_float
)


class StrictLoader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    yaml.composer.Composer,
    _StrictConstructor,
    _Core12Resolver,
):
    """PyYAML's safe loader with YAML 1.2 core resolution, duplicate keys and ambiguity refused."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _StrictConstructor.__init__(self)
        _Core12Resolver.__init__(self)


def _where(source: str, mark: Any) -> str:
    return f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source


def _field(parts: list[str | int]) -> str:
    """A field path as the spec writes it: `pairs[0].consumer.backoff[1]`."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out


def field_at(root: Node, mark: Any) -> str:
    """The field whose key or value starts at `mark` (`pairs[0].consumer.ack_wait`), or "" at the top."""
    stack: list[tuple[Node, list[str | int]]] = [(root, [])]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in seen:  # an alias repeats a node: its first place names it
            continue
        seen.add(id(node))
        if node.start_mark.index == mark.index and not isinstance(node, MappingNode | SequenceNode):
            return _field(path)
        children: list[tuple[Node, list[str | int]]] = []
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                key_path = [*path, str(key_node.value) if isinstance(key_node, ScalarNode) else "?"]
                children += [(key_node, key_path), (value_node, key_path)]
        elif isinstance(node, SequenceNode):
            children = [(item, [*path, i]) for i, item in enumerate(node.value)]
        stack += reversed(children)
    return ""


def _unreadable(err: yaml.reader.ReaderError, text: str, source: str) -> YamlProblem:
    """A character no YAML file may hold (a NUL byte, other control characters): not a text file."""
    line = text.count("\n", 0, err.position) + 1
    column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
    what = "a NUL byte" if err.character == 0 else f"the control character U+{err.character:04X}"
    return YamlProblem(
        f"{source}:{line}:{column}: {what}; a YAML file is text without control characters "
        "(inside double quotes a value may hold one as an escape such as \\0)"
    )


def loads(text: str, source: str = "<string>") -> Any:
    """Parse one YAML document strictly; raises YamlProblem naming the field (`pairs[0].consumer.ack_wait`)
    where there is one, else `source:line:column`, and the fix."""
    try:
        loader = StrictLoader(text)
    except yaml.reader.ReaderError as err:  # PyYAML checks a whole text for unprintable characters first
        raise _unreadable(err, text, source) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            return loader.construct_document(node)
        except ConstructorError as err:  # this loader's own rules: the message says what to write
            field = field_at(node, err.problem_mark) if err.problem_mark is not None else ""
            where = _where(source, err.problem_mark)
            raise YamlProblem(
                f"{field}: {err.problem} ({where})" if field else f"{where}: {err.problem}"
            ) from None
    except yaml.MarkedYAMLError as err:
        detail = f"not valid YAML: {err.problem}" if err.problem else "not valid YAML"
        raise YamlProblem(f"{_where(source, err.problem_mark or err.context_mark)}: {detail}") from None
    except yaml.YAMLError as err:
        raise YamlProblem(f"{source}: not valid YAML: {err}") from None
    finally:
        loader.dispose()


def decode(data: bytes, source: str) -> str:
    """UTF-8 text of a file (a UTF-8 byte-order mark is allowed); anything else is a YamlProblem."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise YamlProblem(
            f"{source}:{line}: not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start}); "
            "save the file as UTF-8"
        ) from None


def load_file(path: str | Path) -> Any:
    """Read and parse a YAML file strictly. OSError propagates (the caller says what it was reading)."""
    data = Path(path).read_bytes()
    return loads(decode(data, str(path)), str(path))
