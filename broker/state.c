/*
 * state.c — the lease journal (see state.h).
 */
#include "state.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ul_text.h"
#include "uvmlease_errors.h"

#define S_LINE_MAX 2048

static int s_hex_decode(const char *hex, char *out, size_t outsz)
{
    if (strcmp(hex, "-") == 0) {
        out[0] = '\0';
        return 0;
    }
    size_t n = strlen(hex);
    if (n % 2 || n / 2 >= outsz)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (char)v;
    }
    out[n / 2] = '\0';
    return ul_text_check(out, n / 2, UL_MAX_LABEL) == 0 ? 0 : -1;
}

static int s_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static ul_state_lease *s_find(ul_state_lease *v, size_t n, uint64_t id)
{
    for (size_t i = n; i-- > 0;)
        if (v[i].lease == id)
            return &v[i];
    return NULL;
}

int ul_state_load(const char *path, ul_state_lease **out, size_t *n, uint64_t *max_lease,
                  uint64_t *max_fence, size_t *bad)
{
    *out = NULL;
    *n = 0;
    *max_lease = *max_fence = 0;
    *bad = 0;
    FILE *f = fopen(path, "re");
    if (!f)
        return errno == ENOENT ? 0 : UVMLEASE_ESYSTEM;
    ul_state_lease *v = NULL;
    size_t nv = 0, cap = 0;
    uint64_t *rel = NULL;
    size_t nrel = 0, rcap = 0;
    char line[S_LINE_MAX];
    int rc = 0;
    while (fgets(line, sizeof line, f)) {
        size_t len = strlen(line);
        if (len == 0 || line[len - 1] != '\n') {
            /* Too long, or cut short by a crash in the middle of a write. */
            (*bad)++;
            int c;
            while (len == sizeof line - 1 && (c = fgetc(f)) != EOF && c != '\n')
                ;
            continue;
        }
        line[len - 1] = '\0';
        if (line[0] == 'G') {
            ul_state_lease l;
            memset(&l, 0, sizeof l);
            char uvm[UL_MAX_UVM + 2], hex[2 * UL_MAX_LABEL + 2];
            unsigned conf;
            if (sscanf(line,
                       "G %" SCNu64 " %" SCNu64 " %" SCNu32 " %" SCNu64 " %" SCNu32 " %" SCNu64
                       " %u %257s %513s",
                       &l.lease, &l.fence, &l.pid, &l.start_time, &l.uid, &l.rid, &conf, uvm,
                       hex) != 9 ||
                conf > 1 || l.lease == 0 || l.fence == 0 || l.pid == 0 ||
                ul_uvm_id_check(uvm, strlen(uvm)) != 0 ||
                s_hex_decode(hex, l.label, sizeof l.label) != 0) {
                (*bad)++;
                continue;
            }
            l.confidential = conf == 1;
            memcpy(l.uvm, uvm, strlen(uvm) + 1); /* checked: at most UL_MAX_UVM */
            if (nv == cap) {
                size_t nc = cap ? cap * 2 : 64;
                ul_state_lease *nvp = realloc(v, nc * sizeof *v);
                if (!nvp) {
                    rc = UVMLEASE_ENOMEM;
                    break;
                }
                v = nvp;
                cap = nc;
            }
            v[nv++] = l;
            if (l.lease > *max_lease)
                *max_lease = l.lease;
            if (l.fence > *max_fence)
                *max_fence = l.fence;
        } else if (line[0] == 'C') {
            uint64_t id, start;
            uint32_t pid;
            ul_state_lease *l;
            if (sscanf(line, "C %" SCNu64 " %" SCNu32 " %" SCNu64, &id, &pid, &start) != 3 ||
                !(l = s_find(v, nv, id))) {
                (*bad)++;
                continue;
            }
            l->child_pid = pid;
            l->child_start = start;
        } else if (line[0] == 'R') {
            uint64_t id;
            if (sscanf(line, "R %" SCNu64, &id) != 1) {
                (*bad)++;
                continue;
            }
            if (nrel == rcap) {
                size_t nc = rcap ? rcap * 2 : 64;
                uint64_t *nr = realloc(rel, nc * sizeof *rel);
                if (!nr) {
                    rc = UVMLEASE_ENOMEM;
                    break;
                }
                rel = nr;
                rcap = nc;
            }
            rel[nrel++] = id;
        } else {
            (*bad)++;
        }
    }
    if (ferror(f) && !rc)
        rc = UVMLEASE_ESYSTEM;
    fclose(f);
    if (rc) {
        free(v);
        free(rel);
        return rc;
    }
    /* Drop the released ones: sort the release ids once, search each. */
    if (nrel)
        qsort(rel, nrel, sizeof *rel, s_cmp_u64);
    size_t k = 0;
    for (size_t i = 0; i < nv; i++)
        if (!nrel || !bsearch(&v[i].lease, rel, nrel, sizeof *rel, s_cmp_u64))
            v[k++] = v[i];
    free(rel);
    *out = v;
    *n = k;
    return 0;
}

static int s_append(ul_state *st, const char *buf, size_t len)
{
    if (st->fd < 0)
        return UVMLEASE_ESYSTEM;
    ssize_t w = write(st->fd, buf, len);
    if (w != (ssize_t)len)
        return UVMLEASE_ESYSTEM;
    st->records++;
    return 0;
}

static size_t s_format_grant(const ul_state_lease *l, char *buf, size_t sz)
{
    char hex[2 * UL_MAX_LABEL + 2] = "-";
    size_t ll = strlen(l->label);
    for (size_t i = 0; i < ll; i++)
        snprintf(hex + 2 * i, 3, "%02x", (unsigned char)l->label[i]);
    int n = snprintf(buf, sz,
                     "G %" PRIu64 " %" PRIu64 " %" PRIu32 " %" PRIu64 " %" PRIu32 " %" PRIu64
                     " %u %s %s\n",
                     l->lease, l->fence, l->pid, l->start_time, l->uid, l->rid,
                     l->confidential ? 1u : 0u, l->uvm, hex);
    size_t len = n < 0 ? 0 : (size_t)n < sz ? (size_t)n : sz - 1;
    if (l->child_pid) {
        n = snprintf(buf + len, sz - len, "C %" PRIu64 " %" PRIu32 " %" PRIu64 "\n", l->lease,
                     l->child_pid, l->child_start);
        len += n < 0 ? 0 : (size_t)n < sz - len ? (size_t)n : 0;
    }
    return len;
}

int ul_state_grant(ul_state *st, const ul_state_lease *l)
{
    char buf[S_LINE_MAX];
    return s_append(st, buf, s_format_grant(l, buf, sizeof buf));
}

int ul_state_child(ul_state *st, uint64_t lease, uint32_t pid, uint64_t start)
{
    char buf[128];
    int n = snprintf(buf, sizeof buf, "C %" PRIu64 " %" PRIu32 " %" PRIu64 "\n", lease, pid, start);
    return s_append(st, buf, (size_t)n);
}

int ul_state_release(ul_state *st, uint64_t lease)
{
    char buf[64];
    int n = snprintf(buf, sizeof buf, "R %" PRIu64 "\n", lease);
    return s_append(st, buf, (size_t)n);
}

int ul_state_rewrite(ul_state *st, const char *path, const ul_state_lease *leases, size_t n)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return UVMLEASE_ESYSTEM;
    ul_state tmpst = {.fd = fd};
    for (size_t i = 0; i < n; i++) {
        if (ul_state_grant(&tmpst, &leases[i])) {
            close(fd);
            unlink(tmp);
            return UVMLEASE_ESYSTEM;
        }
    }
    if (close(fd) < 0 || rename(tmp, path) < 0) {
        unlink(tmp);
        return UVMLEASE_ESYSTEM;
    }
    ul_state_close(st);
    st->fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
    snprintf(st->path, sizeof st->path, "%s", path);
    st->records = n;
    return st->fd < 0 ? UVMLEASE_ESYSTEM : 0;
}

void ul_state_close(ul_state *st)
{
    if (st->fd >= 0)
        close(st->fd);
    st->fd = -1;
}
