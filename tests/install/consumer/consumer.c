/*
 * consumer.c — a program built against an installed libuvmlease, in C and
 * as C++ (it is valid as both).
 *
 *   consumer [ENDPOINT]
 *
 * Without an endpoint it checks that the library links and answers: its
 * version, its strings, and connecting where no broker is. With one, it
 * also takes a lease, reports a phase and releases it.
 */
#include <stdio.h>
#include <string.h>

#include <uvmlease.h>

int main(int argc, char **argv)
{
    printf("libuvmlease %s\n", uvmlease_version());
    if (strcmp(uvmlease_status_name(UVMLEASE_EBUSY), "busy") != 0)
        return 1;

    uvmlease *c = NULL;
    int rc = uvmlease_connect("ipc:///nonexistent/uvmlease/broker.sock", &c);
    if (rc != UVMLEASE_ENOBROKER || c != NULL) {
        fprintf(stderr, "connect where no broker is: %s\n", uvmlease_strerror(rc));
        return 1;
    }
    if (argc < 2)
        return 0;

    rc = uvmlease_connect(argv[1], &c);
    if (rc != UVMLEASE_OK) {
        fprintf(stderr, "connect: %s\n", uvmlease_strerror(rc));
        return 1;
    }
    uvmlease_lease *l = NULL;
    rc = uvmlease_acquire(c, "c0ffee@vm", UVMLEASE_CONFIDENTIAL, "consumer", 5000, NULL, NULL, &l);
    if (rc == UVMLEASE_OK)
        rc = uvmlease_phase(l, "guest-create");
    if (l) {
        printf("fence %llu\n", (unsigned long long)uvmlease_lease_fence(l));
        int rrc = uvmlease_release(l);
        if (rc == UVMLEASE_OK)
            rc = rrc;
    }
    uvmlease_close(c);
    if (rc != UVMLEASE_OK) {
        fprintf(stderr, "lease: %s\n", uvmlease_strerror(rc));
        return 1;
    }
    return 0;
}
