// ctest-timeout: 60
/*
 * test_state.c — the lease journal: what is written is read back, releases
 * cancel grants, and damaged lines (a crash mid-write, garbage) are skipped
 * and counted, never trusted.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "state.h"
#include "testutil.h"

TestSuite(state, .timeout = 30);

static void s_lease(ul_state_lease *l, uint64_t id, const char *uvm, const char *label)
{
    memset(l, 0, sizeof *l);
    l->lease = id;
    l->fence = id + 1000;
    l->rid = id + 7;
    l->pid = 4000 + (uint32_t)id;
    l->uid = 1000;
    l->start_time = 123456 + id;
    l->confidential = id % 2 == 1;
    snprintf(l->uvm, sizeof l->uvm, "%s", uvm);
    snprintf(l->label, sizeof l->label, "%s", label);
}

Test(state, round_trip_with_releases_and_children)
{
    char dir[256], path[300];
    ut_tmpdir("state", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/broker.sock.state", dir);
    ul_state st = {.fd = -1};
    cr_assert_eq(ul_state_rewrite(&st, path, NULL, 0), 0);
    ul_state_lease a, b, c;
    s_lease(&a, 1, "aaaa@vm", "ctr one \"quoted\" ünïcode");
    s_lease(&b, 2, "bbbb@vm", "");
    s_lease(&c, 3, "cccc@vm", "three");
    cr_assert_eq(ul_state_grant(&st, &a), 0);
    cr_assert_eq(ul_state_grant(&st, &b), 0);
    cr_assert_eq(ul_state_child(&st, 1, 777, 888), 0);
    cr_assert_eq(ul_state_grant(&st, &c), 0);
    cr_assert_eq(ul_state_release(&st, 2), 0);
    ul_state_close(&st);
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    cr_assert_eq(sb.st_mode & 0777, 0600, "the journal is the broker's alone");

    ul_state_lease *v = NULL;
    size_t n = 0, bad = 0;
    uint64_t ml = 0, mf = 0;
    cr_assert_eq(ul_state_load(path, &v, &n, &ml, &mf, &bad), 0);
    cr_assert_eq(n, 2);
    cr_assert_eq(bad, 0);
    cr_assert_eq(ml, 3);
    cr_assert_eq(mf, 1003, "the largest fence includes released leases");
    cr_assert_eq(v[0].lease, 1);
    cr_assert_str_eq(v[0].label, a.label);
    cr_assert_str_eq(v[0].uvm, "aaaa@vm");
    cr_assert(v[0].confidential);
    cr_assert_eq(v[0].pid, a.pid);
    cr_assert_eq(v[0].start_time, a.start_time);
    cr_assert_eq(v[0].rid, a.rid);
    cr_assert_eq(v[0].child_pid, 777);
    cr_assert_eq(v[0].child_start, 888);
    cr_assert_eq(v[1].lease, 3);
    cr_assert_eq(v[1].child_pid, 0);

    /* Rewriting keeps exactly what is given (compaction). */
    cr_assert_eq(ul_state_rewrite(&st, path, v, n), 0);
    ul_state_close(&st);
    free(v);
    cr_assert_eq(ul_state_load(path, &v, &n, &ml, &mf, &bad), 0);
    cr_assert_eq(n, 2);
    cr_assert_eq(v[0].child_pid, 777, "a child anchor survives compaction");
    free(v);
    ut_rmrf(dir);
}

Test(state, damaged_lines_are_skipped)
{
    char dir[256], path[300];
    ut_tmpdir("state", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/j", dir);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs("G 5 6 100 200 0 9 1 good@vm 6c6162656c\n", f); /* label "label" */
    fputs("garbage line\n", f);
    fputs("G 7 8 100 200 0 9 1 bad uvm-with-space\n", f);
    fputs("G 9 10 100 200 0 9 1 ctl@vm 0a0a\n", f); /* label of control bytes */
    fputs("G 11 12 100 200 0 9 7 conf@vm -\n", f);  /* class neither 0 nor 1 */
    fputs("G 0 12 100 200 0 9 1 zero@vm -\n", f);   /* lease id 0 */
    fputs("C 999 1 2\n", f);                        /* child of an unknown lease */
    fputs("R x\n", f);
    for (int i = 0; i < 3000; i++)
        fputc('x', f); /* an over-long line */
    fputc('\n', f);
    fputs("G 13 14 100 200 0 9 0 cut@vm", f); /* cut by a crash: no newline */
    fclose(f);
    ul_state_lease *v = NULL;
    size_t n = 0, bad = 0;
    uint64_t ml = 0, mf = 0;
    cr_assert_eq(ul_state_load(path, &v, &n, &ml, &mf, &bad), 0);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(v[0].uvm, "good@vm");
    cr_assert_str_eq(v[0].label, "label");
    cr_assert_eq(bad, 9, "bad lines counted: %zu", bad);
    cr_assert_eq(ml, 5, "ids of rejected lines must not count");
    free(v);
    ut_rmrf(dir);
}

Test(state, missing_journal_is_empty)
{
    ul_state_lease *v = (ul_state_lease *)1;
    size_t n = 5, bad = 5;
    uint64_t ml = 5, mf = 5;
    cr_assert_eq(ul_state_load("/nonexistent/ul-state", &v, &n, &ml, &mf, &bad), 0);
    cr_assert_null(v);
    cr_assert_eq(n + bad + ml + mf, 0);
}
