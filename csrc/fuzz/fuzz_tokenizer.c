/* fuzz_tokenizer.c — libFuzzer harness for the CLIP tokenizer (tokenizer.c).
 *
 * Each input is tried two ways: as text for edd_tokenizer_encode with a fixed small
 * vocabulary (every byte character alone and with </w>, a few merges, the special tokens), at
 * max_len 77 and at a length taken from the first byte; and, split at the first NUL, as
 * (vocab.json, merges.txt) for edd_tokenizer_parse, then encoding the same bytes with the
 * result. Under ASan + UBSan any out-of-bounds access, leak, overflow or crash is a finding;
 * a refusal with a message (invalid UTF-8, a malformed file) is the expected outcome.
 *
 *   make -C csrc fuzz-tokenizer FUZZ_SECONDS=60 (or FUZZ_RUNS=1000000)
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgediff.h"

static edd_tokenizer *fixed;

/* the 256 byte characters of CLIP's byte-to-unicode table as UTF-8 JSON strings */
static size_t put_char(unsigned b, char *out) {
    int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    static unsigned extra_of[256];
    static int ready;
    unsigned cp;
    if (!ready) {
        unsigned extra = 0;
        for (unsigned k = 0; k < 256; k++) {
            int p = (k >= 33 && k <= 126) || (k >= 161 && k <= 172) || k >= 174;
            extra_of[k] = p ? 0 : extra++;
        }
        ready = 1;
    }
    cp = printable ? b : 256 + extra_of[b];
    if (cp == '"' || cp == '\\') return (size_t)sprintf(out, "\\%c", (char)cp);
    return (size_t)sprintf(out, "\\u%04x", cp);
}

static edd_tokenizer *build_fixed(void) {
    size_t cap = 64 * 1024, n = 0;
    char *v = malloc(cap), err[256];
    static const char merges[] = "#version: 0.2\nt h\nth e</w>\na b\nab c</w>\n' s</w>\n\xc3\x83 \xc2\xa9</w>\n";
    edd_tokenizer *t = NULL;
    int id = 0;
    if (!v) return NULL;
    n += (size_t)sprintf(v + n, "{");
    for (unsigned b = 0; b < 256; b++) {
        char c[16];
        put_char(b, c);
        n += (size_t)sprintf(v + n, "\"%s\": %d, \"%s</w>\": %d, ", c, id, c, id + 1);
        id += 2;
    }
    n += (size_t)sprintf(v + n,
                         "\"th\": %d, \"the</w>\": %d, \"ab\": %d, \"abc</w>\": %d, \"'s</w>\": %d, "
                         "\"\\u00c3\\u00a9</w>\": %d, \"<|startoftext|>\": %d, \"<|endoftext|>\": %d}",
                         id, id + 1, id + 2, id + 3, id + 4, id + 5, id + 6, id + 7);
    if (edd_tokenizer_parse(v, n, merges, strlen(merges), &t, err, sizeof err) != EDD_OK) {
        fprintf(stderr, "fuzz_tokenizer: the fixed vocabulary is refused: %s\n", err);
        abort();
    }
    free(v);
    return t;
}

static void encode(const edd_tokenizer *t, const uint8_t *data, size_t size, size_t max_len) {
    int32_t *ids = malloc(max_len * sizeof *ids);
    size_t full = 0;
    char err[256];
    if (!ids) return;
    if (edd_tokenizer_encode(t, (const char *)data, size, ids, max_len, &full, err, sizeof err) == EDD_OK) {
        /* BOS first, EOS right after the kept content, the length never below 2 */
        if (full < 2 || ids[0] != edd_tokenizer_special_id(t, EDD_TOKEN_BOS)) abort();
        if (ids[(full < max_len ? full : max_len) - 1] != edd_tokenizer_special_id(t, EDD_TOKEN_EOS)) abort();
    } else {
        (void)strlen(err);
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nul;
    if (!fixed) fixed = build_fixed(); /* kept for the process: libFuzzer's leak check ignores it */
    encode(fixed, data, size, 77);
    if (size) encode(fixed, data + 1, size - 1, 2 + data[0] % 40);
    nul = memchr(data, 0, size);
    if (nul) {
        edd_tokenizer *t = NULL;
        char err[256];
        size_t vl = (size_t)(nul - data);
        if (edd_tokenizer_parse((const char *)data, vl, (const char *)nul + 1, size - vl - 1, &t, err, sizeof err) ==
            EDD_OK) {
            encode(t, data, size, 16);
            edd_tokenizer_free(t);
        } else {
            (void)strlen(err);
        }
    }
    return 0;
}
