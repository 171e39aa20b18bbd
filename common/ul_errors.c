/*
 * ul_errors.c — names and messages of the status codes, generated from the
 * one list in uvmlease_errors.h.
 */
#include <string.h>

#include "ul_proto.h"

struct status_entry {
    int code;
    const char *name;
    const char *message;
};

static const struct status_entry s_status[] = {
#define UL_STATUS_ENTRY_(sym, num, wire, msg) {num, wire, msg},
    UVMLEASE_ERRORS(UL_STATUS_ENTRY_)
#undef UL_STATUS_ENTRY_
};

static const struct status_entry *status_find(int code)
{
    for (size_t i = 0; i < sizeof s_status / sizeof s_status[0]; i++)
        if (s_status[i].code == code)
            return &s_status[i];
    return NULL;
}

const char *ul_status_name(int code)
{
    const struct status_entry *e = status_find(code);
    return e ? e->name : "unknown";
}

const char *ul_status_message(int code)
{
    const struct status_entry *e = status_find(code);
    return e ? e->message : "unknown";
}

int ul_status_from_name(const char *name)
{
    if (!name)
        return -1;
    for (size_t i = 0; i < sizeof s_status / sizeof s_status[0]; i++)
        if (strcmp(s_status[i].name, name) == 0)
            return s_status[i].code;
    return -1;
}
