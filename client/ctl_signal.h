/*
 * ctl_signal.h — the one way uvmleasectl takes signals.
 *
 * The signals a command handles are blocked in every thread before any
 * thread exists (the library's I/O thread inherits the mask), and taken by
 * one thread of their own with sigwaitinfo(), which calls the command's
 * handler. Nothing runs in signal context, so a handler may lock, cancel
 * and write like any other code. run forwards signals to its CMD or
 * cancels its wait; watch stops.
 */
#ifndef UL_CTL_SIGNAL_H
#define UL_CTL_SIGNAL_H

#include <signal.h>
#include <stddef.h>

/* Called on the signal thread, one signal at a time. */
typedef void (*ctl_signal_fn)(void *ctx, int sig, const siginfo_t *si);

/*
 * Block the n signals in sigs and start taking them: fn(ctx, ...) for
 * each. *old gets the mask from before (what a child should get back).
 * Once per process, before any other thread is started. 0, or -1 with
 * errno (the signals then stay blocked).
 */
int ctl_signals_start(const int *sigs, size_t n, ctl_signal_fn fn, void *ctx, sigset_t *old);

/* On return fn is not running and will not be called again, so ctx may go;
 * the signals stay blocked, and are ignored from now on. */
void ctl_signals_stop(void);

#endif
