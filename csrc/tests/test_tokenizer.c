/* test_tokenizer.c — C-level checks of the CLIP tokenizer (tokenizer.c) and its generated
 * Unicode tables, run by `make check` under ASan + UBSan next to test_edd.c. The conformance
 * with transformers' CLIPTokenizer on >1,000 strings is tests/test_c_tokenizer.py. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "edgediff.h"
#include "unicode.h"

static int failures, checks;

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        checks++;                                                                                                      \
        if (!(cond)) {                                                                                                 \
            failures++;                                                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);                                   \
        }                                                                                                              \
    } while (0)

/* ids: 0 <|startoftext|>, 1 <|endoftext|>; byte characters of a, b, c, Ã (0xC3), © (0xA9),
 * alone and with </w>; merges a b -> ab, ab c</w> -> abc</w>, Ã ©</w> -> Ã©</w> (é) */
static const char VOCAB[] =
    "{\"<|startoftext|>\": 0, \"<|endoftext|>\": 1, \"a\": 2, \"b\": 3, \"c\": 4, \"a</w>\": 5, \"b</w>\": 6,"
    " \"c</w>\": 7, \"ab\": 8, \"abc</w>\": 9, \"\\u00c3\": 10, \"\\u00a9</w>\": 11, \"\\u00c3\\u00a9</w>\": 12,"
    " \"ab</w>\": 13, \"'\": 14, \"s</w>\": 15, \"'s</w>\": 16, \"s\": 17}";
static const char MERGES[] = "#version: 0.2\na b\nab c</w>\n\xc3\x83 \xc2\xa9</w>\na b</w>\n' s</w>\n";

static edd_tokenizer *small(void) {
    edd_tokenizer *t = NULL;
    char err[256] = "";
    edd_status st = edd_tokenizer_parse(VOCAB, strlen(VOCAB), MERGES, strlen(MERGES), &t, err, sizeof err);
    if (st != EDD_OK) fprintf(stderr, "parse: %s\n", err);
    CHECK(st == EDD_OK && t);
    return t;
}

static int encode_eq(const edd_tokenizer *t, const char *text, size_t max_len, const int32_t *want, size_t nwant,
                     size_t want_full) {
    int32_t ids[64];
    size_t full = 0;
    char err[256];
    if (edd_tokenizer_encode(t, text, strlen(text), ids, max_len, &full, err, sizeof err) != EDD_OK) {
        fprintf(stderr, "encode '%s': %s\n", text, err);
        return 0;
    }
    for (size_t i = 0; i < nwant; i++)
        if (ids[i] != want[i]) {
            fprintf(stderr, "encode '%s': ids[%zu] = %d, want %d\n", text, i, (int)ids[i], (int)want[i]);
            return 0;
        }
    for (size_t i = nwant; i < max_len; i++)
        if (ids[i] != 1) return 0; /* padded with <|endoftext|> */
    return full == want_full;
}

static void test_encode(void) {
    edd_tokenizer *t = small();
    if (!t) return;
    {
        const int32_t w[] = {0, 9, 1};
        CHECK(encode_eq(t, "abc", 8, w, 3, 3));
        CHECK(encode_eq(t, "  ABC \t\n", 8, w, 3, 3)); /* lower case, spaces dropped */
    }
    {
        const int32_t w[] = {0, 13, 5, 1}; /* "ab" "a": two words */
        CHECK(encode_eq(t, "ab a", 8, w, 4, 4));
    }
    {
        const int32_t w[] = {0, 12, 12, 12, 1}; /* é precomposed, decomposed (NFC), upper case */
        CHECK(encode_eq(t, "\xc3\xa9 e\xcc\x81 \xc3\x89", 8, w, 5, 5));
    }
    {
        const int32_t w[] = {0, 13, 16, 1}; /* the contraction 's is its own piece: "ab" "'s" */
        CHECK(encode_eq(t, "ab's", 8, w, 4, 4));
    }
    {
        /* unknown byte characters are the unk token (<|endoftext|>): z, z</w> */
        const int32_t w[] = {0, 1, 1, 1};
        CHECK(encode_eq(t, "zz", 8, w, 4, 4));
        CHECK(!encode_eq(t, "zzz", 8, w, 4, 4)); /* full length 5 */
    }
    {
        const int32_t w[] = {0, 0, 9, 1, 1}; /* raw special tokens become their ids */
        CHECK(encode_eq(t, "<|startoftext|>abc<|endoftext|>", 8, w, 5, 5));
    }
    {
        const int32_t w[] = {0, 9, 9, 1}; /* truncation keeps EOS last; full length reported */
        CHECK(encode_eq(t, "abc abc abc abc abc", 4, w, 4, 7));
        CHECK(encode_eq(t, "abc abc", 2, (const int32_t[]){0, 1}, 2, 4));
        CHECK(encode_eq(t, "", 2, (const int32_t[]){0, 1}, 2, 2));
    }
    {
        int32_t ids[8];
        size_t full = 99;
        char err[256] = "";
        CHECK(edd_tokenizer_encode(t, "ab\xff", 3, ids, 8, &full, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
        CHECK(strstr(err, "at byte 2 (0xFF) is invalid") != NULL && full == 0);
        CHECK(edd_tokenizer_encode(t, "\xe2\x82", 2, ids, 8, NULL, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
        CHECK(strstr(err, "at byte 0 (0xE2)") != NULL);
        CHECK(edd_tokenizer_encode(t, "abc", 3, ids, 1, NULL, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
        CHECK(edd_tokenizer_encode(t, NULL, 3, ids, 8, NULL, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
        CHECK(edd_tokenizer_encode(t, NULL, 0, ids, 8, NULL, NULL, 0) == EDD_OK && ids[0] == 0 && ids[1] == 1);
        CHECK(edd_tokenizer_encode(NULL, "a", 1, ids, 8, NULL, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    }
    { /* a long input of every byte value that is valid UTF-8 somewhere: no crash, sane output */
        size_t n = 200000;
        char *big = malloc(n);
        int32_t ids[77];
        size_t full = 0;
        for (size_t i = 0; i < n; i++) big[i] = (char)("aB c\xc3\xa9!'s\t"[i % 11]);
        CHECK(big && edd_tokenizer_encode(t, big, n, ids, 77, &full, NULL, 0) == EDD_OK && full > 77);
        CHECK(ids[0] == 0 && ids[76] == 1);
        for (size_t i = 0; i < n; i++) big[i] = i % 2 ? 'b' : 'a'; /* one word "abab...": 100,000 merges */
        CHECK(edd_tokenizer_encode(t, big, n, ids, 77, &full, NULL, 0) == EDD_OK && full == 100002);
        free(big);
    }
    CHECK(edd_tokenizer_max_length(t) == 77 && edd_tokenizer_vocab_size(t) == 18);
    CHECK(edd_tokenizer_special_id(t, EDD_TOKEN_BOS) == 0 && edd_tokenizer_special_id(t, EDD_TOKEN_PAD) == 1);
    CHECK(edd_tokenizer_special_id(t, (edd_special_token)7) == -1);
    edd_tokenizer_free(t);
    edd_tokenizer_free(NULL);
}

static void parse_fails(const char *vocab, const char *merges, edd_status want, const char *needle) {
    edd_tokenizer *t = (edd_tokenizer *)&t;
    char err[256] = "";
    edd_status st = edd_tokenizer_parse(vocab, strlen(vocab), merges, strlen(merges), &t, err, sizeof err);
    CHECK(st == want && t == NULL);
    if (!strstr(err, needle)) fprintf(stderr, "message '%s' lacks '%s'\n", err, needle);
    CHECK(strstr(err, needle) != NULL);
}

static void test_parse_errors(void) {
    parse_fails("{", MERGES, EDD_ERR_BAD_BUNDLE, "vocab.json: ");
    parse_fails("[]", MERGES, EDD_ERR_BAD_BUNDLE, "vocab.json: the top level must be an object");
    parse_fails("{\"a\": 1.5}", "", EDD_ERR_BAD_BUNDLE, "vocab.json: the top level[\"a\"] must be an integer id");
    parse_fails(VOCAB, "#version: 0.2\na b\nab\n", EDD_ERR_BAD_BUNDLE,
                "merges.txt: line 3 must be two tokens separated by one space, got \"ab\"");
    parse_fails(VOCAB, "a  b\n", EDD_ERR_BAD_BUNDLE, "merges.txt: line 1 must be two tokens");
    parse_fails(VOCAB, "a b\n\n", EDD_ERR_BAD_BUNDLE, "merges.txt: line 2 must be two tokens");
    parse_fails(VOCAB, "a q\n", EDD_ERR_BAD_BUNDLE, "merges.txt: line 1: token \"q\" is not in the vocabulary");
    parse_fails(VOCAB, "b a\n", EDD_ERR_BAD_BUNDLE, "merges.txt: line 1: the merged token \"ba\" is not");
    parse_fails("{\"a\": 0, \"<|endoftext|>\": 1}", "", EDD_ERR_BAD_BUNDLE, "bos_token \"<|startoftext|>\" is not");
    {
        edd_tokenizer *t;
        CHECK(edd_tokenizer_parse(NULL, 1, "", 0, &t, NULL, 0) == EDD_ERR_INVALID_ARGUMENT);
        CHECK(edd_tokenizer_parse(VOCAB, strlen(VOCAB), "", 0, NULL, NULL, 0) == EDD_ERR_INVALID_ARGUMENT);
        /* CRLF lines and no final newline are accepted */
        CHECK(edd_tokenizer_parse(VOCAB, strlen(VOCAB), "a b\r\nab c</w>", 13, &t, NULL, 0) == EDD_OK);
        edd_tokenizer_free(t);
    }
}

static void write_file(const char *dir, const char *name, const char *text) {
    char path[512];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void remove_file(const char *dir, const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    remove(path);
}

static void test_load(void) {
    char dir[] = "/tmp/edd-tok-XXXXXX", err[512];
    edd_tokenizer *t = NULL;
    int32_t ids[8];
    if (!mkdtemp(dir)) {
        CHECK(0);
        return;
    }
    CHECK(edd_tokenizer_load(dir, &t, err, sizeof err) == EDD_ERR_IO && strstr(err, "no vocab.json") && !t);
    write_file(dir, "vocab.json", VOCAB);
    CHECK(edd_tokenizer_load(dir, &t, err, sizeof err) == EDD_ERR_IO && strstr(err, "but no merges.txt"));
    write_file(dir, "merges.txt", MERGES);
    CHECK(edd_tokenizer_load(dir, &t, err, sizeof err) == EDD_OK);
    CHECK(edd_tokenizer_encode(t, "abc", 3, ids, 4, NULL, NULL, 0) == EDD_OK && ids[1] == 9 && ids[3] == 1);
    edd_tokenizer_free(t);
    /* configs: pad token and length; special_tokens_map.json wins */
    write_file(dir, "tokenizer_config.json", "{\"model_max_length\": 5, \"pad_token\": \"c</w>\"}");
    write_file(dir, "special_tokens_map.json", "{\"pad_token\": {\"content\": \"b</w>\", \"lstrip\": false}}");
    CHECK(edd_tokenizer_load(dir, &t, err, sizeof err) == EDD_OK);
    CHECK(edd_tokenizer_max_length(t) == 5 && edd_tokenizer_special_id(t, EDD_TOKEN_PAD) == 6);
    CHECK(edd_tokenizer_encode(t, "", 0, ids, 5, NULL, NULL, 0) == EDD_OK && ids[2] == 6 && ids[4] == 6);
    edd_tokenizer_free(t);
    write_file(dir, "special_tokens_map.json", "{\"pad_token\": 3}");
    CHECK(edd_tokenizer_load(dir, &t, err, sizeof err) == EDD_ERR_BAD_BUNDLE);
    CHECK(strstr(err, "special_tokens_map.json: pad_token must be a non-empty string") != NULL);
    write_file(dir, "special_tokens_map.json", "{\"pad_token\": \"zzz\"}");
    CHECK(edd_tokenizer_load(dir, &t, err, sizeof err) == EDD_ERR_BAD_BUNDLE);
    CHECK(strstr(err, "vocab.json: pad_token \"zzz\" is not in the vocabulary") != NULL);
    remove_file(dir, "special_tokens_map.json");
    write_file(dir, "tokenizer_config.json", "{\"model_max_length\": 1e30}"); /* "no limit": 77 */
    CHECK(edd_tokenizer_load(dir, &t, err, sizeof err) == EDD_OK && edd_tokenizer_max_length(t) == 77);
    edd_tokenizer_free(t);
    remove_file(dir, "tokenizer_config.json");
    /* tokenizer.json when vocab.json + merges.txt are absent; both merge spellings */
    remove_file(dir, "vocab.json");
    remove_file(dir, "merges.txt");
    {
        char json[2048];
        snprintf(json, sizeof json,
                 "{\"model\": {\"type\": \"BPE\", \"vocab\": %s, \"merges\": [\"a b\", [\"ab\", \"c</w>\"]]}}", VOCAB);
        write_file(dir, "tokenizer.json", json);
        CHECK(edd_tokenizer_load(dir, &t, err, sizeof err) == EDD_OK);
        CHECK(edd_tokenizer_encode(t, "abc", 3, ids, 4, NULL, NULL, 0) == EDD_OK && ids[1] == 9);
        edd_tokenizer_free(t);
        write_file(dir, "tokenizer.json", "{\"model\": {\"vocab\": {}, \"merges\": [1]}}");
        CHECK(edd_tokenizer_load(dir, &t, err, sizeof err) == EDD_ERR_BAD_BUNDLE);
        CHECK(strstr(err, "tokenizer.json: model.merges[0] must be") != NULL);
    }
    remove_file(dir, "tokenizer.json");
    rmdir(dir);
    CHECK(edd_tokenizer_load(NULL, &t, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
}

static int ranges_sorted(const edd_uc_range *r, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (r[i].first > r[i].last || (i && r[i].first <= r[i - 1].last)) return 0;
    return 1;
}

static uint32_t table_class(uint32_t cp) {
    for (size_t i = 0; i < edd__uc_classes_len; i++)
        if (cp >= edd__uc_classes[i].first && cp <= edd__uc_classes[i].last) return edd__uc_classes[i].value;
    return EDD_UC_OTHER;
}

static uint32_t table_lower(uint32_t cp) {
    for (size_t i = 0; i < edd__uc_lower_len; i++) {
        const edd_uc_lower *r = &edd__uc_lower[i];
        if (cp >= r->first && (cp - r->first) % r->stride == 0 && (cp - r->first) / r->stride < r->count)
            return (uint32_t)((int64_t)cp + r->delta);
    }
    return cp;
}

static void test_tables(void) {
    /* tokenizer.c answers ASCII without the tables: the tables must say the same */
    for (uint32_t cp = 0; cp < 0x80; cp++) {
        uint32_t want = ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z')  ? EDD_UC_LETTER
                        : (cp >= '0' && cp <= '9')                  ? EDD_UC_NUMBER
                        : (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) ? EDD_UC_SPACE
                                                                    : EDD_UC_OTHER;
        CHECK(table_class(cp) == want);
        CHECK(table_lower(cp) == (cp >= 'A' && cp <= 'Z' ? cp + 32 : cp));
    }
    for (size_t i = 0; i < edd__uc_lower_multi_len; i++) CHECK(edd__uc_lower_multi[i].cp >= 0x80);
    for (size_t i = 0; i < edd__uc_comp_len; i++) CHECK(edd__uc_comp[i].second >= edd__uc_comp_min_second);
    CHECK(strcmp(edd__unicode_version, "14.0.0") == 0);
    CHECK(ranges_sorted(edd__uc_classes, edd__uc_classes_len));
    CHECK(ranges_sorted(edd__uc_ccc, edd__uc_ccc_len));
    for (size_t i = 1; i < edd__uc_decomp_len; i++) CHECK(edd__uc_decomp[i].cp > edd__uc_decomp[i - 1].cp);
    for (size_t i = 1; i < edd__uc_comp_len; i++)
        CHECK(edd__uc_comp[i].first > edd__uc_comp[i - 1].first ||
              (edd__uc_comp[i].first == edd__uc_comp[i - 1].first &&
               edd__uc_comp[i].second > edd__uc_comp[i - 1].second));
    for (size_t i = 1; i < edd__uc_lower_len; i++) CHECK(edd__uc_lower[i].first > edd__uc_lower[i - 1].first);
    CHECK(edd__uc_lower_max >= 1 && edd__uc_lower_max <= 3);
}

int main(void) {
    test_encode();
    test_parse_errors();
    test_load();
    test_tables();
    printf("test_tokenizer: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
