/* The SSH side of a session: resolve and pin the target, connect, show the
 * host key, authenticate, then run requests one at a time in arrival order.
 * Results go back as frames through the session; the worker never touches
 * the WebSocket. */
#include "worker.h"

#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "access.h"
#include "clock.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "netguard.h"
#include "session.h"
#include "sftp_ops.h"
#include "ssh_conn.h"
#include "sshsig.h"
#include "wipe_alloc.h"

struct worker {
    struct session *s;
    const struct config *cfg;
    struct ssh_conn c;
    struct sftp_ops *ops;
    struct sftp_sink sink;  /* how ops stream large answers: session_post */
    const char *reason;     /* why the session ended, for the log */
    /* The connection failed for want of an answer in time: the requests
     * still queued are told that, not only that it was lost. */
    int timed_out;
    struct sshsig_key key;  /* the public key of a publickey-sign login */
};

static int sink_post(void *arg, struct frame *a, struct frame *b)
{
    return session_post(arg, a, b);
}

static void post_text(struct session *s, char *text)
{
    session_post(s, frame_from_text(text), NULL);
}

/* Answer request `id` as failed with `msg` and `code`, unless the relay's
 * memory limits cut the connection: then that is the answer (code "limit"). */
static void post_failure(struct worker *w, uint32_t id, const char *msg, const char *code)
{
    const char *mem = ssh_memory_refusal(&w->c);

    post_text(w->s, mem ? proto_error(id, mem, "limit") : proto_error(id, msg, code));
}

static void on_socket(int fd, void *arg)
{
    session_set_sock(arg, fd);
}

/* Host names are resolved here, off the service thread, and every address
 * they resolve to must pass the SSRF guard; the connection then goes to
 * exactly the address that was checked. */
static int pin_target(struct worker *w)
{
    struct session *s = w->s;
    char err[256];
    int rc;

    if (s->pinned)
        return 0;
    rc = netguard_resolve(w->cfg->allow_private, w->cfg->n_allow_private, s->host, s->port,
                          &s->addr, &s->addrlen, err, sizeof(err));
    if (rc == 0) {
        s->pinned = 1;
        return 0;
    }
    w->reason = rc == NETGUARD_E_BLOCKED ? "blocked_target" : "resolve_failed";
    post_text(s, proto_setup_error(w->reason, err));
    log_info("session %s: target %s refused: %s", s->id, s->host, err);
    return -1;
}

static int connect_target(struct worker *w)
{
    struct ssh_params t = {
        .connect_secs = w->cfg->connect_timeout_secs,
        .banner_secs = w->cfg->banner_timeout_secs,
        .op_secs = w->cfg->op_timeout_secs,
        .mem_max = (size_t)w->cfg->ssh_session_memory_mib << 20,
        .evict = session_evict,
        .evict_arg = w->s,
    };
    char err[256];
    int64_t t0 = clock_now_us();
    int rc = ssh_open(&w->c, (struct sockaddr *)&w->s->addr, w->s->addrlen, &t, on_socket,
                      w->s, err, sizeof(err));

    if (rc < 0) {
        post_text(w->s, proto_setup_error(ssh_err_code(rc), err));
        w->reason = ssh_err_code(rc);
        log_info("session %s: %s", w->s->id, err);
        return -1;
    }
    metrics_ssh_connect(clock_now_us() - t0);
    return 0;
}

/* A job is done: it no longer counts as work in progress (a drain waits
 * for that), and its memory goes. */
static void finish_job(struct session *s, struct job *j)
{
    if (j)
        session_job_done(s, j);
    job_free(j);
}

/* The session was evicted to make room in SSH_MEMORY_BUDGET_MIB: say why
 * it ends. */
static void log_evicted(struct worker *w)
{
    char why[256];

    ssh_failure(&w->c, why, sizeof(why));
    w->reason = "ssh connection lost";
    log_info("session %s: ended: %s", w->s->id, why);
}

/* Wait for a job of `kind`; the WebSocket side enforces the time limit and
 * closes the session on anything unexpected, which ends the wait. */
static struct job *wait_for(struct worker *w, enum job_kind kind)
{
    for (;;) {
        int gone;
        struct job *j = session_next_job(w->s, 1000, &gone);

        if (gone == SESSION_WS_GONE) {
            w->reason = "browser closed";
            return NULL;
        }
        /* Evicted (SSH_MEMORY_BUDGET_MIB): an awaited job still runs, and
         * an auth fails on the cut connection with its answer on its id.
         * Without one the session just closes: after the host_key frame the
         * app reads only frames with an id (PROTOCOL §2.5). */
        if (j && j->kind == kind)
            return j;
        finish_job(w->s, j);
        if (gone == SESSION_EVICTED) {
            log_evicted(w);
            return NULL;
        }
    }
}

/* The signer of a publickey-sign login (ssh_conn.h): send the browser a
 * sign_request and wait, at most SIGN_TIMEOUT_SECS, for its answer. The
 * request id is awaited before the frame goes out, so a fast answer is
 * never dropped; once the wait ends, any answer is ignored. */
static int ask_browser(void *arg, const char *alg, const unsigned char *data, size_t len,
                       char **answer, char *err, size_t errlen)
{
    struct worker *w = arg;
    char *b64 = sshsig_b64encode(data, len);
    uint32_t id;
    int rc;

    if (!b64) {
        snprintf(err, errlen, "out of memory");
        return SSH_E_IO;
    }
    id = session_sign_open(w->s);
    session_post(w->s, frame_from_text(proto_sign_request(id, alg, b64)), NULL);
    free(b64);
    log_info("session %s: sign_request %u sent: %s with %s key %s", w->s->id, id, alg,
             w->key.name, w->key.fingerprint);
    rc = session_sign_wait(w->s, id, w->cfg->sign_timeout_secs * 1000, answer);
    if (rc == SESSION_SIGN_TIMEOUT) {
        snprintf(err, errlen, "signature timeout: the browser did not answer the "
                 "sign_request within %d s", w->cfg->sign_timeout_secs);
        return SSH_E_SIGN_TIMEOUT;
    }
    if (rc == SESSION_SIGN_GONE) {
        snprintf(err, errlen, "the browser left before it answered the sign_request");
        return SSH_E_IO;
    }
    return 0;
}

/* A publickey-sign login names its key before anything is counted: a key
 * the relay cannot use is the request's fault, not a failed login. Fills
 * `signer` and returns 0, or answers the error and returns -1. */
static int sign_setup(struct worker *w, struct job *j, struct ssh_signer *signer)
{
    const struct sshsig_key *key = &w->key;
    char err[256];

    if (sshsig_parse_pubkey(j->auth.public_key, &w->key, err, sizeof(err)) < 0 ||
        sshsig_set_algorithm(&w->key, j->auth.algorithm, err, sizeof(err)) < 0) {
        proto_auth_wipe(&j->auth);
        post_text(w->s, proto_error(j->req.id, err, "bad_key"));
        w->reason = "bad_key";
        log_info("session %s: publickey-sign refused: %s", w->s->id, err);
        return -1;
    }
    log_info("session %s: publickey-sign login with %s key %s", w->s->id, key->name,
             key->fingerprint);
    signer->key = key;
    signer->ask = ask_browser;
    signer->arg = w;
    return 0;
}

/* Count the attempt before trying and refund it on success, so parallel
 * guesses cannot exceed the failure budget (PROTOCOL §4). A publickey-sign
 * login is one attempt too, whatever the browser answers: a timeout or a
 * bad signature is not refunded. */
static int authenticate(struct worker *w, struct job *j)
{
    struct session *s = w->s;
    struct ssh_signer signer = {0}, *sg = NULL;
    char err[256];
    int rc;

    if (j->auth.type == AUTH_PUBLICKEY_SIGN) {
        if (sign_setup(w, j, &signer) < 0)
            return -1;
        sg = &signer;
    }
    if (access_auth_attempt(s->hub->access, s->client_ip, access_time_now()) != 0) {
        metrics_ssh_auth((int)j->auth.type, "blocked");
        proto_auth_wipe(&j->auth);
        post_text(s, proto_error(j->req.id, "authentication failed", "blocked"));
        w->reason = "auth blocked";
        log_info("session %s: client %s is blocked after failed logins", s->id, s->client_ip);
        return -1;
    }
    rc = ssh_login(&w->c, &j->auth, sg, err, sizeof(err));
    metrics_ssh_auth((int)j->auth.type, rc == 0 ? "ok" : ssh_err_code(rc));
    proto_auth_wipe(&j->auth);
    /* libssh2 and OpenSSL leave key material in dead stack and in vector
     * registers (wipe_alloc.h). */
    wipe_thread_residue();
    if (rc == 0 || rc == SSH_E_SFTP || rc == SSH_E_KEY)
        access_auth_refund(s->hub->access, s->client_ip, access_time_now());
    if (rc < 0) {
        /* Cut by the relay's memory limits: say so, not what libssh2 saw
         * of the cut connection. The attempt stays counted: whether the
         * server had checked the credentials by then is not known. */
        if (ssh_memory_refusal(&w->c))
            ssh_failure(&w->c, err, sizeof(err));
        post_failure(w, j->req.id, err, ssh_err_code(rc));
        w->reason = ssh_err_code(rc);
        log_info("session %s: login refused: %s", s->id, err);
        return -1;
    }
    w->sink.post = sink_post;
    w->sink.arg = s;
    w->sink.moved = &s->sftp_moved;
    w->ops = sftp_ops_new(&w->c, &w->sink, w->cfg->list_max_entries,
                          w->cfg->op_timeout_secs);
    if (!w->ops) {
        post_text(s, proto_error(j->req.id, "out of memory", "io"));
        w->reason = "out of memory";
        return -1;
    }
    if (sg)
        log_info("session %s: publickey-sign login succeeded with %s key %s", s->id,
                 w->key.name, w->key.fingerprint);
    post_text(s, proto_result_empty(j->req.id));
    session_set_phase(s, PH_READY);
    log_debug("session %s: authenticated; SFTP reads of %zu bytes", s->id, w->c.read_size);
    return 0;
}

/* Why a request ended the session, for the log: which rule decided that
 * the server is gone (PROTOCOL §3: one operation may take up to
 * SFTP_OP_TIMEOUT_SECS), or that an answer was cut short. A timeout is
 * also what the requests queued behind it are told (fail_job). */
static void log_session_end(struct worker *w, const struct job *j, const struct op_reply *r)
{
    const char *verb = proto_method_name(j->req.method);

    if (r->code && strcmp(r->code, "timeout") == 0) {
        w->timed_out = 1;
        w->reason = "sftp operation timeout";
        log_info("session %s: %s got no answer from the SFTP server within %d s "
                 "(SFTP_OP_TIMEOUT_SECS)", w->s->id, verb, w->cfg->op_timeout_secs);
    } else if (r->fatal) {
        char why[256];

        ssh_failure(&w->c, why, sizeof(why));
        w->reason = "ssh connection lost";
        log_info("session %s: connection to the SFTP server lost during %s: %s (%s)",
                 w->s->id, verb, r->error ? r->error : "unknown error", why);
    } else {
        w->reason = "answer cut short";
        log_info("session %s: %s answer cut short, closing: %s", w->s->id, verb,
                 r->error ? r->error : "unknown error");
    }
}

/* Why run_request() ends the session. */
#define RUN_E_SSH     (-1)  /* the SSH connection is unusable */
#define RUN_E_CUT     (-2)  /* a streamed answer was cut short: the WebSocket
                               is closing and nothing may follow the
                               unfinished message */

/* Run one request and post its answer. Returns 0, RUN_E_SSH or RUN_E_CUT;
 * either error ends the session. */
static int run_request(struct worker *w, struct job *j)
{
    struct op_reply r;
    char *text;
    int rc = 0;

    sftp_ops_run(w->ops, &j->req, j->data, j->len, &r);
    if (r.streamed) {
        /* With an error the message was cut short, and unfinished when the
         * session took no more of it; otherwise it went out whole and only
         * the connection failed after it (a close that timed out): the
         * requests queued behind it are then answered. */
        if (r.error || r.fatal) {
            log_session_end(w, j, &r);
            rc = r.error || r.unfinished ? RUN_E_CUT : RUN_E_SSH;
        }
        op_reply_clear(&r);
        return rc;
    }
    if (r.result) {
        text = proto_result(j->req.id, r.result);
        r.result = NULL;
    } else {
        text = proto_error(j->req.id, r.error, r.code);
        log_debug("session %s: %s failed: %s", w->s->id, proto_method_name(j->req.method),
                  r.error);
    }
    session_post(w->s, frame_from_text(text), r.data);
    r.data = NULL;
    if (r.write_pending) {
        int wrc = sftp_ops_flush(w->ops, &j->req, j->data, j->len);
        if (wrc < 0) {
            op_reply_clear(&r);
            r.fatal = 1;
            r.code = wrc == SSH_E_TIMEOUT ? "timeout" : "io";
            r.error = "write failed";
            log_session_end(w, j, &r);
            return RUN_E_SSH;
        }
    }
    if (r.read_ahead)
        sftp_ops_read_ahead(w->ops, j->req.handle);
    if (r.fatal) {
        log_session_end(w, j, &r);
        rc = RUN_E_SSH;
    }
    op_reply_clear(&r);
    return rc;
}

/* Keepalives are ours, not libssh2's (ssh_conn.c says why): after
 * SSH_KEEPALIVE_SECS without a request, probe the server with a round trip
 * so a dead server is noticed (and NAT state kept) while the browser is
 * quiet. The server is declared gone when the answer has not come after
 * SSH_KEEPALIVE_COUNT intervals: the keepalive's own dead-peer rule. */
static int keepalive(struct worker *w)
{
    int budget = w->cfg->keepalive_secs * w->cfg->keepalive_count;
    int rc;

    ssh_set_timeout(&w->c, budget);
    rc = ssh_ping(&w->c);
    ssh_set_timeout(&w->c, w->cfg->op_timeout_secs);
    return rc;
}

/* Answer `j` (NULL: nothing), if it is a request, as failed with the
 * connection, or with the relay's memory limit that cut it, and finish it. */
static void fail_job(struct worker *w, struct job *j)
{
    if (j && j->kind == JOB_REQUEST) {
        if (w->timed_out)
            post_failure(w, j->req.id, "the SFTP server did not answer in time", "timeout");
        else
            post_failure(w, j->req.id, "connection to the SFTP server lost", "io");
    }
    finish_job(w->s, j);
}

/* The SSH connection is gone: answer the requests still queued, so the
 * browser learns why they fail instead of only seeing the WebSocket close
 * (a write_chunk acknowledged before its bytes were written then gets its
 * failure reported on the next chunk or write_close). Every queued request
 * gets exactly one answer, even when the server died under it. */
static void fail_queued(struct worker *w)
{
    struct job *j;
    int gone;

    while ((j = session_next_job(w->s, 0, &gone)) != NULL)
        fail_job(w, j);
}

static void serve(struct worker *w)
{
    int idle_ms = w->cfg->keepalive_secs * 1000;

    for (;;) {
        int gone, rc;
        struct job *j = session_next_job(w->s, idle_ms, &gone);

        if (gone == SESSION_WS_GONE) {
            w->reason = "browser closed";
            return;
        }
        /* Evicted: end now, even with requests waiting. Requests that never
         * reach libssh2 (a close of an unknown handle) would otherwise keep
         * the worker, and the memory others wait for, as long as the
         * browser keeps sending them. */
        if (gone == SESSION_EVICTED) {
            log_evicted(w);
            fail_job(w, j);
            fail_queued(w);
            return;
        }
        if (!j) {
            rc = keepalive(w);
            if (rc == SSH_E_TIMEOUT) {
                w->reason = "ssh keepalive timeout";
                w->timed_out = 1;
                log_info("session %s: the SFTP server did not answer a keepalive within "
                         "%d s (SSH_KEEPALIVE_COUNT %d x SSH_KEEPALIVE_SECS %d)", w->s->id,
                         w->cfg->keepalive_secs * w->cfg->keepalive_count,
                         w->cfg->keepalive_count, w->cfg->keepalive_secs);
            } else if (rc < 0) {
                char why[256];

                ssh_failure(&w->c, why, sizeof(why));
                w->reason = "ssh connection lost";
                log_info("session %s: connection to the SFTP server lost (keepalive: %s)",
                         w->s->id, why);
            }
            if (rc < 0) {
                ssh_cut(&w->c);
                fail_queued(w);
                return;
            }
            continue;
        }
        rc = j->kind == JOB_REQUEST ? run_request(w, j) : 0;
        finish_job(w->s, j);
        if (rc < 0) {
            /* run_request logged why. After a cut-short answer nothing may
             * be posted: the message it began is unfinished. */
            if (rc == RUN_E_SSH)
                fail_queued(w);
            return;
        }
    }
}

void *worker_main(void *arg)
{
    struct worker w = {.s = arg, .cfg = ((struct session *)arg)->hub->cfg, .reason = "closed"};
    struct job *j = NULL;

    w.c.sock = -1;
    if (pin_target(&w) < 0 || connect_target(&w) < 0)
        goto out;
    session_set_phase(w.s, PH_WAIT_HOSTKEY);
    post_text(w.s, proto_host_key(w.c.fingerprint, w.c.key_type));
    j = wait_for(&w, JOB_HOSTKEY_ACCEPTED);
    if (!j)
        goto out;
    finish_job(w.s, j);
    j = wait_for(&w, JOB_AUTH);
    if (!j || authenticate(&w, j) < 0)
        goto out;
    finish_job(w.s, j);
    j = NULL;
    serve(&w);
out:
    finish_job(w.s, j);
    sftp_ops_free(w.ops);
    session_set_sock(w.s, -1);
    if (w.c.acct.peak)
        log_debug("session %s: libssh2 held at most %zu KiB", w.s->id, w.c.acct.peak >> 10);
    ssh_close(&w.c);
    session_worker_exit(w.s, w.reason);
    wipe_release_stack();
    return NULL;
}
