/* json.h — a small strict JSON (RFC 8259) reader, internal to the runtime.
 *
 * It reads what the bundle writer (Python's json module) produces: objects, arrays,
 * strings (every escape, \u surrogate pairs to UTF-8), numbers (strtod, correctly rounded
 * on glibc/musl/macOS; "is_integer" when the literal has no fraction or exponent), true,
 * false, null. It refuses anything else: NaN/Infinity literals, trailing commas, comments,
 * control characters in strings, invalid UTF-8 escapes, leading zeros, trailing garbage,
 * nesting deeper than EDD_JSON_MAX_DEPTH. A refusal gives a message with the line and column.
 * Numbers are parsed in the "C" locale's format whatever the process locale is.
 *
 * The tree is one allocation per node array; edd__json_free releases it all.
 */
#ifndef EDD_JSON_H
#define EDD_JSON_H

#include <stddef.h>

#include "edgediff.h"

#define EDD_JSON_MAX_DEPTH 64

typedef enum edd_json_type {
    EDD_JSON_NULL,
    EDD_JSON_FALSE,
    EDD_JSON_TRUE,
    EDD_JSON_NUMBER,
    EDD_JSON_STRING,
    EDD_JSON_ARRAY,
    EDD_JSON_OBJECT
} edd_json_type;

typedef struct edd_json edd_json;
struct edd_json {
    edd_json_type type;
    double number;   /* NUMBER */
    int is_integer;  /* NUMBER: the literal had no fraction and no exponent */
    char *string;    /* STRING: NUL-terminated UTF-8 (may also contain NULs; see len) */
    size_t len;      /* STRING: bytes; ARRAY / OBJECT: items */
    edd_json *items; /* ARRAY / OBJECT: len children */
    char *key;       /* a child of an OBJECT: its key (NUL-terminated) */
    size_t key_len;
};

/* Parse text[0..len). On failure *out is NULL and err says where and what. */
edd_status edd__json_parse(const char *text, size_t len, edd_json **out, char *err, size_t err_size);
void edd__json_free(edd_json *root);

/* The member `key` of an object (the last one if repeated), or NULL (also for non-objects). */
const edd_json *edd__json_get(const edd_json *obj, const char *key);

/* "object", "array", "string", "number", "true", "false" or "null" */
const char *edd__json_type_name(const edd_json *v);

#endif /* EDD_JSON_H */
