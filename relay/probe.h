/* `wattcloud-relay probe HOST[:PORT]`: what the relay would do with a
 * target, step by step, with the relay's own settings and code (netguard,
 * ssh_conn, keyformat, sftp_ops), without the daemon. */
#ifndef WC_PROBE_H
#define WC_PROBE_H

/* Exit statuses of the probe command. */
#define PROBE_EXIT_OK 0       /* every step the options asked for works */
#define PROBE_EXIT_FAILED 1   /* a step failed; the report names it */
#define PROBE_EXIT_USAGE 2    /* bad arguments, settings or files */

/* Run the probe; `argv[0]` is "probe". Writes the report to stdout (human
 * text, or JSON with --json) and usage errors to stderr. Returns one of
 * the PROBE_EXIT_ statuses. Call ssh_global_init() is done here. */
int probe_main(int argc, char **argv);

/* The usage text of the probe command (for --help and the man page). */
extern const char probe_usage[];

#endif
