/* unicode.c - UTF-8 decoding/encoding and Unicode class lookup for the tokenizer.
 *
 * Classes come from a generated range table (src/unicode_data.h, scripts/gen-unicode.py):
 * ASCII is answered from a 128-entry table built on first principles, the rest by binary
 * search over ~800 ranges.
 */
#include "engine/unicode.h"

typedef struct {
    uint32_t lo, hi; /* inclusive */
    uint8_t flags;   /* KVF_U_* */
} kvf_urange;

#include "engine/unicode_data.h"

const char *kvf_unicode_version(void) {
    return KVF_UNICODE_VERSION;
}

static unsigned ascii_class(uint32_t c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return KVF_U_LETTER;
    if (c >= '0' && c <= '9') return KVF_U_NUMBER;
    if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return KVF_U_SPACE;
    return 0;
}

unsigned kvf_unicode_class(uint32_t cp) {
    if (cp < 0x80) return ascii_class(cp);
    if (cp > 0x10FFFF) return 0;
    size_t lo = 0, hi = KVF_UNICODE_N_RANGES;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (kvf_unicode_ranges[mid].hi < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < KVF_UNICODE_N_RANGES && kvf_unicode_ranges[lo].lo <= cp)
        return kvf_unicode_ranges[lo].flags;
    return 0;
}

uint32_t kvf_utf8_decode(const char *str, size_t n, size_t *len) {
    const unsigned char *s = (const unsigned char *)str;
    unsigned c = s[0];
    *len = 1;
    if (c < 0x80) return c;
    size_t need;
    uint32_t cp, min;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2, cp = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3, cp = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return KVF_U_INVALID; /* continuation byte, C0/C1 overlong lead, or F5..FF */
    }
    if (n < need) return KVF_U_INVALID;
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xC0) != 0x80) return KVF_U_INVALID;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return KVF_U_INVALID;
    *len = need;
    return cp;
}

size_t kvf_utf8_encode(uint32_t cp, char out[4]) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp >= 0xD800 && cp <= 0xDFFF) return 0;
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    if (cp <= 0x10FFFF) {
        out[0] = (char)(0xF0 | (cp >> 18));
        out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[3] = (char)(0x80 | (cp & 0x3F));
        return 4;
    }
    return 0;
}
