/* The libwebsockets service loop of the daemon: what main() starts. The
 * state the callbacks share is in server_ctx.h. */
#ifndef WC_SERVER_H
#define WC_SERVER_H

struct config;

/* Run until SIGTERM/SIGINT and the drain are done. Returns the exit status
 * (2: the descriptor limit or a file named by a setting is unusable). When
 * session workers do not stop, exits the process without freeing what
 * they use. Each session runs `worker` on its own thread (worker.c's
 * worker_main: the web side does not name the SSH side). Call
 * signals_block() first. */
int server_run(const struct config *cfg, void *(*worker)(void *));

#endif
