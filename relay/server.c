/* The libwebsockets context: listener, TLS, protocols, and the service loop
 * with its signal handling and graceful drain. Everything here runs on the
 * one service thread. */
#include "server.h"
#include "clock.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "access.h"
#include "config.h"
#include "conn_limit.h"
#include "gate.h"
#include "http_wire.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "proto.h"
#include "server_ctx.h"
#include "signals.h"
#include "static_files.h"
#include "store.h"
#include "wipe_alloc.h"
#include "ws.h"

/* WebSocket receive buffer per connection, also the most one RECEIVE
 * callback delivers and (pt_serv_buf_size) the most one recv() reads. At
 * 256 KiB an upload costs the relay about 8% less CPU than at 64 KiB, in
 * a quarter of the receive calls and callbacks (bench/RESULTS.md). An
 * idle session does not pay for it: the buffer's pages stay untouched
 * until frames arrive (204 KiB per idle session either way). */
#define WS_RX_BUFFER (256u * 1024)
/* Extra seconds after the drain deadline for workers to notice the cut. */
#define DRAIN_FORCE_SECS 5
#define HTTP_KEEPALIVE_SECS 5
/* lws's header buffer per request (its default, 4 KiB, is below what the
 * gate itself accepts). */
#define SERVER_HEADER_BUDGET (16 * 1024)

/* Descriptors the process needs besides lws's table and the sessions' SSH
 * sockets: stdio, the signalfd, the listeners, OpenSSL's and the
 * resolver's files. */
#define FD_RESERVE 64
/* lws needs room for unupgraded HTTP connections besides the sessions'
 * WebSockets; start only with at least this much. */
#define FD_HTTP_MIN 64
/* Of lws's table, what neither sessions nor unupgraded connections take:
 * its listeners, its wake-up pipe, the signalfd, and connections given up
 * to make room (http.c make_room) until lws closes them on its next turn.
 * Unupgraded connections are counted up to the table less the sessions'
 * share less this, so lws always has room to accept one more. */
#define FD_LWS_OWN 16
/* When the soft RLIMIT_NOFILE leaves less, raise it (up to the hard limit)
 * so that this many unupgraded connections fit too: 64 clients at
 * CONN_LIMIT_PER_CLIENT. */
#define FD_HTTP_ROOM 4096

/* Each session holds its WebSocket (in lws's table), its SSH socket and,
 * while it resolves the target, a resolver socket (both outside it). */
static unsigned long fds_outside_lws(const struct config *cfg)
{
    return 2ul * (unsigned long)cfg->max_sessions + FD_RESERVE;
}

/* Size lws's descriptor table from the real limit: a table larger than
 * RLIMIT_NOFILE lets lws keep accepting into EMFILE, and its accept loop
 * then spins and logs each failure. With the table below the limit lws
 * stops polling the listener when the table is full instead. Returns the
 * table size, or 0 (with `err`) when the limit is too low for MAX_SESSIONS. */
static unsigned server_fd_table(const struct config *cfg, char *err, size_t errlen)
{
    unsigned long need = fds_outside_lws(cfg) + (unsigned long)cfg->max_sessions + FD_HTTP_MIN;
    unsigned long want = fds_outside_lws(cfg) + (unsigned long)cfg->max_sessions + FD_HTTP_ROOM;
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
        snprintf(err, errlen, "cannot read RLIMIT_NOFILE");
        return 0;
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
        struct rlimit up = rl;
        up.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &up) == 0)
            rl = up;
    }
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > want)
        rl.rlim_cur = want;
    if (rl.rlim_cur < need) {
        snprintf(err, errlen,
                 "the descriptor limit (RLIMIT_NOFILE, systemd LimitNOFILE=) is %lu, too low "
                 "for MAX_SESSIONS=%d: it needs at least %lu (a WebSocket and an SSH socket "
                 "per session, %d for HTTP, %d spare)",
                 (unsigned long)rl.rlim_cur, cfg->max_sessions, need, FD_HTTP_MIN, FD_RESERVE);
        return 0;
    }
    return (unsigned)(rl.rlim_cur - fds_outside_lws(cfg));
}

static void lws_log_cb(int level, const char *line)
{
    size_t n = strlen(line);

    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    /* lws 4.1-4.3 report every socket handed back with its request
     * (lws_adopt_socket_vhost_readbuf, gate.c) at error level although
     * nothing is wrong: keep that out of the error log. */
    if (strstr(line, "adopt_socket_readbuf: calling service") ||
        strstr(line, "adopt_socket_readbuf: deferring handling ah")) {
        log_debug("lws: %.*s", (int)n, line);
        return;
    }
    log_msg(level == LLL_ERR ? LOG_ERROR : LOG_WARN, "lws: %.*s", (int)n, line);
}

static void wake(void *arg)
{
    lws_cancel_service(arg);
}

/* lws_service() ignores its timeout (lws 4): with nothing to do it sleeps
 * until lws's own next timer, up to half a minute away. While a browser is
 * connected its WebSocket's tick wakes the loop every second; without one,
 * the loop's own periodic work waited too: a worker stuck on a server that
 * stopped answering was cut long after SESSION_RELEASE_MS, and a drain on
 * SIGTERM overran SHUTDOWN_GRACE_SECS (the relay was killed instead). */
#define LOOP_TICK_USECS LWS_USEC_PER_SEC

static void loop_tick(lws_sorted_usec_list_t *sul)
{
    struct server *srv = (struct server *)((char *)sul - offsetof(struct server, loop_tick));

    lws_sul_schedule(srv->ctx, 0, &srv->loop_tick, loop_tick, LOOP_TICK_USECS);
}

static const struct lws_protocol_vhost_options pvo_default = {NULL, NULL, "default", "1"};
static const struct lws_protocol_vhost_options pvo = {NULL, &pvo_default, "wattcloud-sftp",
                                                      ""};

/* Try the listening address once with a socket of our own before lws does.
 * lws 4.3 answers an address that is not on this host (EADDRNOTAVAIL) by
 * retrying the bind for ever, even with FAIL_UPON_UNABLE_TO_BIND, so the
 * relay would run without a listener. The socket options match what lws
 * sets, so an address lws can bind is never refused here. Returns 0, or -1
 * with errno set. */
static int check_listenable(const struct config *cfg)
{
    struct addrinfo hints, *ai = NULL;
    char port[16];
    int fd = -1, one = 1, rc = -1, err = 0;

    memset(&hints, 0, sizeof(hints));
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%d", cfg->bind_port);
    if (getaddrinfo(cfg->bind_host, port, &hints, &ai) != 0 || !ai) {
        err = EADDRNOTAVAIL;
        goto out;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0) {
        err = errno;
        goto out;
    }
    if (ai->ai_family == AF_INET6 &&
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) {
        err = errno;
        goto out;
    }
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        err = errno;
        goto out;
    }
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    if (ai)
        freeaddrinfo(ai);
    errno = err;
    return rc;
}

static struct lws_context *create_context(struct server *srv,
                                          const struct lws_protocols *protocols,
                                          unsigned fd_table)
{
    const struct config *cfg = srv->cfg;
    struct lws_context_creation_info info;

    memset(&info, 0, sizeof(info));
    info.port = cfg->bind_port;
    info.iface = cfg->bind_host;
    info.protocols = protocols;
    info.pvo = &pvo;
    info.user = srv;
    info.gid = (gid_t)-1;
    info.uid = (uid_t)-1;
    /* HTTP/2 would let a browser carry the WebSocket on an h2 stream, which
     * skips the upgrade gate and ignores rx flow control. */
    info.alpn = "http/1.1";
    info.pt_serv_buf_size = WS_RX_BUFFER;
    info.fd_limit_per_thread = fd_table;
    /* A request must arrive complete within HTTP_REQUEST_DEADLINE_SECS of
     * the connection (lws: the TLS handshake, then holding a header table)
     * and a kept-alive connection may idle HTTP_KEEPALIVE_SECS: a client
     * that opens connections and sends nothing holds them that long only. */
    info.timeout_secs = HTTP_REQUEST_DEADLINE_SECS;
    info.timeout_secs_ah_idle = HTTP_REQUEST_DEADLINE_SECS;
    info.keepalive_timeout = HTTP_KEEPALIVE_SECS;
    /* lws drops a request whose headers outgrow its budget without an
     * answer; with this much room the gate sees the request and answers
     * 431 above its own limit (http.c). */
    info.max_http_header_data = SERVER_HEADER_BUDGET;
    /* Without FAIL_UPON_UNABLE_TO_BIND, lws 4.1 answers an address that is
     * not on this host by running without a listener and retrying later:
     * the relay would claim to listen and serve nothing. */
    info.options = LWS_SERVER_OPTION_VALIDATE_UTF8 | LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND;
    /* lws 4.1 binds an IPv4 iface on an IPv6 socket as "::", i.e. on every
     * interface: an IPv4 BIND_ADDR must disable IPv6 to stay where it was
     * put (127.0.0.1 must not become 0.0.0.0). */
    if (!strchr(cfg->bind_host, ':'))
        info.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
    if (cfg->tls_cert) {
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        info.ssl_cert_filepath = cfg->tls_cert;
        info.ssl_private_key_filepath = cfg->tls_key;
        info.ssl_options_set = SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1 |
                               SSL_OP_CIPHER_SERVER_PREFERENCE;
        info.ssl_cipher_list = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                               "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                               "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
    }
    return lws_create_context(&info);
}

/* Load the certificate chain and key into a scratch context and check that
 * they belong together. lws_tls_cert_updated() loads the chain first and the
 * key second into the live context and reports nothing: a new chain with a
 * key that does not match it (certificate renewed, key not yet copied)
 * would leave the listener without a usable key and every handshake would
 * fail. Checking first keeps the old certificate serving instead. On
 * success `expiry` holds the leaf's notAfter. Returns 0 or -1 with `err`. */
static int tls_pair_check(const char *cert, const char *key, char *expiry, size_t explen,
                          char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    const char *what = NULL;
    X509 *leaf;
    BIO *b;

    if (!ctx)
        what = "out of memory";
    else if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
        what = "cannot read the certificate chain";
    else if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        what = "cannot read the private key, or it does not match the certificate";
    else if (SSL_CTX_check_private_key(ctx) != 1)
        what = "the private key does not match the certificate";
    if (what) {
        unsigned long e = ERR_peek_last_error();
        snprintf(err, errlen, "%s (%s)", what, e ? ERR_reason_error_string(e) : "no detail");
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return -1;
    }
    expiry[0] = '\0';
    leaf = SSL_CTX_get0_certificate(ctx);
    b = BIO_new(BIO_s_mem());
    if (leaf && b && ASN1_TIME_print(b, X509_get0_notAfter(leaf)) == 1) {
        int n = BIO_read(b, expiry, (int)explen - 1);
        expiry[n > 0 ? n : 0] = '\0';
    }
    BIO_free(b);
    SSL_CTX_free(ctx);
    return 0;
}

/* SIGHUP: swap in the certificate files as they are now. Live connections
 * keep the session they negotiated; new handshakes get the new chain. */
static void tls_reload(struct server *srv)
{
    const struct config *cfg = srv->cfg;
    char expiry[64], err[256];

    if (!cfg->tls_cert) {
        log_info("SIGHUP: TLS is off, nothing to reload");
        return;
    }
    if (tls_pair_check(cfg->tls_cert, cfg->tls_key, expiry, sizeof(expiry), err,
                       sizeof(err)) < 0) {
        log_error("SIGHUP: TLS certificate not reloaded, keeping the old one: %s", err);
        return;
    }
    lws_tls_cert_updated(srv->ctx, cfg->tls_cert, cfg->tls_key, NULL, 0, NULL, 0);
    log_info("SIGHUP: TLS certificate reloaded from %s (expires %s)", cfg->tls_cert,
             expiry[0] ? expiry : "?");
}

/* SIGTERM: refuse new sessions, let live ones finish what they are doing,
 * close them as they go idle, and cut whatever is left at the deadline. */
static int drain_step(struct server *srv)
{
    int64_t now = clock_now_ms();

    if (!srv->draining) {
        srv->draining = 1;
        srv->drain_deadline_ms = now + (int64_t)srv->cfg->shutdown_grace_secs * 1000;
        log_info("draining: %d live sessions, up to %d s", session_hub_count(&srv->hub),
                 srv->cfg->shutdown_grace_secs);
    }
    if (session_hub_count(&srv->hub) == 0)
        return 1;
    ws_drain_tick(srv, now >= srv->drain_deadline_ms);
    return now >= srv->drain_deadline_ms + DRAIN_FORCE_SECS * 1000;
}

static void cut_session(struct session *s, void *arg)
{
    (void)arg;
    session_cut(s);
}

/* After the context is gone no WebSocket holds a session: join the workers
 * (cut connections make them return promptly) so nothing outlives main.
 * Returns the sessions still live when it gave up. */
static int reap_workers(struct session_hub *h)
{
    for (int tries = 0; session_hub_count(h) > 0 && tries < 200; tries++) {
        struct session *s = session_hub_take_notified(h), *next;

        for (; s; s = next) {
            next = session_hub_notified_next(h, s);
            if (session_worker_finished(s))
                session_join(s);
            session_unref(s);
        }
        usleep(50 * 1000);
    }
    return session_hub_count(h);
}

/* Let lws watch the signalfd, so a signal ends lws_service() at once. */
static int watch_signals(struct server *srv)
{
    struct lws_vhost *vh = lws_get_vhost_by_name(srv->ctx, "default");
    lws_sock_file_fd_type fd;

    srv->sig_fd = signals_open();
    if (srv->sig_fd < 0 || !vh)
        return -1;
    fd.filefd = srv->sig_fd;
    return lws_adopt_descriptor_vhost(vh, LWS_ADOPT_RAW_FILE_DESC, fd, "http", NULL) ? 0 : -1;
}

int server_run(const struct config *cfg, void *(*worker)(void *))
{
    const struct lws_protocols protocols[] = {
        {"http", http_cb, http_pss_size(), 0, 0, NULL, 0},
        {"wattcloud-sftp", ws_cb, ws_pss_size(), WS_RX_BUFFER, 0, NULL,
         PROTO_READ_CHUNK_BYTES + LWS_PRE + 64},
        {NULL, NULL, 0, 0, 0, NULL, 0},
    };
    struct server srv;
    char err[512], expiry[64];
    unsigned fd_table;
    int rc = 1, left;

    memset(&srv, 0, sizeof(srv));
    srv.cfg = cfg;
    srv.worker = worker;
    srv.http_store_answer = http_store_answer;
    srv.sig_fd = -1;
    /* Files named by settings are checked here, before anything listens,
     * so a typo stops the start with status 2 naming the setting. */
    if (cfg->tls_cert && tls_pair_check(cfg->tls_cert, cfg->tls_key, expiry,
                                        sizeof(expiry), err, sizeof(err)) < 0) {
        log_error("invalid TLS_CERT/TLS_KEY: %s", err);
        return 2;
    }
    if (cfg->spa_dir && static_check_dir(cfg->spa_dir, err, sizeof(err)) < 0) {
        log_error("%s", err);
        return 2;
    }
    fd_table = server_fd_table(cfg, err, sizeof(err));
    if (!fd_table) {
        log_error("%s", err);
        return 2;
    }
    srv.access = access_new(cfg);
    srv.conns = conn_limit_new(fd_table - (unsigned)cfg->max_sessions - FD_LWS_OWN,
                               CONN_LIMIT_PER_CLIENT);
    if (!srv.access || !srv.conns) {
        log_error("out of memory");
        access_free(srv.access);
        conn_limit_free(srv.conns);
        return 1;
    }
    session_hub_init(&srv.hub, cfg, srv.access);
    metrics_set_buffer_budget(&srv.hub.buffered, srv.hub.budget);
    wipe_ssh_set_budget(cfg->ssh_memory_budget_mib > 0
                            ? (size_t)cfg->ssh_memory_budget_mib << 20 : srv.hub.budget,
                        WIPE_ROOM_WAIT_MS);
    log_info("memory budget for libssh2: %zu MiB", wipe_ssh_budget() >> 20);
    metrics_set_lws_version(lws_get_library_version());
    lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_cb);
    if (check_listenable(cfg) < 0) {
        log_error("cannot listen on %s port %d: %s", cfg->bind_host, cfg->bind_port,
                  strerror(errno));
        goto out;
    }
    srv.ctx = create_context(&srv, protocols, fd_table);
    if (!srv.ctx) {
        log_error("cannot listen on %s port %d (see lws messages above)", cfg->bind_host,
                  cfg->bind_port);
        goto out;
    }
    if (watch_signals(&srv) < 0) {
        log_error("cannot watch for signals");
        goto out;
    }
    session_hub_set_wake(&srv.hub, wake, srv.ctx);
    store_set_wake(access_store(srv.access), wake, srv.ctx);
    lws_sul_schedule(srv.ctx, 0, &srv.loop_tick, loop_tick, LOOP_TICK_USECS);
    log_info("wattcloud-relay %s listening on %s port %d (%s, %u descriptors for lws)",
             WC_VERSION, cfg->bind_host, cfg->bind_port, cfg->tls_cert ? "TLS" : "plain HTTP",
             fd_table);

    for (;;) {
        lws_service(srv.ctx, 0);  /* the timeout is ignored: see loop_tick */
        session_hub_tick(&srv.hub);
        if (srv.got_hup) {
            srv.got_hup = 0;
            tls_reload(&srv);
        }
        if (srv.got_term && drain_step(&srv))
            break;
    }
    log_info("shutting down");
    rc = 0;
out:
    session_hub_set_wake(&srv.hub, NULL, NULL);
    store_set_wake(access_store(srv.access), NULL, NULL);
    session_hub_for_each(&srv.hub, cut_session, NULL);
    if (srv.ctx) {
        lws_sul_cancel(&srv.loop_tick);
        lws_context_destroy(srv.ctx);  /* closes the signalfd too */
    }
    left = reap_workers(&srv.hub);
    if (left > 0) {
        /* A worker stuck in a call that ignores the cut (getaddrinfo) still
         * uses the hub, the access table, libssh2 and the settings: freeing
         * them under it could crash or corrupt the exit. The kernel frees
         * everything at exit; credentials die with the process, which
         * cannot dump core. */
        log_error("%d session workers did not stop; exiting without clean-up", left);
        _exit(rc);
    }
    session_hub_destroy(&srv.hub);
    /* Requests still with the store belong to waits of the gate and the
     * HTTP routes: stop the store, then free them. */
    store_stop(access_store(srv.access));
    gate_shutdown(&srv);
    access_free(srv.access);
    conn_limit_free(srv.conns);
    return rc;
}
