/*
 * ctl.h — what the parts of uvmleasectl share: the global options, the
 * exit codes, and the commands implemented outside uvmleasectl.c.
 *
 * A command gets argv[0] = its own name, with the global options
 * (--endpoint, --json) already taken out wherever they stood, and returns
 * the process exit code.
 */
#ifndef UL_CTL_H
#define UL_CTL_H

#include <stdbool.h>

#define CTL_EXIT_OK    0
#define CTL_EXIT_FAIL  1
#define CTL_EXIT_USAGE 2

typedef struct ctl_opts {
    const char *endpoint; /* NULL: the library's default */
    bool json;
} ctl_opts;

/* ctl_admin.c */
int ctl_cmd_list(const ctl_opts *g, int argc, char **argv);
int ctl_cmd_show(const ctl_opts *g, int argc, char **argv);
int ctl_cmd_watch(const ctl_opts *g, int argc, char **argv);
int ctl_cmd_stats(const ctl_opts *g, int argc, char **argv);
int ctl_cmd_drain(const ctl_opts *g, int argc, char **argv);
int ctl_cmd_undrain(const ctl_opts *g, int argc, char **argv);
int ctl_cmd_release(const ctl_opts *g, int argc, char **argv);

#endif
