/* Signals arrive on a signalfd that lws watches like any socket: no
 * handler runs at an arbitrary point, and main() blocks them for every
 * thread before the first is created, so no worker is ever interrupted. */
#include "signals.h"

#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "log.h"

static void fill(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
}

int signals_open(void)
{
    sigset_t set;

    fill(&set);
    return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}

void signals_block(void)
{
    sigset_t set;
    struct sigaction sa;

    fill(&set);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0)
        log_warn("cannot block SIGTERM/SIGINT/SIGHUP");
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGPIPE, &sa, NULL) < 0)
        log_warn("cannot ignore SIGPIPE");
}

void signals_read(int fd, int *got_term, int *got_hup)
{
    struct signalfd_siginfo si;

    while (read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGHUP)
            *got_hup = 1;
        else
            *got_term = 1;
    }
}
