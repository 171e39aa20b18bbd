/*
 * ctl_signal.c — one thread takes the signals uvmleasectl handles (see
 * ctl_signal.h).
 */
#include "ctl_signal.h"

#include <errno.h>
#include <pthread.h>

static struct {
    pthread_mutex_t mu; /* held while fn runs, so that stop can wait for it */
    sigset_t set;
    ctl_signal_fn fn;
    void *ctx;
} s_sig = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void *s_main(void *arg)
{
    (void)arg;
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&s_sig.set, &si);
        if (sig < 0)
            continue;
        pthread_mutex_lock(&s_sig.mu);
        if (s_sig.fn)
            s_sig.fn(s_sig.ctx, sig, &si);
        pthread_mutex_unlock(&s_sig.mu);
    }
    return NULL;
}

int ctl_signals_start(const int *sigs, size_t n, ctl_signal_fn fn, void *ctx, sigset_t *old)
{
    sigemptyset(&s_sig.set);
    for (size_t i = 0; i < n; i++)
        sigaddset(&s_sig.set, sigs[i]);
    pthread_sigmask(SIG_BLOCK, &s_sig.set, old);
    s_sig.fn = fn;
    s_sig.ctx = ctx;
    /* Detached: it waits in sigwaitinfo until the process exits. */
    pthread_t t;
    int rc = pthread_create(&t, NULL, s_main, NULL);
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    pthread_detach(t);
    return 0;
}

void ctl_signals_stop(void)
{
    pthread_mutex_lock(&s_sig.mu);
    s_sig.fn = NULL;
    s_sig.ctx = NULL;
    pthread_mutex_unlock(&s_sig.mu);
}
