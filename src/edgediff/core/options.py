"""One source for every option: the options dataclasses make the CLI flags and the recipe TOML keys.

    @dataclass(frozen=True)
    class FooOptions:
        steps: int = option(20, help="sampling steps", parse=positive_int)
        sampler: str = option("ddim", help="the solver", choices=lambda: tuple(SOLVERS))

    add_options(parser, FooOptions)            --steps N (default 20), --sampler {ddim,...}
    options_from_args(FooOptions, namespace)   FooOptions(steps=..., sampler=...)
    options_from_table(FooOptions, table, where)   a recipe TOML table, errors named "where: field ..."

A field's metadata (what `option` writes) says everything the CLI and the TOML reader need:
    help      one line for --help
    choices   a tuple, or a function returning one (a registry's names, read when the parser is built);
              a Literal annotation gives them too
    name      the option's name where it differs from the field's: CLI --name-with-dashes, TOML name
    switch    (FLAG, VALUE): a flag without argument that sets the field to VALUE (--quiet: progress False);
              the TOML key is then the option's name, set to the value itself
    parse     text -> value for argparse (raises argparse.ArgumentTypeError); also checks TOML numbers
    metavar   for --help
    cli       False: Python API only, neither a flag nor a TOML key
The type comes from the annotation: int, float, str, bool (--x / --no-x), X | None, tuple[X, ...]
(a repeatable flag, a TOML list). Defaults are the dataclass's own; no caller writes them again.

A default that depends on the model source (a distilled student's sampler and steps) is asked for
with `unset=`: the flag's default is UNSET, and `options_from_args(..., fill=)` takes the
source's value, else the dataclass default.
"""

from __future__ import annotations

import argparse
import inspect
import math
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields

from edgediff.core.errors import EdgediffError


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()  # a flag's default when the value depends on the source (filled by options_from_args)


def option(
    default=MISSING,
    *,
    help: str,
    choices=None,
    name: str | None = None,
    switch: tuple[str, object] | None = None,
    parse=None,
    metavar: str | None = None,
    cli: bool = True,
) -> Field:
    """A dataclass field with its CLI/TOML description (see the module docstring)."""
    meta = {"help": help, "choices": choices, "name": name, "switch": switch, "parse": parse, "metavar": metavar}
    meta["cli"] = cli
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------- argparse types
def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return v


def pattern_value(text: str) -> tuple[str, float]:
    """'PATTERN=R' -> (PATTERN, R)."""
    pattern, sep, r = text.rpartition("=")
    try:
        if sep and pattern:
            return pattern, float(r)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r}: expected PATTERN=RATIO, e.g. 'down_blocks.0.*=0.25'")


def number_range(text: str) -> tuple[float, float]:
    """'LO,HI' -> (LO, HI) with LO <= HI."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers), got {text!r}") from None
    if not lo <= hi:
        raise argparse.ArgumentTypeError(f"need LO <= HI, got {text!r}")
    return lo, hi


# ---------------------------------------------------------------- what a field is
@dataclass(frozen=True)
class _Opt:
    field: Field
    name: str  # option name: TOML key, CLI flag with dashes
    base: type  # int | float | str | bool | tuple (a fixed-length tuple, read with `parse`)
    optional: bool  # X | None
    seq: bool  # tuple[X, ...]: repeatable flag, TOML list
    item: object  # seq: the items' type hint
    literal: tuple | None

    @property
    def meta(self):
        return self.field.metadata

    @property
    def flag(self) -> str:
        sw = self.meta.get("switch")
        return "--" + (sw[0] if sw else self.name).replace("_", "-")

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def default(self):
        return self.field.default

    def choices(self) -> tuple | None:
        c = self.meta.get("choices")
        if c is None:
            return self.literal
        return tuple(c() if callable(c) else c)


def _split(hint):
    """(base, optional, seq, item, literal) of a field's type hint."""
    optional = False
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        optional = True
        rest = [a for a in args if a is not type(None)]
        hint = rest[0]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return type(args[0]), optional, False, None, tuple(args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple, optional, True, args[0], None
        return tuple, optional, False, args, None
    return hint, optional, False, None, None


def _opts(cls, only=None, prefix: str = "") -> list[_Opt]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        if not f.metadata.get("cli", True) or (only is not None and f.name not in only):
            continue
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with edgediff.core.options.option(...)")
        base, optional, seq, item, literal = _split(hints[f.name])
        name = prefix + (f.metadata.get("name") or f.name)
        out.append(_Opt(f, name, base, optional, seq, item, literal))
    if only is not None:
        missing = set(only) - {o.field.name for o in out}
        if missing:
            raise TypeError(f"{cls.__name__}: no option field(s) {', '.join(sorted(missing))}")
    return out


def _key(cls, prefix: str) -> str:
    return f"_options_{cls.__module__}.{cls.__qualname__}:{prefix}"


def _show(v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return f"{v:g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------- argparse
def add_options(parser, cls, *, only=None, prefix: str = "", unset=(), unset_note: str = "") -> list:
    """Add a flag per option field of `cls` (all, or the field names in `only`) to `parser`.

    `prefix` goes before every option name (flags and TOML keys). Fields named in `unset` default to
    UNSET, filled by `options_from_args(fill=)`; `unset_note` then ends their help ("or the student's").
    Returns the argparse actions it added.
    """
    actions, record = [], []
    for o in _opts(cls, only, prefix):
        m = o.meta
        help_text = m["help"]
        kw: dict = {"dest": o.dest}
        sw = m.get("switch")
        if sw:
            kw |= {"action": "store_const", "const": sw[1], "default": o.default}
        elif o.base is bool:
            kw |= {"action": argparse.BooleanOptionalAction, "default": o.default}
            help_text += f" (default {_show(o.default)})"
        else:
            kw["type"] = m.get("parse") or (o.item if o.seq else o.base)
            if kw["type"] is tuple:
                raise TypeError(f"{cls.__name__}.{o.field.name}: a tuple option needs parse=")
            if o.seq:
                kw |= {"action": "append", "default": None}
                help_text += " (repeatable)"
            else:
                kw["default"] = UNSET if o.field.name in unset else o.default
                if o.default is not None:
                    more = f", {unset_note}" if o.field.name in unset and unset_note else ""
                    help_text += f" (default {_show(o.default)}{more})"
            choices = o.choices()
            if choices is not None:
                kw["choices"] = choices
            if m.get("metavar"):
                kw["metavar"] = m["metavar"]
        actions.append(parser.add_argument(o.flag, help=help_text.replace("%", "%%"), **kw))
        record.append((o.field.name, o.dest, o.seq))
    parser.set_defaults(**{_key(cls, prefix): tuple(record)})
    return actions


def options_from_args(cls, ns: argparse.Namespace, *, prefix: str = "", fill: dict | None = None):
    """The `cls` that the flags `add_options(parser, cls, prefix=prefix)` added were set to.

    An UNSET value takes `fill[field]` if there is one, else the dataclass default.
    """
    record = getattr(ns, _key(cls, prefix), None)
    if record is None:
        raise TypeError(f"{cls.__name__}: add_options(parser, {cls.__name__}, prefix={prefix!r}) was not called")
    kw = {}
    for name, dest, seq in record:
        v = getattr(ns, dest)
        if v is UNSET:
            if fill and name in fill:
                kw[name] = fill[name]
            continue
        if seq:
            if v is None:
                continue
            v = tuple(v)
        kw[name] = v
    return cls(**kw)


# ---------------------------------------------------------------- TOML tables
def option_names(cls, *, only=None, prefix: str = "") -> set[str]:
    """The keys a TOML table of `cls` options takes (the flag names, with underscores)."""
    return {o.dest for o in _opts(cls, only, prefix)}


def options_from_table(cls, table: dict, where: str, *, only=None, prefix: str = "", fill: dict | None = None):
    """`cls` from the keys of `table` that are its options (others are the caller's to check).

    Values are checked against the field's type, parse function and choices; an error names
    `where` and the key. `fill` supplies fields the table does not set (before the dataclass default).
    """
    kw = dict(fill or {})
    for o in _opts(cls, only, prefix):
        if o.dest in table:
            kw[o.field.name] = _coerce(table[o.dest], o, where)
    try:
        return cls(**kw)
    except EdgediffError as e:
        raise EdgediffError(f"{where}: {e}") from None


def _coerce(value, o: _Opt, where: str):
    def bad(what: str):
        return EdgediffError(f"{where}: field {o.dest} must be {what}, got {value!r}")

    if o.meta.get("switch"):  # the TOML key sets the field itself (progress = false)
        return _scalar(value, o.base, o, where, bad)
    if o.seq:
        if not isinstance(value, list):
            raise bad("a list")
        return tuple(_item(v, o, where, bad) for v in value)
    if o.base is tuple:
        return _item(value, o, where, bad)
    return _scalar(value, o.base, o, where, bad)


def _item(value, o: _Opt, where: str, bad):
    """One item of a list option, or a fixed-length tuple option: text for `parse`, or a TOML list."""
    parse = o.meta.get("parse")
    if isinstance(value, str) and parse is not None:
        return _parsed(parse, value, o, where)
    parts = o.item
    if o.seq:
        if typing.get_origin(o.item) is not tuple:
            return _scalar(value, o.item, o, where, bad)
        parts = typing.get_args(o.item)
    if not isinstance(value, list) or len(value) != len(parts):
        raise bad(f"a list of {len(parts)} values")
    return tuple(_scalar(v, t, o, where, bad) for v, t in zip(value, parts, strict=True))


def _scalar(value, base, o: _Opt, where: str, bad):
    if base is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if base in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or (base is int and isinstance(value, float)):
            raise bad("an integer" if base is int else "a number")
        value = base(value)
        parse = o.meta.get("parse")
        if parse is not None and not o.seq and o.base is not tuple:
            return _parsed(parse, str(value), o, where)
        return value
    if not isinstance(value, str):
        raise bad("a string")
    choices = o.choices()
    if choices is not None and value not in choices and not o.seq:
        raise EdgediffError(f"{where}: field {o.dest} is {value!r}; choose one of {', '.join(map(str, choices))}")
    return value


def _parsed(parse, text: str, o: _Opt, where: str):
    try:
        return parse(text)
    except argparse.ArgumentTypeError as e:
        raise EdgediffError(f"{where}: field {o.dest}: {e}") from None


# ---------------------------------------------------------------- a verb's own arguments
def verb_defaults(fn) -> dict:
    """{parameter: default} of `fn`'s keyword parameters: the CLI and the TOML reader take a verb's
    defaults (distill's steps, compile's target) from its signature instead of writing them again."""
    return {
        p.name: p.default for p in inspect.signature(fn).parameters.values() if p.default is not inspect.Parameter.empty
    }
