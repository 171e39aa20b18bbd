/*
 * config.c — uvmleased's settings: the key table, value parsing shared by
 * flags and file, and the file read with libinih.
 */
#include "config.h"

#include <errno.h>
#include <grp.h>
#include <ini.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    K_STR,      /* a string kept as given */
    K_ENDPOINT, /* ipc://PATH */
    K_SERIALIZE,
    K_COUNT32, /* 0..UINT32_MAX */
    K_MS,      /* milliseconds, up to a year */
    K_LEASES,  /* 1..1048576 */
    K_BOOL,
    K_LOGLEVEL,
} kind;

typedef struct key {
    const char *name;
    kind k;
    size_t off; /* of the field in uvmlease_broker_config */
} key;

#define F(field) offsetof(uvmlease_broker_config, field)
static const key s_keys[] = {
    {"runtime-dir", K_STR, F(runtime_dir)},      {"endpoint", K_ENDPOINT, F(endpoint)},
    {"socket-group", K_STR, F(socket_group)},    {"admin-group", K_STR, F(admin_group)},
    {"serialize", K_SERIALIZE, F(serialize)},    {"max-active", K_COUNT32, F(max_active)},
    {"quarantine-ms", K_MS, F(quarantine_ms)},   {"hold-warn-ms", K_MS, F(hold_warn_ms)},
    {"kill-grace-ms", K_MS, F(kill_grace_ms)},   {"max-leases", K_LEASES, F(max_leases)},
    {"force-journal", K_BOOL, F(force_journal)}, {"log-level", K_LOGLEVEL, F(log_level)},
};
#undef F
#define S_NKEYS (sizeof s_keys / sizeof s_keys[0])

static const key *s_find(const char *name)
{
    for (size_t i = 0; i < S_NKEYS; i++)
        if (strcmp(s_keys[i].name, name) == 0)
            return &s_keys[i];
    return NULL;
}

static int s_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    if (!*s || *s == '-' || *s == '+')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return -1;
    *out = v;
    return 0;
}

static int s_why(char *why, size_t whysz, const char *text)
{
    if (whysz)
        snprintf(why, whysz, "%s", text);
    return -1;
}

int ul_config_set(uvmlease_broker_config *cfg, const char *name, const char *value, char *why,
                  size_t whysz)
{
    const key *k = s_find(name);
    if (!k)
        return s_why(why, whysz, "unknown key");
    void *field = (char *)cfg + k->off;
    uint64_t v;
    switch (k->k) {
    case K_ENDPOINT:
        if (strncmp(value, "ipc://", 6) != 0 || !value[6])
            return s_why(why, whysz, "only ipc://PATH carries peer credentials");
        /* fall through */
    case K_STR:
        if (!*value)
            return s_why(why, whysz, "empty");
        *(const char **)field = value;
        return 0;
    case K_SERIALIZE:
        if (strcmp(value, "confidential") == 0)
            *(lt_serialize *)field = LT_SERIALIZE_CONFIDENTIAL;
        else if (strcmp(value, "all") == 0)
            *(lt_serialize *)field = LT_SERIALIZE_ALL;
        else if (strcmp(value, "none") == 0)
            *(lt_serialize *)field = LT_SERIALIZE_NONE;
        else
            return s_why(why, whysz, "expected confidential, all or none");
        return 0;
    case K_COUNT32:
        if (s_parse_u64(value, UINT32_MAX, &v) < 0)
            return s_why(why, whysz, "expected a count");
        *(uint32_t *)field = (uint32_t)v;
        return 0;
    case K_MS:
        if (s_parse_u64(value, 86400000ull * 365, &v) < 0)
            return s_why(why, whysz, "expected milliseconds");
        *(uint64_t *)field = v;
        return 0;
    case K_LEASES:
        if (s_parse_u64(value, 1048576, &v) < 0 || v == 0)
            return s_why(why, whysz, "expected a count from 1 to 1048576");
        *(uint32_t *)field = (uint32_t)v;
        return 0;
    case K_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "yes") || !strcmp(value, "on") ||
            !strcmp(value, "1"))
            *(bool *)field = true;
        else if (!strcmp(value, "false") || !strcmp(value, "no") || !strcmp(value, "off") ||
                 !strcmp(value, "0"))
            *(bool *)field = false;
        else
            return s_why(why, whysz, "expected true or false");
        return 0;
    case K_LOGLEVEL: {
        int l = ul_log_level_parse(value);
        if (l < 0)
            return s_why(why, whysz, "expected debug, info, warn or error");
        *(ul_log_level *)field = (ul_log_level)l;
        return 0;
    }
    }
    return s_why(why, whysz, "unknown key");
}

/* ---- the file ---------------------------------------------------------- */

/* String values read from a file live as long as the process (the broker
 * copies what it keeps; the daemon reads one file). */
static char *s_owned[S_NKEYS * 2];
static size_t s_n_owned;

typedef struct load_ctx {
    uvmlease_broker_config *cfg;
    bool seen[S_NKEYS];
    char msg[320]; /* the first error */
} load_ctx;

/* Record the first error (inih then reports its line); 0 stops the file
 * counting as good. */
#define S_FAIL(c, ...)                                                                             \
    do {                                                                                           \
        if (!(c)->msg[0])                                                                          \
            snprintf((c)->msg, sizeof(c)->msg, __VA_ARGS__);                                       \
        return 0;                                                                                  \
    } while (0)

static int s_handler(void *user, const char *section, const char *name, const char *value)
{
    load_ctx *c = user;
    if (c->msg[0])
        return 0; /* only the first error is reported */
    if (section[0])
        S_FAIL(c, "sections are not used ([%.64s])", section);
    const key *k = s_find(name);
    if (!k)
        S_FAIL(c, "unknown key '%.64s'", name);
    size_t i = (size_t)(k - s_keys);
    /* Also what an indented line continuing a value looks like to inih. */
    if (c->seen[i])
        S_FAIL(c, "'%s' is set twice (an indented line continues the one above)", name);
    c->seen[i] = true;
    const char *keep = value;
    if (k->k == K_STR || k->k == K_ENDPOINT) {
        char *dup = s_n_owned < sizeof s_owned / sizeof s_owned[0] ? strdup(value) : NULL;
        if (!dup)
            S_FAIL(c, "out of memory");
        s_owned[s_n_owned++] = dup;
        keep = dup;
    }
    char why[96];
    if (ul_config_set(c->cfg, name, keep, why, sizeof why) < 0)
        S_FAIL(c, "invalid value '%.128s' for %s: %s", value, name, why);
    return 1;
}

int ul_config_load(uvmlease_broker_config *cfg, const char *path, bool must_exist, char *err,
                   size_t errsz)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT && !must_exist)
            return 1;
        snprintf(err, errsz, "%s: cannot read: %s", path, strerror(errno));
        return -1;
    }
    /* Work on a copy: a file with an error changes nothing. */
    load_ctx c = {.cfg = cfg};
    uvmlease_broker_config tmp = *cfg;
    c.cfg = &tmp;
    int line = ini_parse_file(f, s_handler, &c);
    fclose(f);
    if (line == -2) {
        snprintf(err, errsz, "%s: out of memory", path);
        return -1;
    }
    if (line != 0) {
        snprintf(err, errsz, "%s:%d: %s", path, line,
                 c.msg[0] ? c.msg : "expected 'key = value', a comment or an empty line");
        return -1;
    }
    *cfg = tmp;
    return 0;
}

/* ---- checks and printing ----------------------------------------------- */

static int s_group_exists(const char *g)
{
    uint64_t v;
    if (s_parse_u64(g, UINT32_MAX - 1, &v) == 0)
        return 1; /* a number is taken as it is */
    errno = 0;
    return getgrnam(g) != NULL;
}

int ul_config_check(const uvmlease_broker_config *cfg, char *err, size_t errsz)
{
    if (cfg->socket_group && !s_group_exists(cfg->socket_group)) {
        snprintf(err, errsz, "socket-group: no group '%s' on this host", cfg->socket_group);
        return -1;
    }
    if (cfg->admin_group && !s_group_exists(cfg->admin_group)) {
        snprintf(err, errsz, "admin-group: no group '%s' on this host", cfg->admin_group);
        return -1;
    }
    return 0;
}

static void s_str(FILE *f, const char *name, const char *v, const char *unset)
{
    if (v)
        fprintf(f, "%s = %s\n", name, v);
    else
        fprintf(f, "# %s: %s\n", name, unset);
}

void ul_config_print(FILE *f, const uvmlease_broker_config *cfg)
{
    static const char *const ser[] = {"confidential", "all", "none"};
    s_str(f, "runtime-dir", cfg->runtime_dir,
          "unset (/run/uvmlease as root, else $XDG_RUNTIME_DIR/uvmlease)");
    s_str(f, "endpoint", cfg->endpoint, "unset (ipc://RUNTIME-DIR/broker.sock)");
    s_str(f, "socket-group", cfg->socket_group, "unset (the broker's group)");
    s_str(f, "admin-group", cfg->admin_group, "unset (uid 0 only)");
    fprintf(f, "serialize = %s\n", (unsigned)cfg->serialize < 3 ? ser[cfg->serialize] : "?");
    fprintf(f, "max-active = %u\n", cfg->max_active);
    fprintf(f, "quarantine-ms = %llu\n", (unsigned long long)cfg->quarantine_ms);
    fprintf(f, "hold-warn-ms = %llu\n", (unsigned long long)cfg->hold_warn_ms);
    fprintf(f, "kill-grace-ms = %llu\n", (unsigned long long)cfg->kill_grace_ms);
    fprintf(f, "max-leases = %u\n", cfg->max_leases ? cfg->max_leases : 16384u);
    fprintf(f, "force-journal = %s\n", cfg->force_journal ? "true" : "false");
    fprintf(f, "log-level = %s\n", ul_log_level_name(cfg->log_level));
}
