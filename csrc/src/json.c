/* json.c — the strict JSON reader of json.h: recursive descent, depth-limited, no globals.
 *
 *   value  = object | array | string | number | true | false | null
 *   number = -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?     validated here, then
 *            converted by strtod on a copy with the decimal point the C library expects
 */
#include "json.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct parser {
    const char *s;
    size_t len, pos;
    char *err;
    size_t err_size;
    int failed;
    char decimal_point; /* the C library's, so that strtod reads "0.5" in any locale */
} parser;

static void where(const parser *p, size_t pos, unsigned long *line, unsigned long *col) {
    size_t i;
    *line = 1;
    *col = 1;
    for (i = 0; i < pos && i < p->len; i++) {
        if (p->s[i] == '\n') {
            ++*line;
            *col = 1;
        } else {
            ++*col;
        }
    }
}

static int fail(parser *p, const char *what) {
    unsigned long line, col;
    if (p->failed) return -1;
    p->failed = 1;
    where(p, p->pos, &line, &col);
    edd__fail(p->err, p->err_size, EDD_ERR_BAD_BUNDLE, "invalid JSON at line %lu column %lu: %s", line, col, what);
    return -1;
}

static void skip_ws(parser *p) {
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int is_digit(char c) {
    return c >= '0' && c <= '9';
}

static void free_value(edd_json *v) {
    size_t i;
    if (v->type == EDD_JSON_ARRAY || v->type == EDD_JSON_OBJECT) {
        for (i = 0; i < v->len; i++) {
            free_value(&v->items[i]);
            free(v->items[i].key);
        }
        free(v->items);
    } else if (v->type == EDD_JSON_STRING) {
        free(v->string);
    }
}

static int parse_value(parser *p, edd_json *v, int depth);

static int hex4(parser *p, unsigned *out) {
    unsigned v = 0;
    int k;
    if (p->len - p->pos < 4) return fail(p, "truncated \\u escape");
    for (k = 0; k < 4; k++) {
        char c = p->s[p->pos + (size_t)k];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return fail(p, "bad hex digit in \\u escape");
    }
    p->pos += 4;
    *out = v;
    return 0;
}

static size_t put_utf8(unsigned cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
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

/* p->s[p->pos] is the opening quote. The decoded string is never longer than the literal. */
static int parse_string(parser *p, char **out, size_t *out_len) {
    size_t start = ++p->pos, end = start, n = 0;
    char *buf;
    /* find the closing quote first, to size the buffer */
    while (end < p->len && p->s[end] != '"') end += p->s[end] == '\\' ? 2 : 1;
    if (end >= p->len) return fail(p, "unterminated string");
    buf = (char *)malloc(end - start + 1);
    if (!buf) return fail(p, "out of memory");
    while (p->pos < end) {
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c < 0x20) {
            free(buf);
            return fail(p, "control character in string");
        }
        if (c != '\\') {
            buf[n++] = (char)c;
            p->pos++;
            continue;
        }
        p->pos++;
        c = (unsigned char)p->s[p->pos++];
        switch (c) {
            case '"': buf[n++] = '"'; break;
            case '\\': buf[n++] = '\\'; break;
            case '/': buf[n++] = '/'; break;
            case 'b': buf[n++] = '\b'; break;
            case 'f': buf[n++] = '\f'; break;
            case 'n': buf[n++] = '\n'; break;
            case 'r': buf[n++] = '\r'; break;
            case 't': buf[n++] = '\t'; break;
            case 'u': {
                unsigned cp, lo;
                if (hex4(p, &cp)) {
                    free(buf);
                    return -1;
                }
                if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    free(buf);
                    return fail(p, "unpaired low surrogate in \\u escape");
                }
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (p->pos + 2 > end || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
                        free(buf);
                        return fail(p, "unpaired high surrogate in \\u escape");
                    }
                    p->pos += 2;
                    if (hex4(p, &lo)) {
                        free(buf);
                        return -1;
                    }
                    if (lo < 0xDC00 || lo > 0xDFFF) {
                        free(buf);
                        return fail(p, "high surrogate not followed by a low one");
                    }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                n += put_utf8(cp, buf + n); /* 4 bytes at most for a 6- or 12-byte escape */
                break;
            }
            default:
                free(buf);
                p->pos--;
                return fail(p, "unknown escape in string");
        }
    }
    buf[n] = '\0';
    p->pos = end + 1;
    *out = buf;
    *out_len = n;
    return 0;
}

static int parse_number(parser *p, edd_json *v) {
    size_t start = p->pos, k;
    int integer = 1;
    char local[64], *copy, *endp;
    const char *s = p->s;
    if (p->pos < p->len && s[p->pos] == '-') p->pos++;
    if (p->pos >= p->len || !is_digit(s[p->pos])) return fail(p, "expected a digit");
    if (s[p->pos] == '0') {
        p->pos++;
        if (p->pos < p->len && is_digit(s[p->pos])) return fail(p, "leading zero in number");
    } else {
        while (p->pos < p->len && is_digit(s[p->pos])) p->pos++;
    }
    if (p->pos < p->len && s[p->pos] == '.') {
        integer = 0;
        p->pos++;
        if (p->pos >= p->len || !is_digit(s[p->pos])) return fail(p, "expected a digit after the decimal point");
        while (p->pos < p->len && is_digit(s[p->pos])) p->pos++;
    }
    if (p->pos < p->len && (s[p->pos] == 'e' || s[p->pos] == 'E')) {
        integer = 0;
        p->pos++;
        if (p->pos < p->len && (s[p->pos] == '+' || s[p->pos] == '-')) p->pos++;
        if (p->pos >= p->len || !is_digit(s[p->pos])) return fail(p, "expected a digit in the exponent");
        while (p->pos < p->len && is_digit(s[p->pos])) p->pos++;
    }
    k = p->pos - start;
    copy = k < sizeof local ? local : (char *)malloc(k + 1);
    if (!copy) return fail(p, "out of memory");
    memcpy(copy, s + start, k);
    copy[k] = '\0';
    if (p->decimal_point != '.') {
        size_t i;
        for (i = 0; i < k; i++)
            if (copy[i] == '.') copy[i] = p->decimal_point;
    }
    v->type = EDD_JSON_NUMBER;
    v->number = strtod(copy, &endp); /* overflow gives +-HUGE_VAL: refused later as non-finite */
    v->is_integer = integer;
    if (copy != local) free(copy);
    return 0;
}

static int literal(parser *p, const char *word, edd_json_type type, edd_json *v) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0) return fail(p, "unexpected character");
    p->pos += n;
    v->type = type;
    return 0;
}

/* Arrays and objects: items grow by doubling. */
static int push(parser *p, edd_json *v, size_t *cap) {
    if (v->len == *cap) {
        size_t ncap = *cap ? *cap * 2 : 4;
        edd_json *items;
        if (ncap > ((size_t)-1) / sizeof(edd_json)) return fail(p, "too many items");
        items = (edd_json *)realloc(v->items, ncap * sizeof(edd_json));
        if (!items) return fail(p, "out of memory");
        v->items = items;
        *cap = ncap;
    }
    memset(&v->items[v->len], 0, sizeof(edd_json));
    v->items[v->len].type = EDD_JSON_NULL;
    v->len++;
    return 0;
}

static int parse_container(parser *p, edd_json *v, int depth, int object) {
    size_t cap = 0;
    char close = object ? '}' : ']';
    v->type = object ? EDD_JSON_OBJECT : EDD_JSON_ARRAY;
    if (depth >= EDD_JSON_MAX_DEPTH) return fail(p, "nested too deeply");
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        return 0;
    }
    for (;;) {
        edd_json *item;
        if (push(p, v, &cap)) return -1;
        item = &v->items[v->len - 1];
        skip_ws(p);
        if (object) {
            if (p->pos >= p->len || p->s[p->pos] != '"') return fail(p, "expected a string key");
            if (parse_string(p, &item->key, &item->key_len)) return -1;
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') return fail(p, "expected ':' after a key");
            p->pos++;
            skip_ws(p);
        }
        if (parse_value(p, item, depth + 1)) return -1;
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == close) {
            p->pos++;
            return 0;
        }
        return fail(p, object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int parse_value(parser *p, edd_json *v, int depth) {
    char c;
    skip_ws(p);
    if (p->pos >= p->len) return fail(p, "unexpected end of input");
    c = p->s[p->pos];
    switch (c) {
        case '{': return parse_container(p, v, depth, 1);
        case '[': return parse_container(p, v, depth, 0);
        case '"': v->type = EDD_JSON_STRING; return parse_string(p, &v->string, &v->len);
        case 't': return literal(p, "true", EDD_JSON_TRUE, v);
        case 'f': return literal(p, "false", EDD_JSON_FALSE, v);
        case 'n': return literal(p, "null", EDD_JSON_NULL, v);
        default:
            if (c == '-' || is_digit(c)) return parse_number(p, v);
            return fail(p, "unexpected character");
    }
}

edd_status edd__json_parse(const char *text, size_t len, edd_json **out, char *err, size_t err_size) {
    parser p;
    edd_json *root;
    char probe[8];
    if (err && err_size) err[0] = '\0';
    if (!out) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd__json_parse: out is NULL");
    *out = NULL;
    if (!text && len) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd__json_parse: text is NULL");
    root = (edd_json *)calloc(1, sizeof *root);
    if (!root) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    memset(&p, 0, sizeof p);
    p.s = text;
    p.len = len;
    p.err = err;
    p.err_size = err_size;
    snprintf(probe, sizeof probe, "%.1f", 0.5); /* "0.5" or "0,5": the decimal point strtod wants */
    p.decimal_point = probe[1];
    if (len >= 3 && (unsigned char)text[0] == 0xEF && (unsigned char)text[1] == 0xBB && (unsigned char)text[2] == 0xBF)
        p.pos = 3; /* a UTF-8 byte order mark */
    if (parse_value(&p, root, 0) == 0) {
        skip_ws(&p);
        if (p.pos != p.len) fail(&p, "unexpected data after the value");
    }
    if (p.failed) {
        edd__json_free(root);
        return EDD_ERR_BAD_BUNDLE;
    }
    *out = root;
    return EDD_OK;
}

void edd__json_free(edd_json *root) {
    if (!root) return;
    free_value(root);
    free(root);
}

const edd_json *edd__json_get(const edd_json *obj, const char *key) {
    size_t i, n;
    if (!obj || obj->type != EDD_JSON_OBJECT || !key) return NULL;
    n = strlen(key);
    for (i = obj->len; i-- > 0;)
        if (obj->items[i].key_len == n && memcmp(obj->items[i].key, key, n) == 0) return &obj->items[i];
    return NULL;
}

const char *edd__json_type_name(const edd_json *v) {
    static const char *const names[] = {"null", "false", "true", "number", "string", "array", "object"};
    if (!v) return "missing";
    return names[v->type];
}
