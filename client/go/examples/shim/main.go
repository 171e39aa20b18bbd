// Command shim shows where the bring-up lease goes in a Go shim's
// container create: taken before the block-CIM layers are mounted and the
// scratch disk is hot-added, a phase reported around each host-side step,
// released once the guest has created the container, and the fence token
// handed to the caller. The host steps here are stand-ins that only sleep.
//
//	go run ./examples/shim -uvm <64 hex digits>@vm -container ctr-1
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/uvmlease/uvmlease/client/go/uvmlease"
)

// uvm stands for the shim's utility VM.
type uvm struct {
	id           string
	confidential bool // it runs with a confidential (SNP) policy
}

// step stands for a host-side operation on the UVM.
func step(ctx context.Context, what string) error {
	select {
	case <-time.After(50 * time.Millisecond):
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
}

// createContainer is the shim's create path. The lease serialises the
// host-side bring-up of confidential UVMs only: standard UVMs take a
// shared lease, which the broker records for operators but never makes
// wait. It returns the fence token of the lease under which the container
// was brought up.
func createContainer(ctx context.Context, c *uvmlease.Client, vm uvm, containerID string) (fence uint64, err error) {
	class := uvmlease.Standard
	if vm.confidential {
		class = uvmlease.Confidential
	}
	// How long a create may wait for another one on the same UVM.
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	lease, err := c.Acquire(wctx, vm.id, class, containerID)
	if err != nil {
		var he *uvmlease.HolderError
		if errors.As(err, &he) {
			return 0, fmt.Errorf("UVM %s busy with container %q (pid %d, phase %q for %v): %w",
				vm.id, he.Holder.Label, he.Holder.PID, he.Holder.Phase, he.Holder.InPhase, err)
		}
		return 0, err
	}
	// Released after the guest create returned, on every path. The
	// broker also releases it if this process dies.
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), uvmlease.CallTimeout)
		defer cancel()
		if rerr := lease.Release(rctx); rerr != nil && !errors.Is(rerr, uvmlease.ErrRevoked) {
			log.Printf("release of lease %d: %v", lease.ID(), rerr)
		}
	}()

	for _, s := range []string{"cim-mount", "scratch-attach", "combine-layers", "guest-create"} {
		// A failed phase report never stops the create: it is for operators.
		if err := lease.Phase(ctx, s); err != nil && errors.Is(err, uvmlease.ErrRevoked) {
			return 0, fmt.Errorf("lease revoked by an administrator before %s: %w", s, err)
		}
		if err := step(ctx, s); err != nil {
			return 0, err
		}
	}
	return lease.Fence(), nil
}

func main() {
	id := flag.String("uvm", "", "UVM ID")
	ctr := flag.String("container", "ctr-1", "container ID (the lease's label)")
	standard := flag.Bool("standard", false, "the UVM has no confidential policy")
	endpoint := flag.String("endpoint", "", "broker endpoint (default: as libuvmlease resolves it)")
	flag.Parse()
	if *id == "" {
		flag.Usage()
		os.Exit(2)
	}
	ctx := context.Background()
	dctx, cancel := context.WithTimeout(ctx, uvmlease.ConnectTimeout)
	c, err := uvmlease.Dial(dctx, *endpoint)
	cancel()
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fence, err := createContainer(ctx, c, uvm{id: *id, confidential: !*standard}, *ctr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("container %s created under fence %d\n", *ctr, fence)
}
