"""The full generality matrix: every diffusers folder variant x every target profile (+ W8A8 where
the format takes the quantize pass's int8 graph), compiled through `compile_model`.

    python benchmarks/generality.py [--variants unet-plain,dit-legacy-bare] [--targets pixel-8]
                                    [--no-w8a8] [--json out/generality.json]

Variants are tests/generality_models.py's VARIANTS (tiny models, save_pretrained layouts). Each row:
variant, target, format, precision, status (ok, or the one-line EdgediffError), the verification's
max relative error against PyTorch (Core ML: "structural", its numerics need macOS). A variant
whose `expect` is set must fail with an EdgediffError containing it: status "refused (expected)".
Anything other than an EdgediffError is a bug and is printed as "CRASH". Each folder is loaded
once and the ModelSpec compiled for every target, so the ONNX export is made once per variant
(src/edgediff/lower/onnx.py keeps it per module).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from generality_models import VARIANTS  # noqa: E402

from edgediff.compiler.capture import load_source  # noqa: E402
from edgediff.compiler.pipeline import compile_model  # noqa: E402
from edgediff.compiler.recipe import Recipe  # noqa: E402
from edgediff.compiler.routes import formats_for  # noqa: E402
from edgediff.core.errors import EdgediffError  # noqa: E402
from edgediff.targets import available_targets, load_target  # noqa: E402


def run_one(src, out: Path, target: str, recipe: Recipe, expect: str | None) -> dict:
    t0 = time.perf_counter()
    row = {"status": "ok", "precision": "", "max_rel_error": None}
    try:
        if isinstance(src, Exception):  # the folder did not load: every target gets the loader's error
            raise src
        b = compile_model(src, out, target=target, recipe=recipe)
        row["precision"] = b.manifest["model"]["precision"]
        v = b.report["verify"]
        row["max_rel_error"] = v.get("max_rel_error", "structural")
        if expect is not None:
            row["status"] = f"UNEXPECTED ok (expected an error naming {expect})"
    except EdgediffError as e:
        msg = str(e).splitlines()[0]
        if expect is not None and expect in msg:
            row["status"] = f"refused (expected): {msg}"
        else:
            row["status"] = f"error: {msg}"
    except Exception as e:  # a deep traceback is itself a failure of the compiler
        row["status"] = f"CRASH {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--targets", default=",".join(available_targets()))
    ap.add_argument("--no-w8a8", action="store_true", help="skip the W8A8 rows")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = []
    print(f"{'variant':26} {'target':22} {'format':8} {'precision':9} {'max err':>9} {'s':>6}  status")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants.split(","):
            v = VARIANTS[name]
            folder = v.write(Path(tmp) / name)
            try:
                src = load_source(str(folder))
            except Exception as e:  # reported per target by run_one
                src = e
            for target in args.targets.split(","):
                fmt = load_target(target).format
                base = dict(sampler="ddim", steps=2, guidance=2.0, **(v.recipe or {}))
                recipes = [("default", Recipe(**base))]
                if not args.no_w8a8 and fmt in formats_for("w8a8") and "int8" in load_target(target).precisions:
                    recipes.append(("w8a8", Recipe(**base, quantize="w8a8", calib_samples=4)))
                for label, recipe in recipes:
                    out = Path(tmp) / "bundles" / f"{name}-{target}-{label}"
                    row = {
                        "variant": name,
                        "target": target,
                        "format": fmt,
                        "recipe": label,
                        **run_one(src, out, target, recipe, v.expect),
                    }
                    rows.append(row)
                    err = row["max_rel_error"]
                    err_s = "" if err is None else (err if isinstance(err, str) else f"{err:.2e}")
                    prec = row["precision"] + ("(w8a8)" if label == "w8a8" and row["precision"] else "")
                    print(
                        f"{name:26} {target:22} {fmt:8} {prec:9} {err_s:>9} {row['seconds']:6.1f}  {row['status']}",
                        flush=True,
                    )
                    if args.json:  # after every row: an interrupted run keeps what it measured
                        _write_json(args.json, rows)
    ok = sum(r["status"] == "ok" for r in rows)
    refused = sum(r["status"].startswith("refused (expected)") for r in rows)
    failed = [r for r in rows if r["status"] != "ok" and not r["status"].startswith("refused (expected)")]
    print(f"\n{len(rows)} compiles: {ok} ok, {refused} refused as expected, {len(failed)} failed")
    for r in failed:
        print(f"  FAILED {r['variant']} {r['target']} {r['recipe']}: {r['status']}")
    if args.json:
        _write_json(args.json, rows)
    return 1 if failed else 0


def _write_json(path: Path, rows: list[dict]) -> None:
    ok = sum(r["status"] == "ok" for r in rows)
    refused = sum(r["status"].startswith("refused (expected)") for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"rows": rows, "ok": ok, "refused_expected": refused, "failed": len(rows) - ok - refused}, indent=2)
    )


if __name__ == "__main__":
    sys.exit(main())
