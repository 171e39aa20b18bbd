/*
 * ul_text.c — UVM ID and free-text validation, sanitizing and escaping.
 */
#include "ul_text.h"

#include <stdint.h>
#include <string.h>

#include "ul_proto.h"

int ul_uvm_id_check(const char *s, size_t len)
{
    if (!s || len == 0 || len > UL_MAX_UVM)
        return UVMLEASE_EBADUVM;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x21 || c > 0x7e)
            return UVMLEASE_EBADUVM;
    }
    return 0;
}

/*
 * Length of the well-formed UTF-8 sequence at s (at most len bytes), with
 * its code point in *cp; 0 if the bytes there are not one. Follows the
 * Unicode table of well-formed byte sequences, which excludes overlong
 * forms, surrogates (U+D800-DFFF) and anything above U+10FFFF.
 */
static size_t utf8_seq(const unsigned char *s, size_t len, uint32_t *cp)
{
    unsigned char b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    uint32_t v;
    if (b >= 0xc2 && b <= 0xdf) {
        n = 2;
        v = b & 0x1fu;
    } else if (b >= 0xe0 && b <= 0xef) {
        n = 3;
        v = b & 0x0fu;
        if (b == 0xe0)
            lo = 0xa0; /* overlong below U+0800 */
        else if (b == 0xed)
            hi = 0x9f; /* surrogates */
    } else if (b >= 0xf0 && b <= 0xf4) {
        n = 4;
        v = b & 0x07u;
        if (b == 0xf0)
            lo = 0x90; /* overlong below U+10000 */
        else if (b == 0xf4)
            hi = 0x8f; /* above U+10FFFF */
    } else {
        return 0; /* continuation byte, 0xc0/0xc1 overlong lead, 0xf5-0xff */
    }
    if (len < n)
        return 0;
    if (s[1] < lo || s[1] > hi)
        return 0;
    v = (v << 6) | (s[1] & 0x3fu);
    for (size_t i = 2; i < n; i++) {
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
        v = (v << 6) | (s[i] & 0x3fu);
    }
    *cp = v;
    return n;
}

static int is_control(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f);
}

int ul_text_check(const char *s, size_t len, size_t max)
{
    if (len > max || (!s && len > 0))
        return UVMLEASE_EBADTEXT;
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        size_t n = utf8_seq(u + i, len - i, &cp);
        if (n == 0 || is_control(cp))
            return UVMLEASE_EBADTEXT;
        i += n;
    }
    return 0;
}

size_t ul_text_sanitize(char *s, size_t max)
{
    if (!s)
        return 0;
    unsigned char *u = (unsigned char *)s;
    size_t len = strlen(s), r = 0, w = 0;
    while (r < len) {
        uint32_t cp;
        size_t n = utf8_seq(u + r, len - r, &cp);
        if (n == 0 || is_control(cp)) {
            /* One '?' per bad byte, or per control character. */
            if (w + 1 > max)
                break;
            u[w++] = '?';
            r += n ? n : 1;
            continue;
        }
        if (w + n > max)
            break;
        memmove(u + w, u + r, n);
        w += n;
        r += n;
    }
    u[w] = '\0';
    return w;
}

size_t ul_escape(const char *s, size_t len, char *out, size_t outsz)
{
    static const char hex[] = "0123456789abcdef";
    if (!out || outsz == 0)
        return 0;
    const unsigned char *u = (const unsigned char *)s;
    size_t w = 0, i = 0;
    if (!s)
        len = 0;
    while (i < len) {
        char piece[16];
        size_t plen = 0, adv;
        uint32_t cp;
        size_t n = utf8_seq(u + i, len - i, &cp);
        if (n == 0) {
            /* Not UTF-8: show the one byte and resynchronise after it. */
            piece[plen++] = '\\';
            piece[plen++] = 'x';
            piece[plen++] = hex[u[i] >> 4];
            piece[plen++] = hex[u[i] & 0xf];
            adv = 1;
        } else if (is_control(cp)) {
            adv = n;
            if (cp == '\n' || cp == '\t' || cp == '\r') {
                piece[plen++] = '\\';
                piece[plen++] = cp == '\n' ? 'n' : cp == '\t' ? 't' : 'r';
            } else {
                /* C1 controls (two bytes) are shown byte by byte, since
                 * terminals act on them (U+009B is CSI). */
                for (size_t k = 0; k < n; k++) {
                    piece[plen++] = '\\';
                    piece[plen++] = 'x';
                    piece[plen++] = hex[u[i + k] >> 4];
                    piece[plen++] = hex[u[i + k] & 0xf];
                }
            }
        } else if (cp == '"' || cp == '\\') {
            piece[plen++] = '\\';
            piece[plen++] = (char)cp;
            adv = 1;
        } else {
            memcpy(piece, u + i, n);
            plen = n;
            adv = n;
        }
        if (plen >= outsz - w) /* keep room for the NUL */
            break;
        memcpy(out + w, piece, plen);
        w += plen;
        i += adv;
    }
    out[w] = '\0';
    return w;
}
