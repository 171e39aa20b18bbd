/*
 * ctl_table.h — text for a terminal, as uvmleasectl's text format lays it
 * out: cells of client-chosen text made safe (ul_escape) and, when asked,
 * cut to a width; table lines whose header and rows share column widths;
 * key/value lines.
 */
#ifndef UL_CTL_TABLE_H
#define UL_CTL_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "ul_proto.h"

/* Room for any escaped broker string: ul_escape() turns one byte into at
 * most four ("\xHH"). */
#define CTL_CELL_MAX (UL_MAX_REASON * 4 + 16)

/* Client text made safe for a terminal in out; with fit, cut to width
 * columns with a final "…" when longer. Never cuts inside an escape
 * sequence. Returns out. */
const char *ctl_cell(const char *raw, size_t width, bool fit, char *out, size_t outsz);

typedef struct ctl_col {
    const char *title;
    size_t width;
    bool right;
} ctl_col;

/* One table line, header or row: the same column widths for both, two
 * spaces apart. A cell wider than its column pushes the rest of the line
 * instead of being cut (cells that may be long are fitted beforehand). */
void ctl_line(FILE *f, const ctl_col *cols, size_t n, const char *const *cells);
/* The column titles as a line (at most 16 columns). */
void ctl_header(FILE *f, const ctl_col *cols, size_t n);

/* "key" padded to the key column of a key/value block, then the value. */
__attribute__((format(printf, 3, 4))) void ctl_kv(FILE *f, const char *key, const char *fmt, ...);

#endif
