/* metrics: close reasons map to their fixed labels (an unknown text to
 * "other", never to a new label), histogram buckets are cumulative and
 * bounded by their le, gauges go up and down, the whole exposition fits in
 * METRICS_BODY_MAX even with every counter at its largest value, and a
 * buffer too small is refused instead of cut. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "metrics.h"
#include "proto.h"
#include "session.h"  /* PH_*: the phases as metrics_session_phase() takes them */

static char buf[METRICS_BODY_MAX];

/* The value of the series line starting with `series` ("name{labels}"). */
static double value_of(const char *text, const char *series)
{
    char pat[256];
    const char *p;

    snprintf(pat, sizeof(pat), "\n%s ", series);
    p = strstr(text, pat);
    return p ? strtod(p + strlen(pat), NULL) : -1;
}

int main(void)
{
    static _Atomic size_t held = 5000;
    long n;

    CHECK_STR(metrics_close_label("browser closed"), "browser_closed");
    CHECK_STR(metrics_close_label("auth_failed"), "auth_failed");
    CHECK_STR(metrics_close_label("host key not accepted in time"), "host_key_timeout");
    CHECK_STR(metrics_close_label("frame before host key"), "protocol_violation");
    CHECK_STR(metrics_close_label("stalled holding the memory budget"), "budget_stall");
    CHECK_STR(metrics_close_label("something new"), "other");
    CHECK_STR(metrics_close_label("user@host:/path"), "other");
    CHECK_STR(metrics_close_label(NULL), "other");

    metrics_session_phase(-1, PH_CONNECTING);
    metrics_session_phase(PH_CONNECTING, PH_READY);
    metrics_session_ended("no such reason");
    metrics_sftp_op(M_STAT, NULL, 700);         /* 0.7 ms: le 0.001 */
    metrics_sftp_op(M_STAT, "not_found", 3000); /* 3 ms: le 0.005 */
    metrics_sftp_op(M_STAT, "weird_code", 90 * 1000 * 1000);  /* over 60 s: +Inf */
    metrics_sftp_op(M_UNKNOWN, NULL, 1);        /* not a verb: not counted */
    metrics_ssh_auth(AUTH_PASSWORD, "ok");
    metrics_ssh_auth(99, "no such result");
    metrics_unwritten_add(1000);
    metrics_unwritten_sub(400);
    metrics_upgrade_refused(418);
    n = metrics_format(buf, sizeof(buf));
    CHECK(value_of(buf, "wattcloud_relay_buffered_bytes") == 0);  /* no hub yet */
    metrics_set_buffer_budget(&held, 64u << 20);

    n = metrics_format(buf, sizeof(buf));
    CHECK(n > 0 && (size_t)n < sizeof(buf));
    CHECK(value_of(buf, "wattcloud_relay_sessions{phase=\"ready\"}") == 1);
    CHECK(value_of(buf, "wattcloud_relay_sessions{phase=\"connecting\"}") == 0);
    CHECK(value_of(buf, "wattcloud_relay_sessions_ended_total{reason=\"other\"}") == 1);
    CHECK(value_of(buf, "wattcloud_relay_sftp_ops_total{verb=\"stat\",outcome=\"ok\"}") == 1);
    CHECK(value_of(buf, "wattcloud_relay_sftp_ops_total{verb=\"stat\",outcome=\"not_found\"}")
          == 1);
    CHECK(value_of(buf, "wattcloud_relay_sftp_ops_total{verb=\"stat\",outcome=\"other\"}") == 1);
    CHECK(value_of(buf, "wattcloud_relay_sftp_op_duration_seconds_bucket{verb=\"stat\","
                        "le=\"0.001\"}") == 1);
    CHECK(value_of(buf, "wattcloud_relay_sftp_op_duration_seconds_bucket{verb=\"stat\","
                        "le=\"0.005\"}") == 2);
    CHECK(value_of(buf, "wattcloud_relay_sftp_op_duration_seconds_bucket{verb=\"stat\","
                        "le=\"60\"}") == 2);
    CHECK(value_of(buf, "wattcloud_relay_sftp_op_duration_seconds_bucket{verb=\"stat\","
                        "le=\"+Inf\"}") == 3);
    CHECK(value_of(buf, "wattcloud_relay_sftp_op_duration_seconds_count{verb=\"stat\"}") == 3);
    CHECK(value_of(buf, "wattcloud_relay_sftp_op_duration_seconds_sum{verb=\"stat\"}") ==
          90.0037);
    CHECK(value_of(buf, "wattcloud_relay_ssh_auth_total{method=\"password\",result=\"ok\"}")
          == 1);
    CHECK(value_of(buf, "wattcloud_relay_ssh_auth_total{method=\"other\",result=\"other\"}")
          == 1);
    CHECK(value_of(buf, "wattcloud_relay_unwritten_upload_bytes") == 600);
    CHECK(value_of(buf, "wattcloud_relay_buffered_bytes") == 5000);
    CHECK(value_of(buf, "wattcloud_relay_memory_budget_bytes") == 64 << 20);
    CHECK(value_of(buf, "wattcloud_relay_upgrades_refused_total{status=\"other\"}") == 1);
    CHECK(strstr(buf, "verb=\"\"") == NULL);  /* M_UNKNOWN has no series */

    /* Large values (longer numbers): still within METRICS_BODY_MAX. */
    for (int i = 0; i < M_COUNT; i++)
        metrics_sftp_op(i, NULL, INT64_MAX / 4);
    metrics_bytes_from_browser(SIZE_MAX / 2);
    n = metrics_format(buf, sizeof(buf));
    CHECK(n > 0);
    /* Too small a buffer: refused, never a cut exposition. */
    CHECK(metrics_format(buf, 1000) == -1);
    CHECK_DONE();
}
