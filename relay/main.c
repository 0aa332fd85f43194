/* wattcloud-relay: entry point. Reads the settings, hardens the process
 * (no core dumps: a dump would hold users' SSH credentials), and runs the
 * server until it is told to stop. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include "config.h"
#include "log.h"
#include "manpage.h"
#include "metrics.h"
#include "probe.h"
#include "server.h"
#include "signals.h"
#include "ssh_conn.h"
#include "wipe_alloc.h"
#include "worker.h"

/* glibc malloc tunables, set at start (main() says why). */
#define MALLOC_MMAP_THRESHOLD (1024 * 1024)
#define MALLOC_TRIM_THRESHOLD (4 * 1024 * 1024)

static void usage(FILE *out)
{
    fprintf(out,
            "usage: wattcloud-relay [--env-file PATH] [--check-config] [--version] [--help]\n"
            "       wattcloud-relay probe HOST[:PORT] [options]  (probe --help)\n"
            "\n"
            "WebSocket-to-SFTP relay for the Wattcloud browser app.\n"
            "  --env-file PATH  read KEY=VALUE settings from PATH (the environment wins)\n"
            "  --check-config   validate the settings and exit (0 valid, 2 invalid)\n"
            "  --version        print the version and exit\n"
            "  --man            print the manual page wattcloud-relay(8) (roff) and exit\n"
            "\n");
}

static int no_core_dumps(void)
{
    struct rlimit rl = {0, 0};

    if (setrlimit(RLIMIT_CORE, &rl) < 0)
        return -1;
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

int main(int argc, char **argv)
{
    struct config cfg;
    char err[512];
    int check_only = 0, rc;

    /* The probe command runs in the foreground: Ctrl-C must stop it, so it
     * is dispatched before the daemon blocks its signals. It may hold a
     * private key: no core dumps either. */
    if (argc > 1 && strcmp(argv[1], "probe") == 0) {
        wipe_alloc_install_jansson();
        if (no_core_dumps() < 0)
            fprintf(stderr, "wattcloud-relay probe: cannot disable core dumps\n");
        return probe_main(argc - 1, argv + 1);
    }
    /* Before any thread exists, so that every thread inherits the mask. */
    signals_block();
    /* Before any JSON exists: auth frames are parsed by jansson. */
    wipe_alloc_install_jansson();
    /* Upload frames (up to 16 MiB) are mapped on their own: glibc's
     * adaptive threshold would soon keep them in the heap for good, and a
     * fixed one hands them back to the kernel when freed. A session reuses
     * its upload buffer from chunk to chunk (session.c, spare), so this
     * costs one mapping per upload, not one per chunk. */
    mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD);
    /* Setting the mmap threshold also freezes glibc's trim threshold at its
     * 128 KiB default: each arena would give back its free top (madvise or
     * sbrk) after almost every 256 KiB download frame the service thread
     * frees for a worker, and fault it in again for the next one. The
     * trade-off: each malloc arena (up to 8 per core) may keep up to this
     * much free memory while sessions run; session.c trims all of it when
     * the last session ends. */
    mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD);
    /* One malloc arena for every thread. glibc gives threads arenas of
     * their own (up to 8 per core), and malloc_trim() can only shrink the
     * main one's top: each other arena would keep up to the trim threshold
     * for good once a burst of sessions has passed (64 MiB after 50
     * sessions on 2 cores, bench/RESULTS.md). The relay allocates tens of
     * thousands of blocks a second at full speed, mostly from the threads'
     * own caches (tcache), so the shared lock costs nothing measurable:
     * the 50-session bench ran as fast with one arena as with sixteen. */
    mallopt(M_ARENA_MAX, 1);

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--env-file") == 0 && i + 1 < argc) {
            if (cfg_load_env_file(argv[++i], err, sizeof(err)) < 0) {
                fprintf(stderr, "wattcloud-relay: %s\n", err);
                return 2;
            }
        } else if (strcmp(argv[i], "--check-config") == 0) {
            check_only = 1;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("wattcloud-relay %s (libssh2 %s%s%s)\n", WC_VERSION, ssh_version(),
                   WC_LIBSSH2_PATCHED ? " with our patches"
                                      : " of the system, without our patches",
                   ssh_read_size_settable() ? ", SFTP read size from limits@openssh.com" : "");
            return 0;
        } else if (strcmp(argv[i], "--man") == 0) {
            manpage_print(stdout);
            return 0;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            cfg_print_help();
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (cfg_load(&cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "wattcloud-relay: %s\n", err);
        cfg_free(&cfg);
        return 2;
    }
    if (check_only) {
        printf("configuration ok\n");
        cfg_free(&cfg);
        return 0;
    }
    log_init(cfg.log_level);
    if (no_core_dumps() < 0)
        log_warn("cannot disable core dumps");
    cfg_log(&cfg);
    if (cfg.signing_key_random)
        log_info("RELAY_SIGNING_KEY unset: using a random key for this process "
                 "(cookies do not survive a restart; several instances need a shared key)");
    if (ssh_global_init() < 0) {
        log_error("libssh2_init failed");
        cfg_free(&cfg);
        return 1;
    }
    metrics_set_libssh2_version(ssh_version());
    rc = server_run(&cfg, worker_main);
    ssh_global_exit();
    cfg_free(&cfg);
    return rc;
}
