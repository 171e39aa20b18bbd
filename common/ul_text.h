/*
 * ul_text.h — validation of identifiers and client-supplied free text, and
 * escaping for logs and tables.
 */
#ifndef UL_TEXT_H
#define UL_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/* A UVM ID: 1-256 bytes, each printable ASCII 0x21-0x7e (no space, no
 * control, no non-ASCII). Returns 0 or UVMLEASE_EBADUVM. */
int ul_uvm_id_check(const char *s, size_t len);

/* Free text (labels, phases, reasons): at most max bytes of valid UTF-8
 * (no overlongs, no surrogates, <= U+10FFFF) without control characters
 * (C0, DEL, C1). Empty is allowed. Returns 0 or UVMLEASE_EBADTEXT. */
int ul_text_check(const char *s, size_t len, size_t max);

/*
 * Make the NUL-terminated s pass ul_text_check(s, strlen(s), max), in
 * place: each byte that is not part of well-formed UTF-8, and each control
 * character, becomes '?', and the text is cut at a character boundary to
 * at most max bytes. For text read from the kernel rather than validated
 * on the wire (a command name in /proc/<pid>/comm is whatever the process
 * set). Returns the new length.
 */
size_t ul_text_sanitize(char *s, size_t max);

/*
 * Copy s into out (size outsz, always NUL-terminated when outsz > 0),
 * escaping bytes < 0x20, 0x7f, '"' and '\\' as \n \t \r \" \\ or \xHH,
 * C1 controls (U+0080-U+009F) as \xc2\xHH, and invalid UTF-8 bytes as
 * \xHH. Truncates at a character boundary (never half a character or half
 * an escape). Returns the length written (excluding the NUL).
 */
size_t ul_escape(const char *s, size_t len, char *out, size_t outsz);

#endif
