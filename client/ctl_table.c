/*
 * ctl_table.c — cells, table lines and key/value lines for the text
 * format (see ctl_table.h).
 */
#include "ctl_table.h"

#include <stdarg.h>
#include <string.h>

#include "ul_text.h"

#define ELLIPSIS "\xe2\x80\xa6" /* "…": one column */

/* Width of the key column of key/value blocks (show). */
#define KEY_W 14

/* Bytes of the display unit at p in ul_escape() output: an escape
 * sequence, one UTF-8 character, or one byte. */
static size_t s_unit(const char *p)
{
    unsigned char c = (unsigned char)p[0];
    size_t n = 1;
    if (c == '\\')
        n = p[1] == 'x' ? 4 : 2;
    else if (c >= 0xf0)
        n = 4;
    else if (c >= 0xe0)
        n = 3;
    else if (c >= 0xc0)
        n = 2;
    for (size_t i = 1; i < n; i++)
        if (!p[i])
            return i;
    return n;
}

static size_t s_unit_cols(const char *p, size_t n)
{
    return *p == '\\' ? n : 1;
}

/* Columns that escaped text takes. Any character counts as one column:
 * a wide (East Asian) one takes two and pushes the rest of its line. */
static size_t s_cols(const char *s)
{
    size_t cols = 0;
    for (const char *p = s; *p;) {
        size_t n = s_unit(p);
        cols += s_unit_cols(p, n);
        p += n;
    }
    return cols;
}

/* Client text made safe for a terminal; with fit, cut to width columns
 * with a final "…" when longer. Never cuts inside an escape sequence. */
const char *ctl_cell(const char *raw, size_t width, bool fit, char *out, size_t outsz)
{
    ul_escape(raw, strlen(raw), out, outsz);
    if (!fit || width < 2 || s_cols(out) <= width)
        return out;
    size_t cols = 0;
    char *p = out;
    while (*p) {
        size_t n = s_unit(p);
        size_t w = s_unit_cols(p, n);
        if (cols + w > width - 1)
            break;
        cols += w;
        p += n;
    }
    if ((size_t)(p - out) + sizeof ELLIPSIS <= outsz)
        memcpy(p, ELLIPSIS, sizeof ELLIPSIS);
    return out;
}

static void s_pad(FILE *f, size_t n)
{
    while (n--)
        fputc(' ', f);
}

/* One table line, header or row: the same column widths for both, two
 * spaces apart. A cell wider than its column pushes the rest of the line
 * instead of being cut (cells that may be long are fitted beforehand). */
void ctl_line(FILE *f, const ctl_col *cols, size_t n, const char *const *cells)
{
    for (size_t i = 0; i < n; i++) {
        size_t w = s_cols(cells[i]);
        size_t pad = w < cols[i].width ? cols[i].width - w : 0;
        if (i)
            fputs("  ", f);
        if (cols[i].right)
            s_pad(f, pad);
        fputs(cells[i], f);
        if (!cols[i].right && i + 1 < n)
            s_pad(f, pad);
    }
    fputc('\n', f);
}

void ctl_header(FILE *f, const ctl_col *cols, size_t n)
{
    const char *titles[16];
    for (size_t i = 0; i < n && i < 16; i++)
        titles[i] = cols[i].title;
    ctl_line(f, cols, n < 16 ? n : 16, titles);
}

void ctl_kv(FILE *f, const char *key, const char *fmt, ...)
{
    fprintf(f, "%-*s", KEY_W, key);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
}
