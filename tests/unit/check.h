/* A minimal test harness: CHECK records a failure and goes on, so one run
 * shows every broken expectation; main returns the failure count. */
#ifndef WC_CHECK_H
#define WC_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures;
static int check_count;

#define CHECK(cond)                                                        \
    do {                                                                   \
        check_count++;                                                     \
        if (!(cond)) {                                                     \
            check_failures++;                                              \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__,         \
                    __LINE__, #cond);                                      \
        }                                                                  \
    } while (0)

#define CHECK_STR(a, b)                                                    \
    do {                                                                   \
        const char *check_a_ = (a), *check_b_ = (b);                       \
        check_count++;                                                     \
        if (!check_a_ || !check_b_ || strcmp(check_a_, check_b_) != 0) {   \
            check_failures++;                                              \
            fprintf(stderr, "%s:%d: CHECK_STR failed: \"%s\" != \"%s\"\n", \
                    __FILE__, __LINE__, check_a_ ? check_a_ : "(null)",    \
                    check_b_ ? check_b_ : "(null)");                       \
        }                                                                  \
    } while (0)

#define CHECK_DONE()                                                       \
    do {                                                                   \
        printf("%s: %d checks, %d failed\n", __FILE__, check_count,        \
               check_failures);                                            \
        return check_failures ? 1 : 0;                                     \
    } while (0)

#endif
