/* The per-session SSH worker thread: everything that may block on the
 * network (DNS, connect, SSH, SFTP) happens here, never on the lws service
 * thread. */
#ifndef WC_WORKER_H
#define WC_WORKER_H

/* Thread entry; `arg` is the struct session. Runs PROTOCOL §2 then serves
 * §3 requests until the browser leaves or the server fails. */
void *worker_main(void *arg);

#endif
