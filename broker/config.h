/*
 * config.h — uvmleased's settings, from its configuration file and its
 * flags: one key per long flag, one value parser for both.
 *
 * The file (default UL_CONFIG_FILE, /etc/uvmlease/uvmleased.conf) holds
 * "key = value" lines, '#' or ';' comment lines, no sections. It is read
 * with libinih. Flags given on the command line override the file.
 * Daemon only: an embedding program fills uvmlease_broker_config itself.
 */
#ifndef UL_CONFIG_H
#define UL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "uvmlease_broker.h"

#ifndef UL_CONFIG_FILE
#define UL_CONFIG_FILE "/etc/uvmlease/uvmleased.conf"
#endif

/* Set the setting called key (a long flag's name without "--": "max-leases",
 * "force-journal", ...) from its text value. String values are kept as
 * given: they must outlive cfg. 0, or -1 with a reason in why ("unknown
 * key" when key is no setting). */
int ul_config_set(uvmlease_broker_config *cfg, const char *key, const char *value, char *why,
                  size_t whysz);

/* Read the file at path into cfg (string values are copied and kept for the
 * life of the process). 0 when read; 1 when path does not exist and
 * must_exist is false (cfg untouched); -1 with "PATH:LINE: reason" (or
 * "PATH: reason") in err. */
int ul_config_load(uvmlease_broker_config *cfg, const char *path, bool must_exist, char *err,
                   size_t errsz);

/* What the settings name exists on this host (the groups). 0, or -1 with a
 * reason in err. */
int ul_config_check(const uvmlease_broker_config *cfg, char *err, size_t errsz);

/* Every setting as a configuration file ("key = value", unset strings
 * commented out): what --check-config prints. */
void ul_config_print(FILE *f, const uvmlease_broker_config *cfg);

#endif
