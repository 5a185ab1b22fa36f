"""Options an engine kind takes: declared once, parsed in one place.

The same declaration serves the server settings (SATSCALE_<KIND>_<NAME>, the TOML file), the
command line flags and the per-job values of a request, so a value is checked the same way
whichever door it came through.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ParameterError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Option:
    name: str
    type: type  # bool, int, float or str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    #: a request may set it for its own run (otherwise it is a server or command-line setting)
    per_job: bool = False
    max_length: int = 500

    def with_default(self, value: Any) -> Option:
        return replace(self, default=value)

    def parse(self, value: Any) -> Any:
        """A value of this option from Python, JSON, a form field or an environment variable;
        anything else is refused naming the option and what it takes."""
        if value is None:
            return None
        parsed = self._convert(value)
        if self.choices and parsed not in self.choices:
            raise ParameterError(f"{self.name} {parsed!r} is not one of {', '.join(self.choices)}")
        number = isinstance(parsed, int | float) and not isinstance(parsed, bool)
        if number and (
            (self.minimum is not None and parsed < self.minimum) or (self.maximum is not None and parsed > self.maximum)
        ):
            raise ParameterError(f"{self.name} must be between {_num(self.minimum)} and {_num(self.maximum)}")
        return parsed

    def _convert(self, value: Any) -> Any:
        wrong = ParameterError(f"{self.name} must be {_TYPE_NAMES[self.type]}, not {_shown(value)}")
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise wrong
        if self.type is int:
            if isinstance(value, bool):
                raise wrong
            if isinstance(value, int):
                return value
            if isinstance(value, str) and value.strip().lstrip("-").isdecimal() and value.isascii() and len(value) < 20:
                return int(value)
            raise wrong
        if self.type is float:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise wrong
            try:
                number = float(value)
            except ValueError:
                raise wrong from None
            if not math.isfinite(number):
                raise wrong
            return number
        if not isinstance(value, str) or "\x00" in value:
            raise wrong
        if len(value) > self.max_length:
            raise ParameterError(f"{self.name} is longer than {self.max_length} characters")
        return value

    def describe(self) -> dict:
        """JSON-ready: what a client may send (the model listing shows it)."""
        row: dict = {"name": self.name, "type": _TYPE_NAMES[self.type], "default": self.default, "help": self.help}
        if self.choices:
            row["choices"] = list(self.choices)
        if self.minimum is not None:
            row["minimum"] = self.minimum
        if self.maximum is not None:
            row["maximum"] = self.maximum
        return row


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "text"}


def _num(value: float | None) -> str:
    return "any" if value is None else f"{value:g}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_values(options: Iterable[Option], values: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """Check named values against the options: unknown names are refused (naming what is taken),
    each value is parsed by its option, and None (not given) is dropped."""
    known = {option.name: option for option in options}
    values = dict(values or {})
    unknown = sorted(set(values) - set(known))
    if unknown:
        taken = ", ".join(sorted(known)) or "none"
        noun = "option" if len(unknown) == 1 else "options"
        raise ParameterError(f"{what}: unknown {noun} {', '.join(map(repr, unknown))} (known: {taken})")
    parsed = {name: known[name].parse(value) for name, value in values.items()}
    return {name: value for name, value in parsed.items() if value is not None}
