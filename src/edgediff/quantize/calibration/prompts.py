"""Prompts to calibrate a text-to-image denoiser on: a file of one prompt a line, or a builtin list.

read_prompt_file(path)   UTF-8 (a BOM is accepted), one prompt a line, blank lines skipped;
                         every problem is one EdgediffError naming the file and the line
GENERIC_PROMPTS          the default for a pipeline with no list of its own: short captions
                         of common photo subjects (builtin:digits-sd has its own,
                         compiler/text.py calibration_prompts)
"""

from __future__ import annotations

from pathlib import Path

from edgediff.core.errors import EdgediffError

GENERIC_PROMPTS = (
    "a photograph of a cat sitting on a sofa",
    "a dog running on the beach",
    "a red car parked on a city street",
    "a mountain landscape at sunset",
    "a portrait of an old man, studio lighting",
    "a bowl of fruit on a wooden table",
    "a city skyline at night",
    "a watercolor painting of a forest",
    "an astronaut riding a horse",
    "a close-up of a flower",
    "a cozy living room with a fireplace",
    "a plate of food in a restaurant",
)
MAX_CHARS = 1000  # one prompt; a longer line is most likely not a prompts file


def read_prompt_file(path: str | Path, *, what: str = "--calib-prompts") -> list[str]:
    """The prompts of `path`, one a line (stripped; blank lines skipped)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise EdgediffError(f"{what} {path}: a folder; expected a text file of prompts, one a line") from None
    except OSError as e:
        raise EdgediffError(f"{what} {path}: cannot read the prompts file ({e.strerror})") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise EdgediffError(f"{what} {path}: line {line}: not UTF-8 (invalid byte at offset {e.start})") from None
    prompts = []
    for k, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r").strip()
        if not line:
            continue
        bad = next((ch for ch in line if ord(ch) < 32 and ch != "\t"), None)
        if bad is not None:
            raise EdgediffError(f"{what} {path}: line {k}: control character {bad!r}; a prompt is plain text")
        if len(line) > MAX_CHARS:
            raise EdgediffError(f"{what} {path}: line {k}: {len(line)} characters; a prompt is at most {MAX_CHARS}")
        prompts.append(line)
    if not prompts:
        raise EdgediffError(f"{what} {path}: no prompts (one a line)")
    return prompts
