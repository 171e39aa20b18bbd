/*
 * shim_example.c — what a container shim does with libuvmlease.
 *
 *   uvmlease_shim_example UVM_ID CONTAINER_ID [TIMEOUT_MS]
 *
 * A shim creating a container in a confidential utility VM holds the UVM's
 * bring-up lease across the whole host-side create, because overlapping
 * two creates in one confidential guest resets it. In hcsshim the steps
 * below are the ones of a container create (the create path of
 * internal/hcsoci and the resources it sets up); the comments name the
 * step each phase stands for. The lease is the out-of-process replacement
 * for an in-process per-UVM mutex around that sequence.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "uvmlease.h"

/* Stand-in for the real work of a step. */
static int do_step(const char *what)
{
    printf("  %s\n", what);
    return 0;
}

/* Report a phase; a failure to report is not a reason to stop the create. */
static void phase(uvmlease_lease *l, const char *name)
{
    int rc = uvmlease_phase(l, name);
    if (rc != UVMLEASE_OK)
        fprintf(stderr, "phase %s: %s\n", name, uvmlease_strerror(rc));
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s UVM_ID CONTAINER_ID [TIMEOUT_MS]\n", argv[0]);
        return 2;
    }
    const char *uvm = argv[1];
    const char *container = argv[2];
    long long timeout = argc > 3 ? strtoll(argv[3], NULL, 10) : 30000;

    /* Once per shim process, shared by all its container-creating threads:
     * endpoint from $UVMLEASE_ENDPOINT or the system socket. */
    uvmlease *c;
    int rc = uvmlease_connect(NULL, &c);
    if (rc != UVMLEASE_OK) {
        fprintf(stderr, "connect: %s\n", uvmlease_strerror(rc));
        return 1;
    }

    /* Before the first host-side step of the create. In a shim, pass a
     * cancel token that the request's context cancels, so an abandoned
     * create stops waiting at once. */
    uvmlease_holder who;
    uvmlease_lease *lease;
    rc = uvmlease_acquire(c, uvm, UVMLEASE_CONFIDENTIAL, container, timeout, NULL, &who, &lease);
    if (rc != UVMLEASE_OK) {
        if (who.pid > 0)
            fprintf(stderr, "acquire: %s: held by pid %d (%s) for %s, phase %s\n",
                    uvmlease_strerror(rc), (int)who.pid, who.comm, who.label, who.phase);
        else
            fprintf(stderr, "acquire: %s\n", uvmlease_strerror(rc));
        uvmlease_close(c);
        return 1;
    }
    printf("lease %llu fence %llu on %s\n", (unsigned long long)uvmlease_lease_id(lease),
           (unsigned long long)uvmlease_lease_fence(lease), uvm);

    /* Block CIM layers are mounted for the UVM: the read-only layers are
     * attached to the VM as block CIMs before the container's rootfs can
     * be put together. */
    phase(lease, "cim-mount");
    do_step("mount block CIM layers");

    /* The container's scratch VHD is hot-added to the UVM as a SCSI disk
     * (a modify-settings request to the VM worker). */
    phase(lease, "scratch-attach");
    do_step("hot-add the scratch disk over SCSI");

    /* The layers are combined into the container's root filesystem inside
     * the guest (for Windows guests: the layer combine and hive merge). */
    phase(lease, "combine-layers");
    do_step("combine layers");

    /* The container is created in the guest through the guest bridge. */
    phase(lease, "guest-create");
    do_step("create the container in the guest");

    /* The guest create returned: the next create on this UVM may start.
     * Starting the container's process does not need the lease. */
    rc = uvmlease_release(lease);
    if (rc != UVMLEASE_OK)
        fprintf(stderr, "release: %s\n", uvmlease_strerror(rc));
    uvmlease_close(c);
    return rc == UVMLEASE_OK ? 0 : 1;
}
