/*
 * ctl_request.c — how uvmleasectl talks to the broker, and the request and
 * print steps of the commands the driver runs (see ctl.h): what each sends,
 * and what of each answer it hands the printer.
 *
 * Requests are raw protocol requests through the library's connection
 * (ul_client.h): the commands need operations the public API does not
 * offer (list, show, stats, drain, ...).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ctl.h"
#include "ul_client.h"

#define ESC_UVM (UL_MAX_UVM * 4 + 1)

/* ---------------------------------------------------------- the broker */

int ctl_connect_why(const ctl_opts *g, uvmlease **c, char *why, size_t whysz)
{
    int rc = uvmlease_connect(g->endpoint, c);
    if (rc == 0)
        return 0;
    int e = errno;
    char ep[300], esc[1300];
    if (ul_client_resolve_endpoint(g->endpoint, ep, sizeof ep) != 0)
        snprintf(ep, sizeof ep, "%s", g->endpoint ? g->endpoint : "?");
    snprintf(why, whysz, "cannot reach the broker at %s: %s", ctl_esc(ep, esc, sizeof esc),
             rc == UVMLEASE_ESYSTEM ? strerror(e) : uvmlease_strerror(rc));
    return -1;
}

int ctl_connect(const ctl_opts *g, const char *cmd, uvmlease **c)
{
    char why[1400];
    if (ctl_connect_why(g, c, why, sizeof why) == 0)
        return 0;
    ctl_diag("%s: %s", cmd, why);
    return -1;
}

/* The broker's refusal: its own explanation when it gave one (with the
 * status name, for scripts that grep), else the status's message. */
static void s_refused(const char *what, const ul_reply *rep)
{
    char detail[UL_MAX_DETAIL * 4 + 1], name[48];
    const char *n = ul_status_name((int)rep->err);
    if (strcmp(n, "unknown") == 0)
        snprintf(name, sizeof name, "error %" PRIu32, rep->err);
    else
        snprintf(name, sizeof name, "%s", n);
    if (rep->detail[0])
        ctl_diag("%s: refused (%s): %s", what, name, ctl_esc(rep->detail, detail, sizeof detail));
    else if (strcmp(n, "unknown") == 0)
        ctl_diag("%s: refused (%s)", what, name);
    else
        ctl_diag("%s: %s", what, uvmlease_strerror((int)rep->err));
}

ul_reply *ctl_call(uvmlease *c, const char *what, ul_request *q, int64_t wait_ms)
{
    ul_reply *rep = NULL;
    int rc = ul_client_enter(c);
    if (rc == 0) {
        rc = ul_client_call(c, q, wait_ms, NULL, &rep);
        ul_client_leave(c);
    }
    if (rc) {
        ctl_diag("%s: %s", what, uvmlease_strerror(rc));
        return NULL;
    }
    if (rep->err) {
        s_refused(what, rep);
        ul_client_reply_free(rep);
        return NULL;
    }
    return rep;
}

void ctl_what(const ctl_cmd *cmd, const ctl_args *a, char *out, size_t outsz)
{
    char esc[ESC_UVM];
    if (a->uvm)
        snprintf(out, outsz, "%s %s", cmd->name, ctl_esc(a->uvm, esc, sizeof esc));
    else
        snprintf(out, outsz, "%s", cmd->name);
}

int ctl_write_failed(const char *cmd)
{
    ctl_diag("%s: cannot write the output: %s", cmd, strerror(errno));
    return CTL_EXIT_FAIL;
}

/* ------------------------------------------------------------ requests */

/* One request, of cmd->op, with what the arguments say. */
int ctl_request_one(const ctl_cmd *cmd, const ctl_args *a, const ul_reply *prev, ul_request *q)
{
    if (prev)
        return 0;
    q->op = cmd->op;
    if (a->uvm)
        snprintf(q->uvm, sizeof q->uvm, "%s", a->uvm);
    if (a->reason)
        snprintf(q->reason, sizeof q->reason, "%s", a->reason);
    q->mode = a->mode;
    q->pid = a->pid;
    return 1;
}

/* The broker answers a list in pages sorted by UVM ID; "after" is the
 * cursor. */
int ctl_request_list(const ctl_cmd *cmd, const ctl_args *a, const ul_reply *prev, ul_request *q)
{
    (void)a;
    q->op = cmd->op;
    if (!prev)
        return 1;
    if (!prev->more)
        return 0;
    /* A cursor that does not advance would loop for ever. */
    const char *last = prev->n_uvms ? prev->uvms[prev->n_uvms - 1].uvm : NULL;
    if (!last || strcmp(last, q->after) <= 0) {
        ctl_diag("%s: the broker's pages do not advance; stopping", cmd->name);
        return -1;
    }
    snprintf(q->after, sizeof q->after, "%s", last);
    return 1;
}

/* -------------------------------------------------------------- printers */

static int s_journal(const char *word)
{
    return strcmp(word, "ok") == 0 ? 1 : strcmp(word, "failing") == 0 ? 0 : -1;
}

int ctl_print_ping(const ctl_cmd *cmd, ctl_out *o, const ctl_args *a, const ctl_answer *ans)
{
    (void)a;
    const ul_reply *rep = ans->rep;
    ctl_item it = {.kind = CTL_ITEM_BROKER,
                   .broker = {.pid = rep->broker_pid,
                              .version = rep->server,
                              .instance = rep->instance,
                              .rtt_us = ans->rtt_us,
                              .journal = s_journal(rep->journal)}};
    return ctl_out_result(o, &it) == 0 ? CTL_EXIT_OK : ctl_write_failed(cmd->name);
}

int ctl_print_list(const ctl_cmd *cmd, ctl_out *o, const ctl_args *a, const ctl_answer *ans)
{
    (void)a;
    const ul_reply *rep = ans->rep;
    if (ans->first) {
        ctl_item head = {.kind = CTL_ITEM_BROKER, .broker = {.journal = s_journal(rep->journal)}};
        if (ctl_out_head(o, &head) != 0)
            return ctl_write_failed(cmd->name);
    }
    for (uint32_t i = 0; i < rep->n_uvms; i++) {
        ctl_item it = {.kind = CTL_ITEM_UVM, .uvm = &rep->uvms[i]};
        if (ctl_out_row(o, &it) != 0)
            return ctl_write_failed(cmd->name);
    }
    return CTL_EXIT_OK;
}

int ctl_print_show(const ctl_cmd *cmd, ctl_out *o, const ctl_args *a, const ctl_answer *ans)
{
    if (ans->rep->n_uvms != 1) {
        char what[ESC_UVM + 16];
        ctl_what(cmd, a, what, sizeof what);
        ctl_diag("%s: the broker's answer holds no UVM", what);
        return CTL_EXIT_FAIL;
    }
    ctl_item it = {.kind = CTL_ITEM_UVM, .uvm = &ans->rep->uvms[0]};
    return ctl_out_result(o, &it) == 0 ? CTL_EXIT_OK : ctl_write_failed(cmd->name);
}

int ctl_print_stats(const ctl_cmd *cmd, ctl_out *o, const ctl_args *a, const ctl_answer *ans)
{
    (void)a;
    ctl_item it = {.kind = CTL_ITEM_STATS, .stats = ans->rep};
    return ctl_out_result(o, &it) == 0 ? CTL_EXIT_OK : ctl_write_failed(cmd->name);
}

/* What an admin command did: what was asked, and the broker's words. */
int ctl_print_action(const ctl_cmd *cmd, ctl_out *o, const ctl_args *a, const ctl_answer *ans)
{
    ctl_item it = {.kind = CTL_ITEM_ACTION,
                   .action = {.op = cmd->op,
                              .uvm = a->uvm,
                              .mode = a->mode,
                              .pid = a->pid,
                              .reason = a->reason,
                              .detail = ans->rep->detail}};
    return ctl_out_result(o, &it) == 0 ? CTL_EXIT_OK : ctl_write_failed(cmd->name);
}
