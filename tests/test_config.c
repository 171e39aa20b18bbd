/*
 * test_config.c — uvmleased's configuration file: a good file, unknown
 * keys, bad values and syntax named by file and line, flags over the file,
 * --check-config, and a file's settings used by a running daemon.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "ul_sys.h"

TestSuite(config, .timeout = 60);

typedef struct run {
    char dir[256];
    char out[300]; /* stdout */
    char err[300]; /* stderr */
    char conf[300];
} run;

static void s_setup(run *r, const char *tag)
{
    ut_tmpdir(tag, r->dir, sizeof r->dir);
    snprintf(r->out, sizeof r->out, "%s/out", r->dir);
    snprintf(r->err, sizeof r->err, "%s/err", r->dir);
    snprintf(r->conf, sizeof r->conf, "%s/uvmleased.conf", r->dir);
}

static void s_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static char *s_read(const char *path)
{
    static char buf[16384];
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return buf;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

static pid_t s_spawn(run *r, char *const args[])
{
    char bin[512];
    ut_build_path("uvmleased", bin, sizeof bin);
    char *argv[24] = {bin};
    int n = 1;
    for (int i = 0; args[i] && n < 23; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = ut_fork();
    if (pid == 0) {
        int o = open(r->out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int e = open(r->err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(o, 1);
        dup2(e, 2);
        execv(bin, argv);
        _exit(127);
    }
    return pid;
}

/* Run uvmleased to its end; its exit code. */
static int s_run(run *r, char *const args[])
{
    return ut_wait_code(s_spawn(r, args), 10000);
}

/* The error on stderr: exit 2, and it names file:line and what is wrong. */
static void s_expect_error(run *r, const char *text, int line, const char *what)
{
    s_write(r->conf, text);
    int code = s_run(r, (char *[]){"--config", r->conf, "--check-config", NULL});
    cr_assert_eq(code, 2, "exit %d for:\n%s", code, text);
    char want[400];
    snprintf(want, sizeof want, "%s:%d: ", r->conf, line);
    const char *err = s_read(r->err);
    cr_assert(strstr(err, want), "no '%s' in: %s", want, err);
    cr_assert(strstr(err, what), "no '%s' in: %s", what, err);
    cr_assert(strstr(s_read(r->out), "max-leases") == NULL, "settings printed despite an error");
}

Test(config, good_file)
{
    run r;
    s_setup(&r, "cfg-good");
    char text[2048];
    snprintf(text, sizeof text,
             "# every key\n"
             "runtime-dir = %s/rt\n"
             "endpoint = ipc://%s/elsewhere.sock\n"
             "socket-group = 0\n"
             "admin-group = root\n"
             "\n"
             "; another comment style\n"
             "serialize = all\n"
             "max-active = 3\n"
             "quarantine-ms = 1500 ; inline comment\n"
             "hold-warn-ms = 60000\n"
             "kill-grace-ms = 250\n"
             "max-leases = 77\n"
             "force-journal = yes\n"
             "log-level = debug\n",
             r.dir, r.dir);
    s_write(r.conf, text);
    cr_assert_eq(s_run(&r, (char *[]){"--config", r.conf, "--check-config", NULL}), 0, "%s",
                 s_read(r.err));
    const char *out = s_read(r.out);
    char want[400];
    snprintf(want, sizeof want, "runtime-dir = %s/rt\n", r.dir);
    cr_assert(strstr(out, want), "%s", out);
    snprintf(want, sizeof want, "endpoint = ipc://%s/elsewhere.sock\n", r.dir);
    cr_assert(strstr(out, want), "%s", out);
    static const char *const lines[] = {
        "socket-group = 0\n",    "admin-group = root\n",   "serialize = all\n",
        "max-active = 3\n",      "quarantine-ms = 1500\n", "hold-warn-ms = 60000\n",
        "kill-grace-ms = 250\n", "max-leases = 77\n",      "force-journal = true\n",
        "log-level = debug\n",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        cr_assert(strstr(out, lines[i]), "no '%s' in:\n%s", lines[i], out);
    /* --check-config starts nothing: no runtime directory, no socket. */
    char path[400];
    snprintf(path, sizeof path, "%s/rt", r.dir);
    cr_assert_neq(access(path, F_OK), 0, "--check-config created %s", path);
    snprintf(path, sizeof path, "%s/elsewhere.sock", r.dir);
    cr_assert_neq(access(path, F_OK), 0, "--check-config created %s", path);
    ut_rmrf(r.dir);
}

Test(config, unknown_key_names_file_and_line)
{
    run r;
    s_setup(&r, "cfg-unknown");
    s_expect_error(&r, "# ok\nmax-leases = 10\nmax-leasez = 10\n", 3, "unknown key 'max-leasez'");
    /* Sections are not part of the format. */
    s_expect_error(&r, "[uvmleased]\nmax-leases = 10\n", 2, "sections are not used");
    /* Not key = value at all. */
    s_expect_error(&r, "max-leases = 10\n\nforce-journal\n", 3, "expected 'key = value'");
    /* Twice, and the indented continuation inih reads as a second value. */
    s_expect_error(&r, "max-leases = 10\nserialize = all\nmax-leases = 11\n", 3, "set twice");
    s_expect_error(&r, "max-leases = 10\n   11\n", 2, "set twice");

    /* Refused at start too, not only by --check-config: nothing is served. */
    s_write(r.conf, "max-leasez = 10\n");
    char rt[300];
    snprintf(rt, sizeof rt, "%s/rt", r.dir);
    cr_assert_eq(s_run(&r, (char *[]){"--config", r.conf, "--runtime-dir", rt, NULL}), 2);
    cr_assert(strstr(s_read(r.err), ":1: unknown key"), "%s", s_read(r.err));
    cr_assert_neq(access(rt, F_OK), 0, "the runtime directory was created");
    ut_rmrf(r.dir);
}

Test(config, bad_values_name_file_and_line)
{
    run r;
    s_setup(&r, "cfg-bad");
    static const struct {
        const char *text;
        const char *what;
    } cases[] = {
        {"max-active = -1\n", "invalid value '-1' for max-active"},
        {"max-active = 12x\n", "invalid value '12x' for max-active"},
        {"serialize = sometimes\n", "invalid value 'sometimes' for serialize"},
        {"endpoint = tcp://127.0.0.1:1\n", "only ipc://"},
        {"force-journal = maybe\n", "invalid value 'maybe' for force-journal"},
        {"log-level = loud\n", "invalid value 'loud' for log-level"},
        {"max-leases = 0\n", "invalid value '0' for max-leases"},
        {"quarantine-ms = 1.5\n", "invalid value '1.5' for quarantine-ms"},
        {"kill-grace-ms =\n", "invalid value '' for kill-grace-ms"},
        {"runtime-dir =\n", "for runtime-dir: empty"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[256];
        snprintf(text, sizeof text, "# line 1\nhold-warn-ms = 1000\n%s", cases[i].text);
        s_expect_error(&r, text, 3, cases[i].what);
    }
    ut_rmrf(r.dir);
}

Test(config, flags_override_the_file)
{
    run r;
    s_setup(&r, "cfg-override");
    s_write(r.conf, "max-leases = 77\nserialize = all\nlog-level = warn\n");
    /* A flag wins wherever it stands relative to --config. */
    cr_assert_eq(s_run(&r, (char *[]){"--max-leases", "88", "--config", r.conf, "--check-config",
                                      "--log-level", "error", NULL}),
                 0, "%s", s_read(r.err));
    const char *out = s_read(r.out);
    cr_assert(strstr(out, "max-leases = 88\n"), "%s", out);
    cr_assert(strstr(out, "log-level = error\n"), "%s", out);
    cr_assert(strstr(out, "serialize = all\n"), "the file's other settings are lost:\n%s", out);
    /* A bad flag over a good file is still the flag's error. */
    cr_assert_eq(s_run(&r, (char *[]){"--config", r.conf, "--max-leases", "0", NULL}), 2);
    cr_assert(strstr(s_read(r.err), "for --max-leases"), "%s", s_read(r.err));
    ut_rmrf(r.dir);
}

Test(config, check_config)
{
    run r;
    s_setup(&r, "cfg-check");
    /* An explicit file must exist. */
    char missing[300];
    snprintf(missing, sizeof missing, "%s/absent.conf", r.dir);
    cr_assert_eq(s_run(&r, (char *[]){"--config", missing, "--check-config", NULL}), 2);
    cr_assert(strstr(s_read(r.err), "absent.conf: cannot read"), "%s", s_read(r.err));
    /* Groups that do not exist on the host. */
    s_write(r.conf, "socket-group = ul-no-such-group-x\n");
    cr_assert_eq(s_run(&r, (char *[]){"--config", r.conf, "--check-config", NULL}), 2);
    cr_assert(strstr(s_read(r.err), "socket-group: no group 'ul-no-such-group-x'"), "%s",
              s_read(r.err));
    s_write(r.conf, "admin-group = ul-no-such-group-y\n");
    cr_assert_eq(s_run(&r, (char *[]){"--config", r.conf, "--check-config", NULL}), 2);
    cr_assert(strstr(s_read(r.err), "admin-group: no group"), "%s", s_read(r.err));
    /* An empty file: the defaults, and it says where they came from. */
    s_write(r.conf, "");
    cr_assert_eq(s_run(&r, (char *[]){"--config", r.conf, "--check-config", NULL}), 0);
    const char *out = s_read(r.out);
    cr_assert(strstr(out, r.conf), "%s", out);
    cr_assert(strstr(out, "max-leases = 16384\n"), "%s", out);
    cr_assert(strstr(out, "serialize = confidential\n"), "%s", out);
    cr_assert(strstr(out, "# runtime-dir: unset"), "%s", out);
    ut_rmrf(r.dir);
}

Test(config, a_running_daemon_uses_the_file)
{
    run r;
    s_setup(&r, "cfg-run");
    char text[1024], ep[400], ep2[400], rt2[300];
    snprintf(text, sizeof text, "runtime-dir = %s/rt\nlog-level = debug\n", r.dir);
    s_write(r.conf, text);
    snprintf(ep, sizeof ep, "ipc://%s/rt/broker.sock", r.dir);
    pid_t pid = s_spawn(&r, (char *[]){"--config", r.conf, NULL});
    cr_assert(ut_ping_until(ep, 10000), "no broker in the file's runtime directory: %s",
              s_read(r.err));
    /* log-level = debug from the file: the ping is logged. */
    kill(pid, SIGTERM);
    cr_assert_eq(ut_wait_code(pid, 10000), 0);
    cr_assert(strstr(s_read(r.err), "level=debug"), "debug lines missing: %s", s_read(r.err));

    /* The flag over the file's runtime directory. */
    snprintf(rt2, sizeof rt2, "%s/rt2", r.dir);
    snprintf(ep2, sizeof ep2, "ipc://%s/broker.sock", rt2);
    pid = s_spawn(&r, (char *[]){"--config", r.conf, "--runtime-dir", rt2, NULL});
    cr_assert(ut_ping_until(ep2, 10000), "the flag's runtime directory is not used: %s",
              s_read(r.err));
    struct stat st;
    cr_assert_neq(stat(ep + 6, &st), 0, "a socket in the file's directory too");
    kill(pid, SIGTERM);
    cr_assert_eq(ut_wait_code(pid, 10000), 0);
    ut_rmrf(r.dir);
}
