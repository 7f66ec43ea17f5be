/*
 * mock_member_ids.c - unique consumer group member ids in kafka-mock.
 *
 * librdkafka's mock cluster (2.0, and its current source alike) names a new
 * group member after the address of its struct: snprintf(id, 32, "%p",
 * member) in rd_kafka_mock_cgrp_member_add().  It also accepts any member id
 * a JoinGroup names, known or not.  Once a member has timed out (its client
 * was SIGSTOPped or killed) and its memory went to a new member, a client
 * that rejoins under the old name lands on the new member's entry: two
 * clients share one member.  The mock then aborts (assertion
 * "!member->resp" when both have a JoinGroup waiting), or a librdkafka 2.0
 * client that leads the group crashes in the cooperative-sticky assignor on
 * the duplicate (SIGSEGV in rdk:main).  A real broker names members with
 * UUIDs and answers UNKNOWN_MEMBER_ID to names it does not know, so neither
 * happens against Kafka; both happened in chaos_check_random.
 *
 * The fix: this executable defines the C library's fortified snprintf entry
 * point, which librdkafka (built with _FORTIFY_SOURCE) calls for that id.
 * The dynamic linker resolves librdkafka's call to the executable's
 * definition first.  Every call is handed on to the C library unchanged,
 * except the bare format "%p", which gets a process-wide sequence number
 * appended ("0x7f..-17"): no two members share an id, whatever memory they
 * reuse.  The only other "%p" in librdkafka prints pointer-typed
 * configuration values, which kafka-mock never dumps.
 * check_harness's test_mock_member_ids_unique fails if the ids stop
 * carrying the number (a librdkafka that no longer calls this entry point).
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>

int __vsnprintf_chk(char *s, size_t maxlen, int flag, size_t slen, const char *fmt, va_list ap);
int __snprintf_chk(char *s, size_t maxlen, int flag, size_t slen, const char *fmt, ...);

static int forward(char *s, size_t maxlen, int flag, size_t slen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = __vsnprintf_chk(s, maxlen, flag, slen, fmt, ap);
    va_end(ap);
    return n;
}

int __snprintf_chk(char *s, size_t maxlen, int flag, size_t slen, const char *fmt, ...)
{
    static atomic_ulong seq;
    va_list ap;
    va_start(ap, fmt);
    int n;
    if (fmt && strcmp(fmt, "%p") == 0) {
        void *p = va_arg(ap, void *);
        n = forward(s, maxlen, flag, slen, "%p-%lu", p, atomic_fetch_add(&seq, 1) + 1);
    } else {
        n = __vsnprintf_chk(s, maxlen, flag, slen, fmt, ap);
    }
    va_end(ap);
    return n;
}
