/* The libwebsockets context: listener, TLS, protocols, and the service loop
 * with its signal handling and graceful drain. Everything here runs on the
 * one service thread. */
#include "server.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "access.h"
#include "client_ip.h"
#include "config.h"
#include "log.h"
#include "static_files.h"

/* WebSocket receive buffer per connection: also the most one RECEIVE
 * callback delivers. Larger is faster for uploads but costs every idle
 * session; 64 KiB keeps 200 idle sessions near 13 MiB. */
#define WS_RX_BUFFER (64u * 1024)
/* Extra seconds after the drain deadline for workers to notice the cut. */
#define DRAIN_FORCE_SECS 5

/* Signal handlers cannot take arguments: these are the only globals. */
static volatile sig_atomic_t got_term, got_hup;
static struct lws_context *signal_ctx;

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        got_hup = 1;
    else
        got_term = 1;
    if (signal_ctx)
        lws_cancel_service(signal_ctx);
}

static void install_signals(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

static void lws_log_cb(int level, const char *line)
{
    size_t n = strlen(line);

    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    log_msg(level == LLL_ERR ? LOG_ERROR : LOG_WARN, "lws: %.*s", (int)n, line);
}

static void wake(void *arg)
{
    lws_cancel_service(arg);
}

struct server *server_of(struct lws *wsi)
{
    return lws_context_user(lws_get_context(wsi));
}

int server_client_ip(struct lws *wsi, char *out, size_t outlen)
{
    struct server *srv = server_of(wsi);
    char peer[128], xff[1024];
    int has_xff;

    if (!lws_get_peer_simple(wsi, peer, sizeof(peer)))
        return -1;
    has_xff = lws_hdr_copy(wsi, xff, sizeof(xff), WSI_TOKEN_X_FORWARDED_FOR) > 0;
    return client_ip_resolve(srv->cfg, peer, has_xff ? xff : NULL, out, outlen);
}

static const struct lws_protocol_vhost_options pvo_default = {NULL, NULL, "default", "1"};
static const struct lws_protocol_vhost_options pvo = {NULL, &pvo_default, "wattcloud-sftp",
                                                      ""};

static struct lws_context *create_context(struct server *srv,
                                          const struct lws_protocols *protocols)
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
    info.fd_limit_per_thread = (unsigned)cfg->max_sessions * 2 + 64;
    info.timeout_secs = 20;
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
    time_t now = time(NULL);

    if (!srv->draining) {
        srv->draining = 1;
        srv->drain_deadline = now + srv->cfg->shutdown_grace_secs;
        log_info("draining: %d live sessions, up to %d s", hub_count(&srv->hub),
                 srv->cfg->shutdown_grace_secs);
    }
    if (hub_count(&srv->hub) == 0)
        return 1;
    ws_drain_tick(srv, now >= srv->drain_deadline);
    return now >= srv->drain_deadline + DRAIN_FORCE_SECS;
}

static void cut_session(struct session *s, void *arg)
{
    (void)arg;
    session_cut(s);
}

/* After the context is gone no WebSocket holds a session: join the workers
 * (cut connections make them return promptly) so nothing outlives main. */
static void reap_workers(struct session_hub *h)
{
    for (int tries = 0; hub_count(h) > 0 && tries < 200; tries++) {
        struct session *s = hub_take_notified(h), *next;

        for (; s; s = next) {
            next = hub_notified_next(h, s);
            if (session_worker_finished(s))
                session_join(s);
            session_unref(s);
        }
        usleep(50 * 1000);
    }
}

int server_run(const struct config *cfg)
{
    const struct lws_protocols protocols[] = {
        {"http", http_cb, http_pss_size(), 0, 0, NULL, 0},
        {"wattcloud-sftp", ws_cb, ws_pss_size(), WS_RX_BUFFER, 0, NULL,
         WC_READ_CHUNK_BYTES + LWS_PRE + 64},
        {NULL, NULL, 0, 0, 0, NULL, 0},
    };
    struct server srv;
    char err[512], expiry[64];
    int rc = 1;

    memset(&srv, 0, sizeof(srv));
    srv.cfg = cfg;
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
    srv.access = access_new(cfg);
    if (!srv.access) {
        log_error("out of memory");
        return 1;
    }
    hub_init(&srv.hub, cfg, srv.access);
    lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_cb);
    srv.ctx = create_context(&srv, protocols);
    if (!srv.ctx) {
        log_error("cannot listen on %s port %d (see lws messages above)", cfg->bind_host,
                  cfg->bind_port);
        goto out;
    }
    hub_set_wake(&srv.hub, wake, srv.ctx);
    signal_ctx = srv.ctx;
    install_signals();
    log_info("wattcloud-relay %s listening on %s port %d (%s)", WC_VERSION, cfg->bind_host,
             cfg->bind_port, cfg->tls_cert ? "TLS" : "plain HTTP");

    for (;;) {
        lws_service(srv.ctx, 1000);
        session_hub_tick(&srv.hub);
        if (got_hup) {
            got_hup = 0;
            tls_reload(&srv);
        }
        if (got_term && drain_step(&srv))
            break;
    }
    log_info("shutting down");
    rc = 0;
out:
    signal_ctx = NULL;
    hub_set_wake(&srv.hub, NULL, NULL);
    hub_for_each(&srv.hub, cut_session, NULL);
    if (srv.ctx)
        lws_context_destroy(srv.ctx);
    reap_workers(&srv.hub);
    hub_destroy(&srv.hub);
    access_free(srv.access);
    return rc;
}
