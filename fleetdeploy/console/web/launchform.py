"""The launch form: one field per extra var of the action's schema, and the posted form read back.

Reading the form only turns what was typed into values (a number field's text into a number, a YAML
field's text into what it says). Whether they are allowed is for domain/launch.py's validate_launch to say,
as it does for the API: a value the schema refuses reaches it as typed, and its message is the one shown.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fleetdeploy.console.config import Action
from fleetdeploy.console.domain.errors import ConsoleError
from fleetdeploy.console.domain.launch import parse_extra_vars
from fleetdeploy.console.redact import secret_key

# A field's name in the form: `var.<extra var>` (extra var names are identifiers, never dotted), so no
# extra var can take the name of the form's own fields (csrf, environment, action, release, ...).
PREFIX = "var."
# The form's own fields; everything else posted is an extra var's field.
STEP, CSRF = "step", "csrf"
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
# Empty rows a key/value field offers beyond the filled ones (the page's "Add a row" adds more).
SPARE_ROWS = 2
# What is left out of the extra vars: a field left empty passes nothing, and the inventory's value holds.
_UNSET = object()


@dataclass(frozen=True)
class Field:
    """One property of the action's extra-vars schema, as the form shows it.

    kind: text, secret (a password input), choice (an enum), integer, number, checkbox (a boolean with a
    default: always passed), boolean (no default: not passed, true or false), mapping (an object of
    strings: key/value rows) or yaml (anything else: that one value written in YAML).
    """

    name: str
    kind: str
    description: str = ""
    required: bool = False
    # (the option's text, the value it stands for)
    choices: tuple[tuple[str, Any], ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    default: Any = None
    has_default: bool = False

    @property
    def input_name(self) -> str:
        return PREFIX + self.name

    @property
    def placeholder(self) -> str:
        return f"default: {as_text(self.default)}" if self.has_default else ""


def as_text(value: Any) -> str:
    """A value as a form shows it: a string as itself, anything else as JSON (true, 2, [1, 2])."""
    return value if isinstance(value, str) else json.dumps(value)


def _kind(name: str, prop: dict[str, Any]) -> str:
    enum = prop.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(v, (str, int, float, bool)) for v in enum):
        return "choice"
    kind = prop.get("type")
    if isinstance(kind, list):  # ["string", "null"]: a string, or nothing
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind == "string":
        return "secret" if prop.get("writeOnly") is True or secret_key(name) else "text"
    if kind in ("integer", "number"):
        return str(kind)
    if kind == "boolean":
        return "checkbox" if "default" in prop else "boolean"
    values = prop.get("additionalProperties")
    if kind == "object" and not prop.get("properties") and isinstance(values, dict) and values.get("type") == "string":
        return "mapping"
    return "yaml"


def fields_of(action: Action) -> list[Field]:
    """The fields of the action's extra vars, in the schema's order; its release variable is the form's
    release field (the registry's tags), not one of them."""
    schema = action.extra_vars_schema
    props = schema.get("properties")
    if not isinstance(props, dict):
        return []
    required = set(schema.get("required") or ())
    release = action.release.variable if action.release else None
    fields = []
    for name, prop in props.items():
        if name == release:
            continue
        prop = prop if isinstance(prop, dict) else {}
        kind = _kind(name, prop)
        number = kind in ("integer", "number")
        fields.append(Field(
            name=name, kind=kind, required=name in required,
            description=str(prop.get("description") or prop.get("title") or ""),
            choices=tuple((as_text(v), v) for v in prop["enum"]) if kind == "choice" else (),
            minimum=prop.get("minimum") if number else None,
            maximum=prop.get("maximum") if number else None,
            max_length=prop.get("maxLength") if kind in ("text", "secret") else None,
            default=prop.get("default"), has_default="default" in prop,
        ))
    return fields


def takes_free_vars(action: Action) -> bool:
    """Whether the schema takes extra vars beyond its properties: only then does the form offer free YAML."""
    schema = action.extra_vars_schema
    return schema.get("additionalProperties", True) is not False and schema.get("unevaluatedProperties") is not False


@dataclass
class LaunchForm:
    """The launch form as posted (or as a link's query asked for it): every field kept as typed, so the
    form can be shown again with them after an error, a Back or a change of action."""

    items: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def of(cls, items: Iterable[tuple[str, Any]]) -> LaunchForm:
        return cls([(k, v) for k, v in items if isinstance(v, str)])

    def value(self, name: str) -> str | None:
        """The last value posted under `name` (a checkbox's "true" follows its hidden "false"); None: absent."""
        found = [v for k, v in self.items if k == name]
        return found[-1] if found else None

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.items if k == name]

    @property
    def environment(self) -> str:
        return self.value("environment") or ""

    @property
    def action(self) -> str:
        return self.value("action") or ""

    @property
    def release(self) -> str:
        return (self.value("release") or "").strip()

    @property
    def step(self) -> str:
        return self.value(STEP) or "review"

    @property
    def free_vars(self) -> str:
        return self.value("extra_vars") or ""

    @property
    def limit(self) -> str:
        return (self.value("limit") or "").strip()

    @property
    def check(self) -> bool:
        return self.value("check") == "true"

    @property
    def diff(self) -> bool:
        return self.value("diff") == "true"

    @property
    def carried(self) -> list[tuple[str, str]]:
        """What the confirmation page posts back, hidden: everything but the CSRF token and the step."""
        return [(k, v) for k, v in self.items if k not in (CSRF, STEP)]

    # ----- showing the fields again -------------------------------------------------------------

    def text(self, f: Field) -> str:
        return self.value(f.input_name) or ""

    def checked(self, f: Field) -> bool:
        posted = self.value(f.input_name)
        return posted == "true" if posted is not None else f.default is True

    def rows(self, f: Field) -> list[tuple[str, str]]:
        """A key/value field's rows: the filled ones, then SPARE_ROWS empty ones."""
        return self._pairs(f) + [("", "")] * SPARE_ROWS

    def _pairs(self, f: Field) -> list[tuple[str, str]]:
        keys, values = self.values(f.input_name + ".key"), self.values(f.input_name + ".value")
        return [(k, v) for k, v in zip(keys, values, strict=False) if k.strip() or v.strip()]

    # ----- the extra vars they make ---------------------------------------------------------------

    def extra_vars(self, fields: list[Field]) -> dict[str, Any]:
        """The extra vars the fields and the free YAML say, for validate_launch to check."""
        free = parse_extra_vars(self.free_vars)
        if not isinstance(free, dict):
            raise ConsoleError(422, "extra variables: write name: value pairs (a YAML mapping or a JSON object)")
        out: dict[str, Any] = dict(free)
        for f in fields:
            value = self._read(f)
            if value is _UNSET:
                continue
            if f.name in out:
                raise ConsoleError(422, f"{f.name} is given twice: in its field and in the extra variables")
            out[f.name] = value
        return out

    def _read(self, f: Field) -> Any:
        if f.kind == "mapping":
            mapping: dict[str, str] = {}
            for key, value in ((k.strip(), v.strip()) for k, v in self._pairs(f)):
                if key in mapping:
                    raise ConsoleError(422, f"{f.name}: {key!r} is given twice")
                mapping[key] = value
            return mapping or _UNSET
        raw = self.value(f.input_name)
        if raw is None:
            return _UNSET
        if f.kind == "checkbox":
            return raw == "true"
        # A password is taken as typed; any other single-line field without the spaces around it.
        text = raw if f.kind == "secret" else raw.strip()
        if text == "":
            return _UNSET
        if f.kind == "boolean":
            return {"true": True, "false": False}.get(text, text)
        if f.kind == "choice":
            return dict(f.choices).get(text, text)
        if f.kind in ("integer", "number") and _INTEGER.match(text):
            return int(text)
        if f.kind == "number":
            try:
                number = float(text)
            except ValueError:
                return text
            return number if math.isfinite(number) else text
        if f.kind == "yaml":
            return parse_extra_vars(text, what=f.name)
        # text, secret, or a number field's text that is no number: the schema says what is wrong with it.
        return text
