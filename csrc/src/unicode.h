/* unicode.h — the generated Unicode tables (unicode_tables.c, from csrc/tools/gen_unicode.py)
 * and their lookups (in tokenizer.c), internal to the runtime. */
#ifndef EDD_UNICODE_H
#define EDD_UNICODE_H

#include <stddef.h>
#include <stdint.h>

enum { EDD_UC_OTHER = 0, EDD_UC_LETTER = 1, EDD_UC_NUMBER = 2, EDD_UC_SPACE = 3 };

typedef struct edd_uc_range { /* first..last (inclusive) have value */
    uint32_t first, last;
    uint32_t value; /* a class (EDD_UC_*) or a canonical combining class */
} edd_uc_range;

typedef struct edd_uc_lower { /* cp = first + k * stride (k < count) lowers to cp + delta */
    uint32_t first;
    uint16_t count;
    uint16_t stride;
    int32_t delta;
} edd_uc_lower;

typedef struct edd_uc_seq { /* cp maps to pool[offset .. offset + len) */
    uint32_t cp, offset, len;
} edd_uc_seq;

typedef struct edd_uc_pair { /* first + second compose to composite */
    uint32_t first, second, composite;
} edd_uc_pair;

extern const char edd__unicode_version[];
extern const edd_uc_range edd__uc_classes[];
extern const size_t edd__uc_classes_len;
extern const edd_uc_range edd__uc_ccc[];
extern const size_t edd__uc_ccc_len;
extern const edd_uc_lower edd__uc_lower[];
extern const size_t edd__uc_lower_len;
extern const edd_uc_seq edd__uc_lower_multi[];
extern const size_t edd__uc_lower_multi_len;
extern const uint32_t edd__uc_lower_pool[];
extern const unsigned edd__uc_lower_max; /* the longest lower-case mapping */
extern const edd_uc_seq edd__uc_decomp[];
extern const size_t edd__uc_decomp_len;
extern const uint32_t edd__uc_decomp_pool[];
extern const edd_uc_pair edd__uc_comp[];
extern const size_t edd__uc_comp_len;
extern const uint32_t edd__uc_comp_min_second; /* no composite has a smaller second code point */

#endif /* EDD_UNICODE_H */
