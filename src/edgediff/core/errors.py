"""The one exception type users see.

Every error a user can cause (bad source, bad bundle, bad option) is raised as
``EdgediffError`` with a message that names the file, field, layer or option at fault.
The CLI prints it as one line and exits non-zero; nothing else is caught there, so a
bug still shows its traceback.
"""


class EdgediffError(Exception):
    """A problem with the user's input, explained in one line."""


def check_known_keys(d: dict, cls, what: str) -> None:
    """Refuse keys of `d` that are not fields of the dataclass `cls` (configs' strict `from_dict`)."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise EdgediffError(f"{what}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
