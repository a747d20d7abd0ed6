/* unicode.h - the little Unicode the tokenizer needs: UTF-8 decoding and encoding, and the
 * letter / number / white-space classes that regex pre-tokenizers test (\p{L}, \p{N}, \s).
 *
 * The class table is generated from Python's unicodedata by scripts/gen-unicode.py into
 * src/unicode_data.h. Not here: normalization, case folding, grapheme clusters.
 */
#ifndef KVF_UNICODE_H
#define KVF_UNICODE_H

#include <stddef.h>
#include <stdint.h>

#define KVF_U_LETTER 1u /* general category L* */
#define KVF_U_NUMBER 2u /* general category N* */
#define KVF_U_SPACE  4u /* White_Space property */

/* Returned by kvf_utf8_decode for a byte that does not start a valid UTF-8 sequence. */
#define KVF_U_INVALID 0xFFFFFFFFu

/* Class bits (KVF_U_*) of a code point; 0 for KVF_U_INVALID and unassigned code points. */
unsigned kvf_unicode_class(uint32_t cp);

/* Decode the character at s[0] (n >= 1 bytes available). Returns its code point and stores its
 * length in *len (1..4). An invalid, overlong, truncated or surrogate sequence yields
 * KVF_U_INVALID with *len = 1, so every byte of any input belongs to exactly one character. */
uint32_t kvf_utf8_decode(const char *s, size_t n, size_t *len);

/* Write the UTF-8 encoding of cp (<= 0x10FFFF) to out; returns its length (1..4), 0 if cp is
 * not encodable. */
size_t kvf_utf8_encode(uint32_t cp, char out[4]);

/* "14.0.0": the Unicode version the tables were generated from. */
const char *kvf_unicode_version(void);

#endif /* KVF_UNICODE_H */
