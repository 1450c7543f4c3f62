"""The vocabulary the message definitions are written in: each field's kind, its check, its JSON Schema.

A header (or a stored record) is defined once, as a :class:`MessageSpec`: an
ordered tuple of :class:`Field` objects, each with a kind (:class:`Text`,
:class:`Integer`, :class:`Number`, ...), the human text of what it means and,
derived from the kind unless a field says otherwise, of what is expected of
it. From that one definition come

* the checks of the encoders and decoders (:meth:`MessageSpec.check`), whose
  errors say ``field 'rows' = 0: expected an integer 1..32768``;
* the JSON schema committed as ``stm_live/schemas/<topic>.json`` for bridges
  in other languages (:meth:`MessageSpec.schema`; ``x-expected`` holds the
  expected text, ``x-rules`` the cross-field rules);
* the field tables of ``docs/protocol.md`` (:mod:`stm_live.wire.docs`).

What a JSON schema cannot say (``row < rows``, ``rows * cols`` within a
budget, a detection inside the frame) is a :class:`Rule`: a function next to
its one-line statement, run after the fields. Two simple relations are part
of :class:`Integer` itself (``below``/``at_most`` another field), so their
messages can name the actual bound.

Semantics shared by every definition, as in JSON Schema: a number without a
fraction (``5.0``) is an integer; an optional field that is ``null`` is
absent (it takes its default); unknown fields are errors.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final, NoReturn

from ..errors import WireError

__all__ = [
    "Boolean",
    "Choice",
    "Const",
    "Field",
    "Header",
    "Integer",
    "Kind",
    "ListOf",
    "MapOf",
    "MessageSpec",
    "Number",
    "ObjectOf",
    "Rule",
    "Text",
    "Version",
]

#: JSON Schema dialect of every generated schema.
DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
#: Base of every schema's ``$id``.
ID_BASE: Final = "https://stm-live.invalid/schemas/"
#: A text without control characters, as a JSON Schema (ECMA-262) pattern.
NO_CONTROL: Final = "^[^\\u0000-\\u001f\\u007f]*$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MISSING: Any = object()


class Header:
    """A decoded JSON object being checked, and the context every error message names.

    Parameters
    ----------
    topic : str
        The topic (``"stm.line"``) or record kind (``"result"``).
    obj : Mapping
        The decoded JSON object.
    part : str
        What ``obj`` is called in messages (``"header"``, ``"record"``).

    Messages read ``<topic> <part> (scan 'A17', row 3): field 'x' = <value>:
    expected <text>``; the scan and row appear once checked.
    """

    __slots__ = ("obj", "part", "row", "scan_id", "topic")

    def __init__(self, topic: str, obj: Mapping[str, Any], part: str = "header") -> None:
        self.topic = topic
        self.obj = obj
        self.part = part
        self.scan_id: str | None = None
        self.row: int | None = None

    def where(self, part: str | None = None) -> str:
        """``"stm.line header (scan 'A17', row 3)"``: where an error is, for the start of its message."""
        ctx = []
        if self.scan_id is not None:
            ctx.append(f"scan {self.scan_id!r}")
        if self.row is not None:
            ctx.append(f"row {self.row}")
        return f"{self.topic} {part or self.part}" + (f" ({', '.join(ctx)})" if ctx else "")

    def fail(self, name: str, value: Any, expected: str) -> NoReturn:
        """Raise :class:`WireError`: field ``name`` has ``value`` (shown short), ``expected`` was expected."""
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise WireError(f"{self.where()}: field {name!r} = {shown}: expected {expected}")


# --------------------------------------------------------------------------
# Kinds of values
# --------------------------------------------------------------------------


class Kind(ABC):
    """What a field's value must be.

    Subclasses give the JSON Schema fragment (:meth:`schema`), the human text
    of what is expected (:meth:`expected`, in the form ``"an integer 1..32768"``),
    and the check (:meth:`check`), which returns the value in its Python form
    (``5.0`` -> ``5`` for integers, numbers as ``float``) or raises through
    :meth:`Header.fail` with that text.
    """

    @abstractmethod
    def schema(self) -> dict[str, Any]:
        """The JSON Schema of a value of this kind (without description or annotations)."""

    @abstractmethod
    def expected(self) -> str:
        """What is expected, for people: the error messages, ``x-expected`` and the docs."""

    @abstractmethod
    def check(self, h: Header, name: str, value: Any, got: Mapping[str, Any], expected: str | None) -> Any:
        """``value`` of field ``name``, checked and converted; ``got``: the fields checked before it."""


@dataclass(frozen=True)
class Version(Kind):
    """The protocol version: exactly ``version``, told apart from a wrong type."""

    version: int

    def schema(self) -> dict[str, Any]:
        return {"const": self.version}

    def expected(self) -> str:
        return f"{self.version} (protocol version)"

    def check(self, h: Header, name: str, value: Any, got: Mapping[str, Any], expected: str | None) -> Any:
        if type(value) is not int and not (type(value) is float and value == self.version):
            h.fail(name, value, expected or self.expected())
        if value != self.version:
            h.fail(name, value, f"{self.version}: this side speaks protocol version {self.version} only")
        return self.version


@dataclass(frozen=True)
class Text(Kind):
    """A text of ``min_len..max_len`` characters, without control characters unless ``control``.

    ``pattern`` (a JSON Schema pattern, matched against the whole text)
    narrows it further; give such a field its own ``expected`` text.
    """

    min_len: int = 1
    max_len: int | None = None
    control: bool = False
    pattern: str | None = None

    @cached_property
    def _match(self) -> Callable[[str], Any] | None:
        return None if self.pattern is None else re.compile(self.pattern).fullmatch

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string"}
        if self.min_len:
            out["minLength"] = self.min_len
        if self.max_len is not None:
            out["maxLength"] = self.max_len
        if self.pattern is not None:
            out["pattern"] = self.pattern
        elif not self.control:
            out["pattern"] = NO_CONTROL
        return out

    def expected(self) -> str:
        if self.max_len is not None:
            text = f"a text of {self.min_len}..{self.max_len} characters"
        else:
            text = "a non-empty text" if self.min_len == 1 else "a text" if not self.min_len else (
                f"a text of at least {self.min_len} characters")
        return text if self.control else text + " without control characters"

    def check(self, h: Header, name: str, value: Any, got: Mapping[str, Any], expected: str | None) -> Any:
        if (
            type(value) is str
            and len(value) >= self.min_len
            and (self.max_len is None or len(value) <= self.max_len)
            and (self.control or not _CONTROL.search(value))
            and (self._match is None or self._match(value))
        ):
            return value
        h.fail(name, value, expected or self.expected())


@dataclass(frozen=True)
class Integer(Kind):
    """An integer ``lo..hi``; ``below``/``at_most``: and below / at most the field of that name.

    The bound by another field (of the same header, checked before this one)
    is a rule across fields, beyond a JSON schema: :class:`MessageSpec`
    checks it with its rules. Messages name the actual bound
    (``an integer 0..511``) as soon as the other field is known.
    """

    lo: int = 0
    hi: int | None = None
    below: str | None = None
    at_most: str | None = None

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "integer", "minimum": self.lo}
        if self.hi is not None:
            out["maximum"] = self.hi
        return out

    def text(self, hi: int | str | None) -> str:
        """``"an integer lo..hi"``."""
        return f"an integer >= {self.lo}" if hi is None else f"an integer {self.lo}..{hi}"

    def expected(self) -> str:
        if self.below is not None:
            return self.text(f"{self.below} - 1")
        if self.at_most is not None:
            return self.text(self.at_most)
        return self.text(self.hi)

    def bound(self, got: Mapping[str, Any]) -> int | None:
        """The largest value allowed, given the fields checked so far."""
        other = self.below or self.at_most
        if other is None or type(got.get(other)) is not int:
            return self.hi
        limit: int = got[other] - 1 if self.below is not None else got[other]
        return limit if self.hi is None else min(self.hi, limit)

    def check(self, h: Header, name: str, value: Any, got: Mapping[str, Any], expected: str | None) -> Any:
        if type(value) is float and value.is_integer():
            value = int(value)  # JSON has one number type; 5.0 is 5 (as in JSON Schema)
        if type(value) is int and value >= self.lo and (self.hi is None or value <= self.hi):
            return value
        h.fail(name, value, expected or self.text(self.bound(got)))


@dataclass(frozen=True)
class Number(Kind):
    """A finite number within optional bounds (``lo_open``/``hi_open``: the bound itself excluded)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "number"}
        if self.lo is not None:
            out["exclusiveMinimum" if self.lo_open else "minimum"] = self.lo
        if self.hi is not None:
            out["exclusiveMaximum" if self.hi_open else "maximum"] = self.hi
        return out

    def expected(self) -> str:
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None and not (self.lo_open or self.hi_open):
            return f"a finite number in {lo:g}..{hi:g}"
        bounds = []
        if lo is not None:
            bounds.append(f"{'>' if self.lo_open else '>='} {lo:g}")
        if hi is not None:
            bounds.append(f"{'<' if self.hi_open else '<='} {hi:g}")
        return " ".join(["a finite number", " and ".join(bounds)]).strip()

    def check(self, h: Header, name: str, value: Any, got: Mapping[str, Any], expected: str | None) -> Any:
        kind = type(value)
        # Python ints are exact and unbounded: compare them as they are, convert last.
        ok = (kind is float and math.isfinite(value)) or kind is int
        if ok and self.lo is not None:
            ok = value > self.lo if self.lo_open else value >= self.lo
        if ok and self.hi is not None:
            ok = value < self.hi if self.hi_open else value <= self.hi
        if ok:
            try:
                return float(value)
            except OverflowError:  # an integer of hundreds of digits
                pass
        h.fail(name, value, expected or self.expected())


@dataclass(frozen=True)
class Boolean(Kind):
    """``true`` or ``false``."""

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}

    def expected(self) -> str:
        return "true or false"

    def check(self, h: Header, name: str, value: Any, got: Mapping[str, Any], expected: str | None) -> Any:
        if type(value) is bool:
            return value
        h.fail(name, value, expected or self.expected())


@dataclass(frozen=True)
class Choice(Kind):
    """One of a few texts."""

    options: tuple[str, ...]

    def schema(self) -> dict[str, Any]:
        return {"enum": list(self.options)}

    def expected(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)

    def check(self, h: Header, name: str, value: Any, got: Mapping[str, Any], expected: str | None) -> Any:
        if type(value) is str and value in self.options:
            return value
        h.fail(name, value, expected or self.expected())


@dataclass(frozen=True)
class Const(Kind):
    """Exactly ``value`` (a text)."""

    value: str

    def schema(self) -> dict[str, Any]:
        return {"const": self.value}

    def expected(self) -> str:
        return repr(self.value)

    def check(self, h: Header, name: str, value: Any, got: Mapping[str, Any], expected: str | None) -> Any:
        if type(value) is str and value == self.value:
            return value
        h.fail(name, value, expected or self.expected())


@dataclass(frozen=True)
class ListOf(Kind):
    """A JSON array of ``min_items..max_items`` values of kind ``item``, ``unique`` if asked.

    Items that are objects are checked one by one (``detections[2].x_nm``);
    a bad scalar item fails the whole list with the list's text.
    """

    item: Kind
    min_items: int = 0
    max_items: int | None = None
    unique: bool = False
    says: str | None = None

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "array", "items": self.item.schema()}
        if self.min_items:
            out["minItems"] = self.min_items
        if self.max_items is not None:
            out["maxItems"] = self.max_items
        if self.unique:
            out["uniqueItems"] = True
        return out

    def expected(self) -> str:
        if self.says is not None:
            return self.says
        n = (f"{self.min_items}" if self.min_items == self.max_items
             else f"{self.min_items}..{'' if self.max_items is None else self.max_items}")
        return f"a list of {n} items, each {self.item.expected()}"

    def check(self, h: Header, name: str, value: Any, got: Mapping[str, Any], expected: str | None) -> Any:
        if (
            type(value) is not list
            or len(value) < self.min_items
            or (self.max_items is not None and len(value) > self.max_items)
        ):
            h.fail(name, value, expected or self.expected())
        item = self.item
        if isinstance(item, ObjectOf):
            return [item.check(h, f"{name}[{i}]", v, got, None) for i, v in enumerate(value)]
        try:
            out = [item.check(h, name, v, got, None) for v in value]
        except WireError:
            out = None
        if out is None or (self.unique and len(set(out)) != len(out)):
            h.fail(name, value, expected or self.expected())
        return out


@dataclass(frozen=True)
class MapOf(Kind):
    """A JSON object of free names (non-empty, no control characters) to values of kind ``value``.

    ``required`` names must be present.
    """

    value: Kind
    required: tuple[str, ...] = ()
    says: str | None = None

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "object"}
        if self.required:
            out["required"] = list(self.required)
            out["properties"] = {k: self.value.schema() for k in self.required}
        out["additionalProperties"] = self.value.schema()
        out["propertyNames"] = {"minLength": 1, "pattern": NO_CONTROL}
        return out

    def expected(self) -> str:
        text = self.says or f"an object of names to {self.value.expected()}"
        return text + (f" including {', '.join(self.required)}" if self.required else "")

    def check(self, h: Header, name: str, value: Any, got: Mapping[str, Any], expected: str | None) -> Any:
        out: dict[str, Any] | None = None
        if (
            type(value) is dict
            and all(k in value for k in self.required)
            and all(k and not _CONTROL.search(k) for k in value)
        ):
            try:
                out = {k: self.value.check(h, name, v, got, None) for k, v in value.items()}
            except WireError:
                out = None  # reported below, for the whole object
        if out is None:
            h.fail(name, value, expected or self.expected())
        return out


@dataclass(frozen=True)
class ObjectOf(Kind):
    """A JSON object with the given fields and no others; each field is checked as ``name.field``."""

    fields: tuple[Field, ...]
    says: str | None = None

    @cached_property
    def _names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.fields)

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "additionalProperties": False,
            "required": [f.name for f in self.fields if f.required],
            "properties": {f.name: f.schema() for f in self.fields},
        }

    def expected(self) -> str:
        if self.says is not None:
            return self.says
        required = [f.name for f in self.fields if f.required]
        optional = [f.name for f in self.fields if not f.required]
        if not optional:
            return "an object with exactly the fields " + ", ".join(required)
        return f"an object with the fields {', '.join(required)} and optionally {', '.join(optional)}"

    def check(self, h: Header, name: str, value: Any, got: Mapping[str, Any], expected: str | None) -> Any:
        if type(value) is not dict:
            h.fail(name, value, expected or self.expected())
        missing = [f.name for f in self.fields if f.required and f.name not in value]
        if missing:
            h.fail(name, value, f"{expected or self.expected()} (missing {missing})")
        unknown = value.keys() - self._names
        if unknown:
            h.fail(name, value, f"{expected or self.expected()} (unknown {sorted(unknown)})")
        out: dict[str, Any] = {}
        for f in self.fields:
            out[f.name] = f.take(h, value, out, name + ".")
        return out


# --------------------------------------------------------------------------
# Fields, rules, messages
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One field of a header: its name, kind, meaning, and whether it must be there.

    Parameters
    ----------
    name : str
        The JSON key.
    kind : Kind
        What its value must be.
    description : str
        What it means, for people (markdown; the schema's ``description``, the docs).
    required : bool
        Whether it must be present. An optional field that is ``null`` is absent.
    nullable : bool
        A required field that may be ``null`` (meaning "none" or "not known").
    default : object
        The value of an optional field that is absent or ``null``.
    expected : str, optional
        What is expected, when the kind's own text is not the clearest.
    context : {"scan_id", "row"}, optional
        Once checked, every later message of the header names it.
    """

    name: str
    kind: Kind
    description: str = ""
    required: bool = True
    nullable: bool = False
    default: Any = None
    expected: str | None = None
    context: str | None = None

    @property
    def expected_text(self) -> str:
        """What is expected of the field (the ``x-expected`` annotation)."""
        return self.expected or self.kind.expected()

    def take(self, h: Header, obj: Mapping[str, Any], got: Mapping[str, Any], prefix: str = "") -> Any:
        """The field's checked value in ``obj`` (its default when optional and absent or null)."""
        value = obj.get(self.name, _MISSING)
        if value is _MISSING or value is None:
            if not self.required:
                return self.default
            if value is _MISSING:
                raise WireError(f"{h.where()}: missing required field {prefix + self.name!r}")
            if self.nullable:
                return None
        return self.kind.check(h, prefix + self.name, value, got, self.expected)

    def schema(self) -> dict[str, Any]:
        """The field's JSON Schema, annotated (``description``, ``default``, ``x-expected``)."""
        out = self.kind.schema()
        if self.nullable or not self.required:
            out = _or_null(out)
        if self.description:
            out["description"] = self.description
        if self.default is not None:
            out["default"] = self.default
        out["x-expected"] = self.expected_text
        return out


def _given(name: str) -> dict[str, Any]:
    """JSON Schema: ``name`` is present and not null."""
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    if "type" in schema:
        kinds = schema["type"]
        return {**schema, "type": [*kinds, "null"] if isinstance(kinds, list) else [kinds, "null"]}
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None]}
    if "const" in schema:
        return {"enum": [schema["const"], None]}
    raise ValueError(f"cannot make {schema} nullable")  # a new kind needs a case here


@dataclass(frozen=True)
class Rule:
    """A rule across fields that a JSON schema cannot express: its statement and its check.

    ``check(h, got)`` gets the checked fields and raises :class:`WireError`
    (through :meth:`Header.fail`) when the rule is broken. ``text`` goes into
    the schema (``x-rules``) and the docs.
    """

    text: str
    check: Callable[[Header, dict[str, Any]], None]


@dataclass(frozen=True)
class MessageSpec:
    """The one definition of a header (or stored record): fields in checking order, rules, texts.

    Parameters
    ----------
    topic : str
        The topic (``"stm.line"``), or ``"result"`` for the stored record.
    title, description : str
        For the schema and the docs.
    fields : tuple of Field
        In the order they are checked (a field's context and bounds apply to
        the ones after it), which is also the order of the schema and the docs.
    rules : tuple of Rule
        Checked after every field, in order.
    together : tuple of (str, str, str)
        Pairs of optional fields that are both present or both absent (null
        counting as absent), and why.
    part : str
        What the object is called in messages (``"header"``, ``"record"``).
    """

    topic: str
    title: str
    description: str
    fields: tuple[Field, ...]
    rules: tuple[Rule, ...] = ()
    together: tuple[tuple[str, str, str], ...] = ()
    part: str = "header"

    @cached_property
    def names(self) -> frozenset[str]:
        """The names of every field."""
        return frozenset(f.name for f in self.fields)

    @cached_property
    def _listed(self) -> str:
        return ", ".join(sorted(self.names))

    @cached_property
    def _plan(self) -> tuple[tuple[str, Callable[..., Any], bool, bool, Any, str | None, str | None], ...]:
        return tuple((f.name, f.kind.check, f.required, f.nullable, f.default, f.expected, f.context)
                     for f in self.fields)

    @cached_property
    def _bounded(self) -> tuple[tuple[Field, Integer], ...]:
        """The fields bounded by another field (``Integer(below=...)``), checked with the rules."""
        return tuple((f, f.kind) for f in self.fields
                     if isinstance(f.kind, Integer) and (f.kind.below or f.kind.at_most))

    def field(self, name: str) -> Field:
        """The field called ``name``."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def check(self, h: Header, *, rules: bool = True) -> dict[str, Any]:
        """Every field of ``h.obj`` checked and converted, then the rules; raises :class:`WireError`.

        ``rules=False`` leaves out what a JSON schema cannot say (the
        :class:`Rule` objects, and bounds by another field): what is left is
        exactly what the schema says.

        Returns
        -------
        dict
            Field name -> value (its default when absent), in field order.
        """
        obj = h.obj
        got: dict[str, Any] = {}
        # Field.take, inlined: this loop runs for every scan line (about 17 fields).
        for name, check, required, nullable, default, expected, context in self._plan:
            value = obj.get(name, _MISSING)
            if value is _MISSING or value is None:
                if not required:
                    got[name] = default
                    continue
                if value is _MISSING:
                    raise WireError(f"{h.where()}: missing required field {name!r}")
                if nullable:
                    got[name] = None
                    continue
            value = got[name] = check(h, name, value, got, expected)
            if context is not None:
                setattr(h, context, value)
        extra = obj.keys() - self.names
        if extra:
            raise WireError(
                f"{h.where()}: unknown field {sorted(extra)[0]!r}; a {self.topic} {self.part} has only {self._listed}"
            )
        for a, b, why in self.together:
            if (got[a] is None) != (got[b] is None):
                raise WireError(f"{h.where()}: fields {a!r} and {b!r} come together ({why})")
        if rules:
            for f, kind in self._bounded:
                value, hi = got[f.name], kind.bound(got)
                if value is not None and hi is not None and value > hi:
                    if f.context is not None:
                        setattr(h, f.context, None)  # "(row 8)" in a message about row 8 says nothing more
                    h.fail(f.name, value, f.expected or kind.text(hi))
            for rule in self.rules:
                rule.check(h, got)
        return got

    def schema(self) -> dict[str, Any]:
        """The JSON schema (draft 2020-12) of this header, as committed in ``stm_live/schemas``."""
        out: dict[str, Any] = {
            "$schema": DIALECT,
            "$id": f"{ID_BASE}{self.topic}.json",
            "title": self.title,
            "description": self.description,
            "type": "object",
            "additionalProperties": False,
            "required": [f.name for f in self.fields if f.required],
            "properties": {f.name: f.schema() for f in self.fields},
        }
        if self.together:
            # Not dependentRequired: a null field counts as absent here, so "present" means "present, not null".
            out["allOf"] = [
                {"if": _given(a), "then": _given(b)} for x, y, _ in self.together for a, b in ((x, y), (y, x))
            ]
        if self.rules:
            out["x-rules"] = [r.text for r in self.rules]
        return out

