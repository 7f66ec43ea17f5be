/*
 * sc_retention - keeps the event table small: every events.compact_interval
 * it consolidates events older than events.retention into event_history
 * (one row per partition per hour: first/last committed offset, number of
 * batches, events per kind) and deletes them, in transactions of at most a
 * few thousand events (compact_events() in sql/002_control.sql).  Every
 * instance runs it; an advisory lock in the function lets one work at a
 * time.
 *
 * @locality its own thread.
 */
#ifndef SC_RETENTION_H
#define SC_RETENTION_H

#include <stddef.h>

struct sc_config;
struct sc_retention;

struct sc_retention *sc_retention_start(const struct sc_config *cfg, char *err, size_t errsize);
void sc_retention_stop(struct sc_retention *r);

#endif
