/* tokenizer.c — the CLIP byte-level BPE tokenizer (transformers' CLIPTokenizer), C99.
 *
 * The pipeline, in the order CLIPTokenizer runs it:
 *   1. the special tokens (bos, eos, unk, pad) are cut out of the raw text, leftmost-longest,
 *      and become their ids directly; the text between them goes through 2-6;
 *   2. NFC (canonical decomposition, canonical ordering, canonical composition);
 *   3. lower case, code point by code point (Python's chr(cp).lower(); İ gives two);
 *   4. the split: runs of White_Space separate and are dropped; the pieces are
 *      "<|startoftext|>" / "<|endoftext|>" (which the byte-level step cuts again into "<|",
 *      the word and "|>"), 's 't 're 've 'm 'll 'd, a run of letters (L*), one number (N*),
 *      a run of anything else;
 *   5. each piece's UTF-8 bytes through the byte-to-unicode table, "</w>" on the last one;
 *   6. BPE: merge the adjacent pair of lowest merge rank (the leftmost among equals) until no
 *      pair has a rank; a symbol that is not in the vocabulary is the unk token.
 * Then BOS + ids[:max_len - 2] + EOS, padded with the pad token.
 * Whitespace runs are collapsed to one space by CLIPTokenizer before lower-casing; since the
 * split drops spaces, that step changes nothing here and is not spelled out.
 * The Unicode data is unicode_tables.c (generated from Python's unicodedata).
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "unicode.h"

#define MAX_FILE_BYTES     ((size_t)1 << 28)
#define DEFAULT_MAX_LENGTH 77
#define NUM_SPECIAL        4 /* bos, eos, unk, pad */

typedef struct vocab_entry {
    const char *str; /* into tok->pool */
    size_t len;
    int32_t id;
} vocab_entry;

typedef struct merge_entry {
    uint64_t key; /* (a << 32) | b, a and b token ids; key 0 with rank < 0 is empty */
    int32_t rank;
    int32_t id; /* the merged token's id */
} merge_entry;

struct edd_tokenizer {
    vocab_entry *vocab; /* open addressing, vocab_cap slots (a power of two), str NULL = empty */
    size_t vocab_cap, vocab_len;
    char *pool;
    merge_entry *merges; /* open addressing, merges_cap slots */
    size_t merges_cap, merges_len;
    char *special[NUM_SPECIAL];
    int32_t special_id[NUM_SPECIAL];
    size_t special_len[NUM_SPECIAL];
    size_t max_length;
    uint32_t byte_char[256]; /* the byte-to-unicode table */
};

static const char *const SPECIAL_KEY[NUM_SPECIAL] = {"bos_token", "eos_token", "unk_token", "pad_token"};
static const char *const SPECIAL_DEFAULT[NUM_SPECIAL] = {"<|startoftext|>", "<|endoftext|>", "<|endoftext|>",
                                                         "<|endoftext|>"};
enum { BOS, EOS, UNK, PAD };

/* ---- Unicode lookups ---- */

static uint32_t range_value(const edd_uc_range *t, size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < t[mid].first)
            hi = mid;
        else if (cp > t[mid].last)
            lo = mid + 1;
        else
            return t[mid].value;
    }
    return 0;
}

/* ASCII is most of any prompt: answered without a search (test_tokenizer.c checks the fast
 * paths against the tables) */
static uint32_t uc_class(uint32_t cp) {
    if (cp < 0x80) {
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return EDD_UC_LETTER;
        if (cp >= '0' && cp <= '9') return EDD_UC_NUMBER;
        if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return EDD_UC_SPACE;
        return EDD_UC_OTHER;
    }
    return range_value(edd__uc_classes, edd__uc_classes_len, cp);
}

static uint32_t uc_ccc(uint32_t cp) {
    return cp < edd__uc_ccc[0].first ? 0 : range_value(edd__uc_ccc, edd__uc_ccc_len, cp);
}

static const edd_uc_seq *seq_find(const edd_uc_seq *t, size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < t[mid].cp)
            hi = mid;
        else if (cp > t[mid].cp)
            lo = mid + 1;
        else
            return &t[mid];
    }
    return NULL;
}

/* lower case of cp into out (at most 3 code points); returns the count */
static size_t uc_lower(uint32_t cp, uint32_t *out) {
    const edd_uc_seq *m = cp < 0x80 ? NULL : seq_find(edd__uc_lower_multi, edd__uc_lower_multi_len, cp);
    size_t lo = 0, hi = edd__uc_lower_len;
    if (cp < 0x80) {
        out[0] = cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
        return 1;
    }
    if (m) {
        for (size_t k = 0; k < m->len; k++) out[k] = edd__uc_lower_pool[m->offset + k];
        return m->len;
    }
    while (lo < hi) { /* the last run starting at or before cp */
        size_t mid = lo + (hi - lo) / 2;
        if (edd__uc_lower[mid].first <= cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo > 0) {
        const edd_uc_lower *r = &edd__uc_lower[lo - 1];
        uint32_t off = cp - r->first;
        if (off % r->stride == 0 && off / r->stride < r->count) {
            out[0] = (uint32_t)((int64_t)cp + r->delta);
            return 1;
        }
    }
    out[0] = cp;
    return 1;
}

#define HANGUL_S  0xAC00u
#define HANGUL_L  0x1100u
#define HANGUL_V  0x1161u
#define HANGUL_T  0x11A7u
#define HANGUL_LC 19u
#define HANGUL_VC 21u
#define HANGUL_TC 28u
#define HANGUL_NC (HANGUL_VC * HANGUL_TC)
#define HANGUL_SC (HANGUL_LC * HANGUL_NC)

/* the full canonical decomposition of cp into out (at most 4 code points, NULL to count) */
static size_t uc_decompose(uint32_t cp, uint32_t *out) {
    if (cp >= HANGUL_S && cp < HANGUL_S + HANGUL_SC) {
        uint32_t s = cp - HANGUL_S, t = s % HANGUL_TC;
        if (out) {
            out[0] = HANGUL_L + s / HANGUL_NC;
            out[1] = HANGUL_V + (s % HANGUL_NC) / HANGUL_TC;
            if (t) out[2] = HANGUL_T + t;
        }
        return t ? 3 : 2;
    } else {
        const edd_uc_seq *d = cp < edd__uc_decomp[0].cp ? NULL : seq_find(edd__uc_decomp, edd__uc_decomp_len, cp);
        if (!d) {
            if (out) out[0] = cp;
            return 1;
        }
        if (out)
            for (size_t k = 0; k < d->len; k++) out[k] = edd__uc_decomp_pool[d->offset + k];
        return d->len;
    }
}

/* the primary composite of (a, b), or 0 */
static uint32_t uc_compose(uint32_t a, uint32_t b) {
    size_t lo = 0, hi = edd__uc_comp_len;
    if (b < edd__uc_comp_min_second) return 0;
    if (a >= HANGUL_L && a < HANGUL_L + HANGUL_LC && b >= HANGUL_V && b < HANGUL_V + HANGUL_VC)
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_VC + (b - HANGUL_V)) * HANGUL_TC;
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_SC && (a - HANGUL_S) % HANGUL_TC == 0 && b > HANGUL_T &&
        b < HANGUL_T + HANGUL_TC)
        return a + (b - HANGUL_T);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const edd_uc_pair *p = &edd__uc_comp[mid];
        if (a < p->first || (a == p->first && b < p->second))
            hi = mid;
        else if (a > p->first || b > p->second)
            lo = mid + 1;
        else
            return p->composite;
    }
    return 0;
}

/* NFC of cp[0..n) into out (n * 4 slots); returns the new length */
static size_t nfc(const uint32_t *cp, size_t n, uint32_t *out) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++) m += uc_decompose(cp[i], out + m);
    /* canonical ordering: a stable insertion sort of each run of non-starters by class */
    for (size_t i = 1; i < m; i++) {
        uint32_t c = out[i], cc = uc_ccc(c);
        size_t j = i;
        if (cc == 0) continue;
        while (j > 0 && uc_ccc(out[j - 1]) > cc) {
            out[j] = out[j - 1];
            j--;
        }
        out[j] = c;
    }
    if (m == 0) return 0;
    {
        size_t starter = 0, w = 1;
        uint32_t last = uc_ccc(out[0]) ? 256 : 0;
        int have_starter = last == 0;
        for (size_t i = 1; i < m; i++) {
            uint32_t c = out[i], cc = uc_ccc(c), comp = 0;
            if (have_starter && (last < cc || last == 0)) comp = uc_compose(out[starter], c);
            if (comp && (last < cc || (last == 0 && w == starter + 1))) {
                out[starter] = comp;
                continue;
            }
            if (cc == 0) {
                starter = w;
                have_starter = 1;
            }
            last = cc;
            out[w++] = c;
        }
        return w;
    }
}

/* ---- UTF-8 ---- */

/* decode s[0..n) (strict: no overlong forms, surrogates or values over U+10FFFF) into cp;
 * returns the count, or (size_t)-1 with *bad the offset where the first invalid sequence
 * starts (what Python's UnicodeDecodeError.start says) */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp, size_t *bad) {
    size_t i = 0, k = 0;
    while (i < n) {
        unsigned c = s[i];
        uint32_t v;
        size_t len, j;
        if (c < 0x80) {
            cp[k++] = c;
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            v = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            v = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            v = c & 0x07;
        } else {
            *bad = i;
            return (size_t)-1;
        }
        for (j = 1; j < len; j++) {
            unsigned d = i + j < n ? s[i + j] : 0;
            if ((d & 0xC0) != 0x80) {
                *bad = i;
                return (size_t)-1;
            }
            if (j == 1 && ((c == 0xE0 && d < 0xA0) || (c == 0xED && d > 0x9F) || (c == 0xF0 && d < 0x90) ||
                           (c == 0xF4 && d > 0x8F))) {
                *bad = i;
                return (size_t)-1;
            }
            v = (v << 6) | (d & 0x3F);
        }
        cp[k++] = v;
        i += len;
    }
    return k;
}

static size_t utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    } else if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    } else if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- the vocabulary and the merges ---- */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t hash_key(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

static vocab_entry *vocab_slot(const edd_tokenizer *t, const char *s, size_t n) {
    size_t mask = t->vocab_cap - 1, i = (size_t)hash_bytes(s, n) & mask;
    while (t->vocab[i].str && !(t->vocab[i].len == n && memcmp(t->vocab[i].str, s, n) == 0)) i = (i + 1) & mask;
    return &t->vocab[i];
}

static int32_t vocab_id(const edd_tokenizer *t, const char *s, size_t n) {
    const vocab_entry *e = vocab_slot(t, s, n);
    return e->str ? e->id : -1;
}

static merge_entry *merge_slot(const edd_tokenizer *t, uint64_t key) {
    size_t mask = t->merges_cap - 1, i = (size_t)hash_key(key) & mask;
    while (t->merges[i].rank >= 0 && t->merges[i].key != key) i = (i + 1) & mask;
    return &t->merges[i];
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

void edd_tokenizer_free(edd_tokenizer *t) {
    if (!t) return;
    free(t->vocab);
    free(t->pool);
    free(t->merges);
    for (int k = 0; k < NUM_SPECIAL; k++) free(t->special[k]);
    free(t);
}

static void init_byte_chars(edd_tokenizer *t) {
    uint32_t extra = 0;
    for (unsigned b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        t->byte_char[b] = printable ? b : 256 + extra++;
    }
}

/* vocab from a JSON object {token: id}; file names the source in messages */
static edd_status read_vocab(edd_tokenizer *t, const edd_json *v, const char *file, const char *field, char *err,
                             size_t err_size) {
    size_t bytes = 0, off = 0;
    if (!v || v->type != EDD_JSON_OBJECT)
        return edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE, "%s: %s must be an object of token: id, got %s", file,
                         field, v ? edd__json_type_name(v) : "nothing");
    for (size_t i = 0; i < v->len; i++) {
        const edd_json *e = &v->items[i];
        if (e->type != EDD_JSON_NUMBER || !e->is_integer || e->number < 0 || e->number > 2147483647.0)
            return edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE,
                             "%s: %s[\"%.40s\"] must be an integer id in 0..2147483647, got %s", file, field, e->key,
                             e->type == EDD_JSON_NUMBER ? "a number out of range" : edd__json_type_name(e));
        bytes += e->key_len + 1;
    }
    t->vocab_cap = pow2_at_least(2 * v->len + 2);
    t->vocab = calloc(t->vocab_cap, sizeof *t->vocab);
    t->pool = malloc(bytes ? bytes : 1);
    if (!t->vocab || !t->pool) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "%s: out of memory", file);
    for (size_t i = 0; i < v->len; i++) { /* a repeated key keeps its last id, as Python's json does */
        const edd_json *e = &v->items[i];
        vocab_entry *s;
        memcpy(t->pool + off, e->key, e->key_len + 1);
        s = vocab_slot(t, t->pool + off, e->key_len);
        if (!s->str) t->vocab_len++;
        s->str = t->pool + off;
        s->len = e->key_len;
        s->id = (int32_t)e->number;
        off += e->key_len + 1;
    }
    return EDD_OK;
}

static edd_status add_merge(edd_tokenizer *t, const char *a, size_t na, const char *b, size_t nb, int32_t rank,
                            const char *file, const char *where, char *err, size_t err_size) {
    int32_t ia = vocab_id(t, a, na), ib = vocab_id(t, b, nb), im;
    char *cat;
    merge_entry *m;
    if (ia < 0 || ib < 0)
        return edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE, "%s: %s: token \"%.*s\" is not in the vocabulary", file,
                         where, (int)(ia < 0 ? (na > 40 ? 40 : na) : (nb > 40 ? 40 : nb)), ia < 0 ? a : b);
    cat = malloc(na + nb + 1);
    if (!cat) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "%s: out of memory", file);
    memcpy(cat, a, na);
    memcpy(cat + na, b, nb);
    im = vocab_id(t, cat, na + nb);
    if (im < 0) {
        edd_status st =
            edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE, "%s: %s: the merged token \"%.*s\" is not in the vocabulary",
                      file, where, (int)(na + nb > 40 ? 40 : na + nb), cat);
        free(cat);
        return st;
    }
    free(cat);
    m = merge_slot(t, ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib);
    if (m->rank < 0) t->merges_len++;
    m->key = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib; /* a repeated pair takes its last rank */
    m->rank = rank;
    m->id = im;
    return EDD_OK;
}

static edd_status alloc_merges(edd_tokenizer *t, size_t n, const char *file, char *err, size_t err_size) {
    t->merges_cap = pow2_at_least(2 * n + 2);
    t->merges = malloc(t->merges_cap * sizeof *t->merges);
    if (!t->merges) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "%s: out of memory", file);
    for (size_t i = 0; i < t->merges_cap; i++) t->merges[i].rank = -1, t->merges[i].key = 0, t->merges[i].id = 0;
    return EDD_OK;
}

/* merges.txt: "#version..." lines are skipped, every other line is "A B" (one space) */
static edd_status read_merges_txt(edd_tokenizer *t, const char *text, size_t len, const char *file, char *err,
                                  size_t err_size) {
    size_t lines = 1, pos = 0, line = 0;
    int32_t rank = 0;
    edd_status st;
    for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
    if ((st = alloc_merges(t, lines, file, err, err_size)) != EDD_OK) return st;
    while (pos < len) {
        size_t end = pos, n, sp = 0, spaces = 0;
        char where[48];
        while (end < len && text[end] != '\n') end++;
        n = end - pos;
        line++;
        if (n && text[pos + n - 1] == '\r') n--;
        if (!(n >= 8 && memcmp(text + pos, "#version", 8) == 0)) {
            for (size_t i = 0; i < n; i++)
                if (text[pos + i] == ' ') spaces++, sp = sp ? sp : i;
            if (memchr(text + pos, '\0', n))
                return edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE, "%s: line %zu contains a NUL byte", file, line);
            if (spaces != 1 || sp == 0 || sp == n - 1)
                return edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE,
                                 "%s: line %zu must be two tokens separated by one space, got \"%.*s\"%s", file, line,
                                 (int)(n > 40 ? 40 : n), text + pos, n > 40 ? "..." : "");
            snprintf(where, sizeof where, "line %zu", line);
            if ((st = add_merge(t, text + pos, sp, text + pos + sp + 1, n - sp - 1, rank++, file, where, err,
                                err_size)) != EDD_OK)
                return st;
        }
        pos = end + 1;
    }
    return EDD_OK;
}

/* tokenizer.json model.merges: ["A B", ...] or [["A", "B"], ...] */
static edd_status read_merges_json(edd_tokenizer *t, const edd_json *m, const char *file, char *err, size_t err_size) {
    edd_status st;
    if (!m || m->type != EDD_JSON_ARRAY)
        return edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE, "%s: model.merges must be an array, got %s", file,
                         m ? edd__json_type_name(m) : "nothing");
    if ((st = alloc_merges(t, m->len, file, err, err_size)) != EDD_OK) return st;
    for (size_t i = 0; i < m->len; i++) {
        const edd_json *e = &m->items[i];
        char where[48];
        snprintf(where, sizeof where, "model.merges[%zu]", i);
        if (e->type == EDD_JSON_STRING) {
            const char *sp = memchr(e->string, ' ', e->len);
            if (!sp || sp == e->string || (size_t)(sp - e->string) == e->len - 1 ||
                memchr(sp + 1, ' ', e->len - (size_t)(sp - e->string) - 1))
                return edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE, "%s: %s must be two tokens separated by one space",
                                 file, where);
            st = add_merge(t, e->string, (size_t)(sp - e->string), sp + 1, e->len - (size_t)(sp - e->string) - 1,
                           (int32_t)i, file, where, err, err_size);
        } else if (e->type == EDD_JSON_ARRAY && e->len == 2 && e->items[0].type == EDD_JSON_STRING &&
                   e->items[1].type == EDD_JSON_STRING) {
            st = add_merge(t, e->items[0].string, e->items[0].len, e->items[1].string, e->items[1].len, (int32_t)i,
                           file, where, err, err_size);
        } else {
            return edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE,
                             "%s: %s must be a string \"A B\" or an array of two strings", file, where);
        }
        if (st != EDD_OK) return st;
    }
    return EDD_OK;
}

/* a special token from a config object: a string, or {"content": string, ...}; absent = keep */
static edd_status read_special(edd_tokenizer *t, const edd_json *cfg, const char *file, char *err, size_t err_size) {
    for (int k = 0; k < NUM_SPECIAL; k++) {
        const edd_json *v = edd__json_get(cfg, SPECIAL_KEY[k]);
        const char *s;
        size_t n;
        char *copy;
        if (!v || v->type == EDD_JSON_NULL) continue;
        if (v->type == EDD_JSON_OBJECT) v = edd__json_get(v, "content");
        if (!v || v->type != EDD_JSON_STRING || v->len == 0 || memchr(v->string, '\0', v->len))
            return edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE,
                             "%s: %s must be a non-empty string or an object with a \"content\" string", file,
                             SPECIAL_KEY[k]);
        s = v->string;
        n = v->len;
        copy = malloc(n + 1);
        if (!copy) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "%s: out of memory", file);
        memcpy(copy, s, n + 1);
        free(t->special[k]);
        t->special[k] = copy;
    }
    return EDD_OK;
}

static edd_status read_config(edd_tokenizer *t, const edd_json *cfg, const char *file, char *err, size_t err_size) {
    const edd_json *m = edd__json_get(cfg, "model_max_length");
    if (cfg->type != EDD_JSON_OBJECT)
        return edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE, "%s: must be an object, got %s", file,
                         edd__json_type_name(cfg));
    if (m && m->type != EDD_JSON_NULL) {
        if (m->type != EDD_JSON_NUMBER || m->number < 2)
            return edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE, "%s: model_max_length must be a number >= 2", file);
        /* transformers writes 1e30 for "no limit": the CLIP default stands then */
        if (m->is_integer && m->number <= 1048576.0) t->max_length = (size_t)m->number;
    }
    return read_special(t, cfg, file, err, err_size);
}

static edd_status new_tokenizer(edd_tokenizer **out, char *err, size_t err_size) {
    edd_tokenizer *t = calloc(1, sizeof *t);
    *out = NULL;
    if (!t) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    for (int k = 0; k < NUM_SPECIAL; k++) {
        size_t n = strlen(SPECIAL_DEFAULT[k]);
        t->special[k] = malloc(n + 1);
        if (!t->special[k]) {
            edd_tokenizer_free(t);
            return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        }
        memcpy(t->special[k], SPECIAL_DEFAULT[k], n + 1);
    }
    t->max_length = DEFAULT_MAX_LENGTH;
    init_byte_chars(t);
    *out = t;
    return EDD_OK;
}

static edd_status resolve_special(edd_tokenizer *t, const char *where, char *err, size_t err_size) {
    for (int k = 0; k < NUM_SPECIAL; k++) {
        t->special_len[k] = strlen(t->special[k]);
        t->special_id[k] = vocab_id(t, t->special[k], t->special_len[k]);
        if (t->special_id[k] < 0)
            return edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE, "%s: %s \"%.40s\" is not in the vocabulary", where,
                             SPECIAL_KEY[k], t->special[k]);
    }
    return EDD_OK;
}

static edd_status parse_json_text(const char *text, size_t len, const char *file, edd_json **out, char *err,
                                  size_t err_size) {
    char msg[200];
    edd_status st = edd__json_parse(text, len, out, msg, sizeof msg);
    if (st != EDD_OK)
        return edd__fail(err, err_size, st == EDD_ERR_OUT_OF_MEMORY ? st : EDD_ERR_BAD_BUNDLE, "%s: %s", file, msg);
    return EDD_OK;
}

edd_status edd_tokenizer_parse(const char *vocab_json, size_t vocab_len, const char *merges_txt, size_t merges_len,
                               edd_tokenizer **out, char *err, size_t err_size) {
    edd_tokenizer *t;
    edd_json *v = NULL;
    edd_status st;
    if (!out || (!vocab_json && vocab_len) || (!merges_txt && merges_len))
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_tokenizer_parse: NULL argument");
    *out = NULL;
    if ((st = new_tokenizer(&t, err, err_size)) != EDD_OK) return st;
    if ((st = parse_json_text(vocab_json, vocab_len, "vocab.json", &v, err, err_size)) == EDD_OK &&
        (st = read_vocab(t, v, "vocab.json", "the top level", err, err_size)) == EDD_OK &&
        (st = read_merges_txt(t, merges_txt, merges_len, "merges.txt", err, err_size)) == EDD_OK)
        st = resolve_special(t, "vocab.json", err, err_size);
    edd__json_free(v);
    if (st != EDD_OK) {
        edd_tokenizer_free(t);
        return st;
    }
    *out = t;
    return EDD_OK;
}

/* ---- loading a folder ---- */

static char *join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* read DIR/name whole; 1 = read, 0 = absent, -1 = error (err filled) */
static int read_file(const char *dir, const char *name, char **text, size_t *len, edd_status *st, char *err,
                     size_t err_size) {
    char *path = join(dir, name), *buf = NULL;
    size_t cap = 0, n = 0;
    FILE *f;
    *text = NULL;
    *len = 0;
    if (!path) {
        *st = edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        return -1;
    }
    f = fopen(path, "rb");
    if (!f) {
        free(path);
        return 0;
    }
    for (;;) {
        size_t got;
        if (n == cap) {
            char *nb;
            if (cap >= MAX_FILE_BYTES) {
                *st = edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE, "%s: larger than %zu bytes", path,
                                (size_t)MAX_FILE_BYTES);
                goto fail;
            }
            cap = cap ? 2 * cap : 65536;
            nb = realloc(buf, cap + 1);
            if (!nb) {
                *st = edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
                goto fail;
            }
            buf = nb;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        *st = edd__fail(err, err_size, EDD_ERR_IO, "%s: could not be read", path);
        goto fail;
    }
    fclose(f);
    free(path);
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return 1;
fail:
    fclose(f);
    free(path);
    free(buf);
    return -1;
}

static edd_status load_config(edd_tokenizer *t, const char *dir, const char *name, char *err, size_t err_size) {
    char *text, label[1024];
    size_t len;
    edd_status st = EDD_OK;
    edd_json *j = NULL;
    int r = read_file(dir, name, &text, &len, &st, err, err_size);
    if (r <= 0) return st;
    snprintf(label, sizeof label, "%s/%s", dir, name);
    if ((st = parse_json_text(text, len, label, &j, err, err_size)) == EDD_OK)
        st = read_config(t, j, label, err, err_size);
    edd__json_free(j);
    free(text);
    return st;
}

edd_status edd_tokenizer_load(const char *dir, edd_tokenizer **out, char *err, size_t err_size) {
    edd_tokenizer *t;
    char *vtext = NULL, *mtext = NULL, label[1024];
    size_t vlen, mlen;
    edd_json *v = NULL;
    edd_status st = EDD_OK;
    int rv, rm;
    if (!dir || !out) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_tokenizer_load: NULL argument");
    *out = NULL;
    if ((st = new_tokenizer(&t, err, err_size)) != EDD_OK) return st;
    rv = read_file(dir, "vocab.json", &vtext, &vlen, &st, err, err_size);
    rm = rv < 0 ? 0 : read_file(dir, "merges.txt", &mtext, &mlen, &st, err, err_size);
    if (rv < 0 || rm < 0) goto done;
    if (rv > 0 && rm > 0) {
        snprintf(label, sizeof label, "%s/vocab.json", dir);
        if ((st = parse_json_text(vtext, vlen, label, &v, err, err_size)) != EDD_OK ||
            (st = read_vocab(t, v, label, "the top level", err, err_size)) != EDD_OK)
            goto done;
        snprintf(label, sizeof label, "%s/merges.txt", dir);
        if ((st = read_merges_txt(t, mtext, mlen, label, err, err_size)) != EDD_OK) goto done;
    } else if (rv > 0 || rm > 0) {
        st = edd__fail(err, err_size, EDD_ERR_IO, "%s: has %s but no %s", dir, rv > 0 ? "vocab.json" : "merges.txt",
                       rv > 0 ? "merges.txt" : "vocab.json");
        goto done;
    } else {
        int rj = read_file(dir, "tokenizer.json", &vtext, &vlen, &st, err, err_size);
        const edd_json *model;
        if (rj < 0) goto done;
        if (rj == 0) {
            st = edd__fail(err, err_size, EDD_ERR_IO, "%s: no vocab.json + merges.txt and no tokenizer.json", dir);
            goto done;
        }
        snprintf(label, sizeof label, "%s/tokenizer.json", dir);
        if ((st = parse_json_text(vtext, vlen, label, &v, err, err_size)) != EDD_OK) goto done;
        model = edd__json_get(v, "model");
        if (!model || model->type != EDD_JSON_OBJECT) {
            st = edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE, "%s: model must be an object", label);
            goto done;
        }
        if ((st = read_vocab(t, edd__json_get(model, "vocab"), label, "model.vocab", err, err_size)) != EDD_OK ||
            (st = read_merges_json(t, edd__json_get(model, "merges"), label, err, err_size)) != EDD_OK)
            goto done;
    }
    /* special_tokens_map.json is read last: what it names wins */
    if ((st = load_config(t, dir, "tokenizer_config.json", err, err_size)) != EDD_OK ||
        (st = load_config(t, dir, "special_tokens_map.json", err, err_size)) != EDD_OK)
        goto done;
    snprintf(label, sizeof label, "%s/%s", dir, rv > 0 ? "vocab.json" : "tokenizer.json");
    st = resolve_special(t, label, err, err_size);
done:
    edd__json_free(v);
    free(vtext);
    free(mtext);
    if (st != EDD_OK) {
        edd_tokenizer_free(t);
        return st;
    }
    *out = t;
    return EDD_OK;
}

size_t edd_tokenizer_max_length(const edd_tokenizer *t) {
    return t ? t->max_length : 0;
}

int32_t edd_tokenizer_special_id(const edd_tokenizer *t, edd_special_token which) {
    if (!t || (int)which < 0 || (int)which >= NUM_SPECIAL) return -1;
    return t->special_id[which];
}

size_t edd_tokenizer_vocab_size(const edd_tokenizer *t) {
    return t ? t->vocab_len : 0;
}

/* ---- encoding ---- */

typedef struct emitter {
    int32_t *ids; /* the caller's, content goes to ids[1 .. cap] */
    size_t cap;   /* max_len - 2 */
    size_t count; /* all content ids, kept or not */
} emitter;

static void emit(emitter *e, int32_t id) {
    if (e->count < e->cap) e->ids[1 + e->count] = id;
    e->count++;
}

typedef struct heap_item {
    int32_t rank;
    uint32_t pos;
} heap_item;

static int heap_less(heap_item a, heap_item b) {
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(heap_item *h, size_t *n, heap_item it) {
    size_t i = (*n)++;
    while (i > 0 && heap_less(it, h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = it;
}

static heap_item heap_pop(heap_item *h, size_t *n) {
    heap_item top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(h[c + 1], h[c])) c++;
        if (!heap_less(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

typedef struct scratch {
    int32_t *sym; /* symbol ids, per byte of the piece */
    uint32_t *next, *prev;
    heap_item *heap;
} scratch;

static const merge_entry *pair_merge(const edd_tokenizer *t, int32_t a, int32_t b) {
    const merge_entry *m;
    if (a < 0 || b < 0) return NULL;
    m = merge_slot(t, ((uint64_t)(uint32_t)a << 32) | (uint32_t)b);
    return m->rank >= 0 ? m : NULL;
}

#define NONE UINT32_MAX

/* BPE over one piece's bytes */
static void bpe(const edd_tokenizer *t, const unsigned char *bytes, size_t n, scratch *s, emitter *e) {
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) {
        char buf[8];
        size_t k = utf8_put(t->byte_char[bytes[i]], buf);
        int32_t id;
        if (i == n - 1) memcpy(buf + k, "</w>", 4), k += 4;
        id = vocab_id(t, buf, k);
        s->sym[i] = id >= 0 ? id : t->special_id[UNK];
        s->prev[i] = i ? (uint32_t)(i - 1) : NONE;
        s->next[i] = i + 1 < n ? (uint32_t)(i + 1) : NONE;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        const merge_entry *m = pair_merge(t, s->sym[i], s->sym[i + 1]);
        if (m) heap_push(s->heap, &hn, (heap_item){m->rank, (uint32_t)i});
    }
    while (hn) {
        heap_item it = heap_pop(s->heap, &hn);
        uint32_t a = it.pos, b = s->next[a];
        const merge_entry *m;
        if (s->sym[a] == INT32_MIN || b == NONE) continue; /* merged away, or now last */
        m = pair_merge(t, s->sym[a], s->sym[b]);
        if (!m || m->rank != it.rank) continue; /* stale */
        s->sym[a] = m->id;
        s->sym[b] = INT32_MIN; /* dead */
        s->next[a] = s->next[b];
        if (s->next[b] != NONE) s->prev[s->next[b]] = a;
        if (s->prev[a] != NONE) {
            const merge_entry *l = pair_merge(t, s->sym[s->prev[a]], s->sym[a]);
            if (l) heap_push(s->heap, &hn, (heap_item){l->rank, s->prev[a]});
        }
        if (s->next[a] != NONE) {
            const merge_entry *r = pair_merge(t, s->sym[a], s->sym[s->next[a]]);
            if (r) heap_push(s->heap, &hn, (heap_item){r->rank, a});
        }
    }
    for (uint32_t i = n ? 0 : NONE; i != NONE; i = s->next[i]) emit(e, s->sym[i]);
}

static int starts_ascii(const uint32_t *cp, size_t n, const char *lit) {
    size_t k = strlen(lit);
    if (k > n) return 0;
    for (size_t i = 0; i < k; i++)
        if (cp[i] != (unsigned char)lit[i]) return 0;
    return 1;
}

/* the length of the piece starting at cp[0] (not a space); *cut = 1 for "<|...|>" words */
static size_t piece_len(const uint32_t *cp, size_t n, int *cut) {
    static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    uint32_t c = uc_class(cp[0]);
    size_t k = 1;
    *cut = 0;
    if (cp[0] == '<') {
        if (starts_ascii(cp, n, "<|startoftext|>")) return *cut = 1, 15;
        if (starts_ascii(cp, n, "<|endoftext|>")) return *cut = 1, 13;
    }
    if (cp[0] == '\'')
        for (size_t i = 0; i < sizeof contractions / sizeof *contractions; i++)
            if (starts_ascii(cp, n, contractions[i])) return strlen(contractions[i]);
    if (c == EDD_UC_NUMBER) return 1;
    if (c == EDD_UC_LETTER) {
        while (k < n && uc_class(cp[k]) == EDD_UC_LETTER) k++;
        return k;
    }
    while (k < n && uc_class(cp[k]) == EDD_UC_OTHER) k++;
    return k;
}

static void encode_piece(const edd_tokenizer *t, const uint32_t *cp, size_t n, unsigned char *bytes, scratch *s,
                         emitter *e) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++) m += utf8_put(cp[i], (char *)bytes + m);
    bpe(t, bytes, m, s, e);
}

/* one stretch of text between special tokens: cp[0..n) decoded, work has room */
static void encode_text(const edd_tokenizer *t, const uint32_t *cp, size_t n, uint32_t *norm, uint32_t *low,
                        unsigned char *bytes, scratch *s, emitter *e) {
    size_t m = nfc(cp, n, norm), l = 0, i = 0;
    for (size_t k = 0; k < m; k++) l += uc_lower(norm[k], low + l);
    while (i < l) {
        int cut;
        size_t k;
        if (uc_class(low[i]) == EDD_UC_SPACE) {
            i++;
            continue;
        }
        k = piece_len(low + i, l - i, &cut);
        if (cut) { /* the byte-level split: "<|", the word, "|>" */
            encode_piece(t, low + i, 2, bytes, s, e);
            encode_piece(t, low + i + 2, k - 4, bytes, s, e);
            encode_piece(t, low + i + k - 2, 2, bytes, s, e);
        } else {
            encode_piece(t, low + i, k, bytes, s, e);
        }
        i += k;
    }
}

/* the special token that starts at s[0..n) (longest), or -1 */
static int special_at(const edd_tokenizer *t, const char *s, size_t n, size_t *len) {
    int best = -1;
    size_t best_len = 0;
    for (int k = 0; k < NUM_SPECIAL; k++) {
        size_t m = t->special_len[k];
        if (m <= n && m > best_len && s[0] == t->special[k][0] && memcmp(s, t->special[k], m) == 0)
            best = k, best_len = m;
    }
    *len = best_len;
    return best;
}

edd_status edd_tokenizer_encode(const edd_tokenizer *t, const char *text, size_t len, int32_t *ids, size_t max_len,
                                size_t *full_len, char *err, size_t err_size) {
    uint32_t *cp = NULL, *norm = NULL, *low = NULL;
    unsigned char *bytes = NULL;
    scratch s = {NULL, NULL, NULL, NULL};
    size_t n, bad = 0, pos = 0, cpos = 0, cstart = 0, ndec = 0, nlow;
    emitter e;
    edd_status st = EDD_OK;
    if (full_len) *full_len = 0;
    if (!t || (!text && len) || !ids)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_tokenizer_encode: NULL argument");
    if (max_len < 2)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT,
                         "edd_tokenizer_encode: max_len must be at least 2 (BOS and EOS), got %zu", max_len);
    if (len > EDD_TOKENIZER_MAX_TEXT)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_tokenizer_encode: text too long (%zu bytes)",
                         len);
    cp = malloc((len + 1) * sizeof *cp);
    if (!cp) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "edd_tokenizer_encode: out of memory");
    n = utf8_decode((const unsigned char *)text, len, cp, &bad);
    if (n == (size_t)-1) {
        free(cp);
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT,
                         "the text is not valid UTF-8: the sequence at byte %zu (0x%02X) is invalid", bad,
                         (unsigned)(unsigned char)text[bad]);
    }
    /* the sizes: NFC gives at most the decomposed length, lower case multiplies by at most
     * edd__uc_lower_max, UTF-8 by 4; one piece has at most all the bytes */
    for (size_t i = 0; i < n; i++) ndec += uc_decompose(cp[i], NULL);
    nlow = ndec * edd__uc_lower_max;
    norm = malloc((ndec + 1) * sizeof *norm);
    low = malloc((nlow + 1) * sizeof *low);
    bytes = malloc(4 * nlow + 1);
    s.sym = malloc((4 * nlow + 1) * sizeof *s.sym);
    s.next = malloc((4 * nlow + 1) * sizeof *s.next);
    s.prev = malloc((4 * nlow + 1) * sizeof *s.prev);
    s.heap = malloc((3 * 4 * nlow + 1) * sizeof *s.heap); /* n - 1 pairs + 2 per merge */
    if (!norm || !low || !bytes || !s.sym || !s.next || !s.prev || !s.heap) {
        st = edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "edd_tokenizer_encode: out of memory");
        goto done;
    }
    e.ids = ids;
    e.cap = max_len - 2;
    e.count = 0;
    while (pos <= len) { /* cut the special tokens out of the raw text */
        size_t slen = 0;
        int k = pos < len ? special_at(t, text + pos, len - pos, &slen) : -1;
        if (pos == len || k >= 0) {
            encode_text(t, cp + cstart, cpos - cstart, norm, low, bytes, &s, &e);
            if (pos == len) break;
            emit(&e, t->special_id[k]);
            for (size_t b = pos; b < pos + slen; b++) cpos += ((unsigned char)text[b] & 0xC0) != 0x80;
            pos += slen;
            cstart = cpos;
            continue;
        }
        pos++;
        while (pos < len && ((unsigned char)text[pos] & 0xC0) == 0x80) pos++;
        cpos++;
    }
    ids[0] = t->special_id[BOS];
    {
        size_t kept = e.count < e.cap ? e.count : e.cap;
        ids[1 + kept] = t->special_id[EOS];
        for (size_t i = 2 + kept; i < max_len; i++) ids[i] = t->special_id[PAD];
    }
    if (full_len) *full_len = e.count + 2;
done:
    free(cp);
    free(norm);
    free(low);
    free(bytes);
    free(s.sym);
    free(s.next);
    free(s.prev);
    free(s.heap);
    return st;
}
