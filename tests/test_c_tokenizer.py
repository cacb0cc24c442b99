"""The C CLIP tokenizer (csrc/src/tokenizer.c) against transformers' CLIPTokenizer.

A CLIP-format tokenizer is built here: a BPE learnt with the `tokenizers` library on a small
corpus, written as vocab.json + merges.txt in CLIP's layout (the 256 byte characters, the same
with "</w>", one token per merge, then the special tokens). The C ids must equal
CLIPTokenizer's on every string. In transformers 5 `CLIPTokenizerFast` is the same class as
`CLIPTokenizer` (the pure-Python implementation is gone), so one reference covers both.
"""

import json
import random
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")
C = pytest.importorskip("edgediff.runtimes._cruntime")

from edgediff.core.errors import EdgediffError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

CORPUS = [
    "a photograph of an astronaut riding a horse on the moon, highly detailed, 4k",
    "the quick brown fox's tail isn't red; we've seen it, they'll say, I'm sure he'd agree",
    "café naïve über straße façade crème brûlée ÅNGSTRÖM Ελληνικά русский язык",
    "東京タワーの夜景 北京 서울의 밤 हिन्दी العربية",
    "digits 0123456789 and 3.14159, 1,000,000 dollars!!! ??? ... --- ***",
    "emoji 😀🎉👍🏽 👨‍👩‍👧 🇫🇷 ★☆♥",
]


def byte_chars() -> list[str]:
    """CLIP's byte-to-unicode table, written out from its definition."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def learn_merges(corpus: list[str], vocab_size: int) -> list[str]:
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(corpus * 20, trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def write_clip_folder(folder: Path, merges: list[str], specials=("<|startoftext|>", "<|endoftext|>")) -> Path:
    chars = byte_chars()
    vocab = chars + [c + "</w>" for c in chars]
    seen = set(vocab)
    kept = []
    for m in merges:
        a, b = m.split(" ")
        if a in seen and b in seen and a + b not in seen:
            vocab.append(a + b)
            seen.add(a + b)
            kept.append(m)
    vocab += [s for s in specials if s not in seen]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(kept) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def merges() -> list[str]:
    return learn_merges(CORPUS, 1500)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, merges) -> Path:
    return write_clip_folder(tmp_path_factory.mktemp("clip-tok"), merges)


def reference(folder: Path, texts: list[str], max_len: int = 77) -> list[tuple[list[int], int]]:
    tok = transformers.CLIPTokenizer.from_pretrained(str(folder))
    full = tok(texts)["input_ids"]
    cut = tok(texts, padding="max_length", max_length=max_len, truncation=True)["input_ids"]
    return [(c, len(f)) for c, f in zip(cut, full)]


# ---- the strings -------------------------------------------------------------------------------

POOLS = {
    "ascii": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "digits": "0123456789",
    "punct": "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "space": " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2007\u200a\u200b\u2028\u2029\u202f\u205f\u3000",
    "control": "\x00\x01\x07\x1b\x7f\x80\x9f\u200d\ufeff\u00ad",
    "accents": "àáâãäåçèéêëìíîïñòóôõöùúûüýÿÀÉÎÕÜĀăĄćĉčĎđĒėęěĞġģĥĦĩīĭįİıĲĵĶĸĹļľŀŁńņňŉŊōŏőŒŕŗřśŝşšţťŧũūŭůűųŵŷŸźżžſ",
    "combining": "\u0300\u0301\u0302\u0303\u0308\u030a\u0323\u0327\u0328\u0345\u031b\u0336\u20dd",
    "greek_cyr": "ΑΒΓΔΣσςΩωάέήίΐΰϊϋόύώЀЁЖЙЯжйяѐёњҐґ",
    "special_case": "İΣẞßﬁﬂǅǈǋΩKÅⅠⅫⓐⒶ\u0130\u03a3\u1e9e\u2126\u212a\u212b",
    "cjk": "東京北京上海中文字漢字日本語ひらがなカタカナｶﾀｶﾅ한국어서울가각힣각",
    "fullwidth": "ＡＢＣａｂｃ０１２！？：",
    "numbers": "²³¹¼½¾٠١٢٣۴۵०१२३৪৫ⅠⅡⅢ①②③",
    "other": "ﷺ؟،ـ\u0640\u064b\u0651अआइक्षत्रज्ञ\u094d",
    "emoji": ["😀", "🎉", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "❤️", "★", "\U0001f9d1\u200d\U0001f680", "🏳️‍🌈"],
}
WORDS = [
    "photo",
    "of",
    "an",
    "astronaut",
    "riding",
    "horse",
    "it's",
    "isn't",
    "WE'VE",
    "they'll",
    "I'M",
    "he'd",
    "you're",
    "'s",
    "''",
    "<|startoftext|>",
    "<|endoftext|>",
    "<|ENDOFTEXT|>",
    "<|endoftext",
    "|>",
    "<|",
    "café",
    "cafe\u0301",
    "Å",
    "A\u030a",
    "\u212b",
    "한\u1100\u1161",
    "\u1100\u1161\u11a8",
    "!!!",
    "...",
    "4k",
    "8K",
    "3.14",
]


def assigned(cp: int) -> bool:
    return unicodedata.category(chr(cp)) not in ("Cn", "Cs", "Co")


def generated(rng: random.Random, count: int) -> list[str]:
    keys = list(POOLS)
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 14)):
            r = rng.random()
            if r < 0.3:
                parts.append(rng.choice(WORDS))
            elif r < 0.45:
                # any assigned code point (Unicode 14), mostly from the BMP
                hi = 0x30000 if rng.random() < 0.2 else 0x10000
                cp = rng.randrange(hi)
                while not assigned(cp):
                    cp = rng.randrange(hi)
                parts.append(chr(cp))
            else:
                pool = POOLS[rng.choice(keys)]
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 6))))
            if rng.random() < 0.5:
                parts.append(rng.choice([" ", "  ", "\t", "\n", " \n ", ""]))
        out.append("".join(parts))
    return out


def fixed_strings() -> list[str]:
    long_prompt = ", ".join(["a highly detailed matte painting of a castle"] * 30)
    return [
        "",
        " ",
        "   \t\n  ",
        "a photo of an astronaut riding a horse",
        "  leading and trailing  ",
        "multiple    spaces\tand\ttabs\nand\nnewlines\r\n",
        "UPPER lower MiXeD",
        "It's what they've done; we'll see, I'd say you're sure he's",
        "x'S Y'T z'RE",
        "'''s ''t",
        "!!!???...,,,;;;:::",
        "(((masterpiece))), [[best quality]], {{{detailed}}}",
        "0123456789 12,345.678 ₁₂₃ ²³",
        "😀😃😄😁 👍🏽👍🏿 👨‍👩‍👧‍👦 🇯🇵🇺🇸",
        "東京タワー 北京烤鸭 서울 특별시 ﾊﾝｶｸ",
        "naïve café résumé Ångström Straße ΣΊΣΥΦΟΣ İstanbul",
        "e\u0301 a\u0308 A\u030a \u212b \u1e9b\u0323 q\u0307\u0323",
        "\u1100\u1161\u11a8 \uac00\u11a8 \u1100\u1161",
        "ﬁﬂ ǅ Ⅻ ⓐ Ⓐ K",
        "<|startoftext|>hello<|endoftext|>",
        "<|endoftext|><|endoftext|>x",
        "!<|endoftext|>! <|ENDOFTEXT|>! <|EndOfText|>!!",
        "<|startoftext",
        long_prompt,
        "word " * 200,
        "x" * 300,
        "é" * 100,
        "a" * 5000,
        "\x00\x01\x02 nul and controls \x7f",
        "\u200b zero\u200bwidth \ufeffbom \u00adsoft",
        "\u00a0nbsp\u3000ideographic\u2028line\u2029para\u0085nel",
        "\x1c\x1d\x1e\x1f info separators",
    ]


def test_c_equals_clip_tokenizer_on_many_strings(folder):
    rng = random.Random(17)
    texts = fixed_strings() + generated(rng, 1200)
    assert len(texts) >= 1000
    ref = reference(folder, texts)
    got = C.tokenize(str(folder), texts)
    bad = [(t, r, g) for t, r, g in zip(texts, ref, got) if r != g]
    assert not bad, f"{len(bad)} of {len(texts)} differ; first: {bad[0]!r}"
    # the set exercises truncation and the empty string
    assert any(n > 77 for _, n in ref) and any(n == 2 for _, n in ref)


def test_c_equals_clip_tokenizer_with_merges_learnt_on_mixed_scripts(tmp_path):
    """A second vocabulary, learnt on the generated strings themselves, so that long merges
    over accents, CJK, emoji bytes and punctuation runs apply (not only byte tokens)."""
    rng = random.Random(5)
    d = write_clip_folder(tmp_path / "mixed", learn_merges(generated(rng, 400), 4000))
    texts = generated(rng, 300) + fixed_strings()
    ref = reference(d, texts)
    assert C.tokenize(str(d), texts) == ref
    vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) > 2000 and sum(n for _, n in ref) < 0.7 * sum(len(t.encode()) + 2 for t in texts)


def test_truncation_keeps_eos_and_reports_full_length(folder):
    texts = ["word " * 100, "a b", "x" * 40]
    for max_len in (2, 3, 5, 16, 77, 200):
        ref = reference(folder, texts, max_len)
        assert C.tokenize(str(folder), texts, max_len) == ref
    ids, full = C.tokenize(str(folder), "word " * 100, 8)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert ids[0] == vocab["<|startoftext|>"] and ids[-1] == vocab["<|endoftext|>"]
    assert full == reference(folder, ["word " * 100])[0][1] > 100


def test_tokenizer_json_and_configs(tmp_path, folder):
    """tokenizer.json only (model.vocab / model.merges, as the fast tokenizer saves it), and a
    config that changes the pad token (SD 2.x uses "!") and model_max_length."""
    tok = transformers.CLIPTokenizer.from_pretrained(str(folder))
    json_only = tmp_path / "json-only"
    tok.save_pretrained(str(json_only))
    for name in ("vocab.json", "merges.txt"):
        (json_only / name).unlink(missing_ok=True)
    assert (json_only / "tokenizer.json").exists()
    texts = fixed_strings()[:20]
    assert C.tokenize(str(json_only), texts) == reference(folder, texts)

    sd2 = write_clip_folder(tmp_path / "sd2", learn_merges(CORPUS, 800))
    (sd2 / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 40, "pad_token": "!"}))
    (sd2 / "special_tokens_map.json").write_text(
        json.dumps({"pad_token": {"content": "!", "lstrip": False, "normalized": False}})
    )
    texts = ["hello world", "a!b !! c", "", "word " * 60]
    ref = transformers.CLIPTokenizer.from_pretrained(str(sd2))
    want = [
        (c, len(f))
        for c, f in zip(
            ref(texts, padding="max_length", max_length=40, truncation=True)["input_ids"], ref(texts)["input_ids"]
        )
    ]
    got = C.tokenize(str(sd2), texts)
    assert len(got[0][0]) == 40
    assert got == want


def test_invalid_utf8_names_the_byte(folder):
    cases = [
        b"abc\xffdef",
        b"\xc3",
        b"ok \xc3\x28",
        b"\xe0\x80\x80",  # overlong
        b"\xed\xa0\x80",  # a surrogate
        b"\xf4\x90\x80\x80",  # over U+10FFFF
        b"\xc0\xaf",
        b"a\x80",
        "東京".encode()[:-1] + b" x",
        b"\xf0\x9f\x98",
    ]
    for raw in cases:
        with pytest.raises(UnicodeDecodeError) as py:
            raw.decode("utf-8")
        with pytest.raises(EdgediffError, match=rf"not valid UTF-8: the sequence at byte {py.value.start} ") as info:
            C.tokenize(str(folder), raw)
        assert "\n" not in str(info.value)
    # valid bytes give what the str gives
    assert C.tokenize(str(folder), "café 東京".encode()) == C.tokenize(str(folder), "café 東京")


def test_bad_files_name_file_and_field(tmp_path, folder):
    def make(name, vocab=None, merges=None):
        d = tmp_path / name
        d.mkdir()
        (d / "vocab.json").write_text(vocab if vocab is not None else (folder / "vocab.json").read_text("utf-8"))
        (d / "merges.txt").write_text(merges if merges is not None else (folder / "merges.txt").read_text("utf-8"))
        return d

    lines = (folder / "merges.txt").read_text("utf-8").split("\n")
    vocab = json.loads((folder / "vocab.json").read_text("utf-8"))
    cases = [
        (make("notjson", vocab="{"), r"vocab.json: .*line 1"),
        (make("array", vocab="[1, 2]"), r"vocab.json: the top level must be an object"),
        (make("badid", vocab=json.dumps({**vocab, "zz": "7"})), r'vocab.json: the top level\["zz"\] must be'),
        (make("neg", vocab=json.dumps({**vocab, "zz": -1})), r'\["zz"\] must be an integer id'),
        (make("badline", merges="\n".join(lines[:5] + ["a b c"] + lines[5:])), r"merges.txt: line 6 must be two"),
        (make("unknown", merges="\n".join(lines[:3] + ["qqq zzz"])), r'merges.txt: line 4: token "qqq" is not'),
        (make("nomerged", merges="#version: 0.2\nz z\n"), r'merges.txt: line 2: the merged token "zz" is not'),
        (
            make("nospecial", vocab=json.dumps({k: v for k, v in vocab.items() if k != "<|startoftext|>"})),
            r'vocab.json: bos_token "<\|startoftext\|>" is not in the vocabulary',
        ),
    ]
    for d, pattern in cases:
        with pytest.raises(EdgediffError, match=pattern) as info:
            C.tokenize(str(d), "x")
        assert str(d) in str(info.value) and "\n" not in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EdgediffError, match="no vocab.json"):
        C.tokenize(str(empty), "x")
    (empty / "vocab.json").write_text("{}")
    with pytest.raises(EdgediffError, match="has vocab.json but no merges.txt"):
        C.tokenize(str(empty), "x")
    cfg = make("cfg")
    (cfg / "tokenizer_config.json").write_text('{"model_max_length": "77"}')
    with pytest.raises(EdgediffError, match=r"tokenizer_config.json: model_max_length must be a number"):
        C.tokenize(str(cfg), "x")
    (cfg / "tokenizer_config.json").write_text('{"pad_token": "<nope>"}')
    with pytest.raises(EdgediffError, match=r'pad_token "<nope>" is not in the vocabulary'):
        C.tokenize(str(cfg), "x")


def test_unicode_tables_are_current():
    """csrc/src/unicode_tables.c is what csrc/tools/gen_unicode.py writes with this Python."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "csrc" / "tools" / "gen_unicode.py"), "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def _libfuzzer_works() -> bool:
    if not (shutil.which("make") and shutil.which("clang")):
        return False
    r = subprocess.run(
        ["clang", "-fsanitize=fuzzer", "-x", "c", "-", "-o", "/dev/null"],
        input="#include <stdint.h>\n#include <stddef.h>\n"
        "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n",
        capture_output=True,
        text=True,
    )
    return r.returncode == 0


@pytest.mark.slow  # ~15 s of clang ASan + UBSan compile, then 3 s of fuzzing
@pytest.mark.skipif(not _libfuzzer_works(), reason="no clang with libFuzzer (apt-get install clang libclang-rt-dev)")
def test_tokenizer_fuzz_short_run(tmp_path):
    """csrc/fuzz/fuzz_tokenizer.c: a few seconds of libFuzzer (ASan + UBSan) on encode and on
    the vocab.json / merges.txt parser find nothing."""
    r = subprocess.run(
        ["make", "-s", "-C", str(ROOT / "csrc"), "fuzz-tokenizer", f"BUILD={tmp_path}", "FUZZ_SECONDS=3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    runs = re.search(r"Done (\d+) runs", r.stderr)
    assert runs and int(runs.group(1)) > 1000, r.stderr[-2000:]
    assert "ERROR: AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr
