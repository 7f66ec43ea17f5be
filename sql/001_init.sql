-- 001_init.sql - the checkpoint schema: leases, checkpoints, events, partition
-- statistics, dead letters, and the views users query.
--
-- `sidecar migrate` runs this file in one transaction with
-- `SET LOCAL search_path TO <schema>, pg_catalog`, so every name below is
-- unqualified and lands in the configured schema (default "sidecar").  It
-- creates <schema>.schema_migrations itself.  Needs PostgreSQL 13 or later
-- (xid8, pg_current_xact_id()); `sidecar migrate` checks that first.
--
-- Read the result with \d+ <schema>.<table>: every table, view and every
-- column whose meaning is not obvious carries a comment.

-- ---- leases ----------------------------------------------------------------

CREATE TABLE leases (
    pipeline    text        NOT NULL,
    topic       text        NOT NULL,
    partition   int         NOT NULL CHECK (partition >= 0),
    owner       text,
    epoch       bigint      NOT NULL DEFAULT 0,
    acquired_at timestamptz,
    renewed_at  timestamptz,
    expires_at  timestamptz,
    PRIMARY KEY (pipeline, topic, partition)
);

COMMENT ON TABLE leases IS
    'Who owns each partition of each pipeline. A sidecar instance owns a partition while '
    'expires_at is in the future and renews it before then; taking over an expired lease '
    'increments epoch. The epoch is the fencing token: every checkpoint write is conditional '
    'on it, so an old owner that stalled or was partitioned away can never commit.';
COMMENT ON COLUMN leases.owner IS
    'instance_id of the sidecar holding (or last holding) the lease.';
COMMENT ON COLUMN leases.epoch IS
    'Fencing token: incremented on every change of ownership, never decremented.';
COMMENT ON COLUMN leases.expires_at IS
    'The lease is live while expires_at > now(); a released lease has expires_at <= now().';

-- ---- checkpoints -----------------------------------------------------------

CREATE TABLE checkpoints (
    pipeline               text        NOT NULL,
    topic                  text        NOT NULL,
    partition              int         NOT NULL CHECK (partition >= 0),
    committed_offset       bigint      CHECK (committed_offset >= 0),
    committed_write_offset bigint      NOT NULL DEFAULT 0 CHECK (committed_write_offset >= 0),
    pending_first_offset   bigint,
    pending_last_offset    bigint,
    pending_count          int,
    pending_checksum       bigint,
    pending_write_offset   bigint,
    pending_since          timestamptz,
    epoch                  bigint      NOT NULL DEFAULT 0,
    state                  text        NOT NULL DEFAULT 'ok' CHECK (state IN ('ok', 'error')),
    error                  text,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, topic, partition),
    CONSTRAINT checkpoints_pending_all_or_none CHECK (
        num_nulls(pending_first_offset, pending_last_offset, pending_count, pending_checksum,
                  pending_write_offset) IN (0, 5)),
    CONSTRAINT checkpoints_pending_range CHECK (pending_last_offset >= pending_first_offset)
);

COMMENT ON TABLE checkpoints IS
    'Delivery progress of each partition of each pipeline. Before a batch is written to the '
    'sink it is recorded here as pending (offset range, record count, checksum, write offset); '
    'after the sink acknowledged it durably, committed_offset and committed_write_offset '
    'advance and the pending columns are cleared. A new owner that finds a pending batch '
    're-delivers exactly that batch to exactly that write offset first, so a replay '
    'overwrites instead of duplicating.';
COMMENT ON COLUMN checkpoints.committed_offset IS
    'Next Kafka offset to deliver (Kafka''s convention: records 0..99 delivered means 100). '
    'NULL = nothing committed yet; the pipeline''s start_from (earliest / latest) applies.';
COMMENT ON COLUMN checkpoints.committed_write_offset IS
    'Sink position after the last committed batch. file sink: byte offset in the partition''s '
    'file (readers may trust bytes below it); http sink: batch sequence number; postgres sink: '
    'next source offset; stdout sink: line count.';
COMMENT ON COLUMN checkpoints.pending_first_offset IS
    'First Kafka offset of the batch being delivered; NULL when nothing is pending. The '
    'pending_* columns are either all NULL or all set (pending_since excepted).';
COMMENT ON COLUMN checkpoints.pending_last_offset IS
    'Last Kafka offset (inclusive) of the batch being delivered.';
COMMENT ON COLUMN checkpoints.pending_count IS
    'Number of records in the pending batch (may be less than the offset range: compacted '
    'topics and transaction markers leave gaps). Verified on replay.';
COMMENT ON COLUMN checkpoints.pending_checksum IS
    'Checksum of the pending batch''s records, verified on replay: a mismatch (records '
    'deleted by retention, topic recreated) puts the partition in the error state.';
COMMENT ON COLUMN checkpoints.pending_write_offset IS
    'Sink position the pending batch is written at (same unit as committed_write_offset); '
    'a replay writes there again.';
COMMENT ON COLUMN checkpoints.pending_since IS
    'When the pending batch was recorded.';
COMMENT ON COLUMN checkpoints.epoch IS
    'Lease epoch of the last writer; writes are conditional on it (fencing).';
COMMENT ON COLUMN checkpoints.state IS
    '''ok'', or ''error'' when delivery of this partition stopped (replay mismatch, permanent '
    'sink error with on_error = stop); `sidecar reset` clears it.';
COMMENT ON COLUMN checkpoints.error IS
    'Why the partition is in the error state, for a human.';

-- ---- events ----------------------------------------------------------------

CREATE TABLE events (
    id           bigserial   PRIMARY KEY,
    xid          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    at           timestamptz NOT NULL DEFAULT now(),
    pipeline     text        NOT NULL,
    topic        text,
    partition    int,
    kind         text        NOT NULL
                 CHECK (kind IN ('lease', 'pend', 'commit', 'replay', 'fenced', 'error', 'reset')),
    epoch        bigint,
    owner        text,
    first_offset bigint,
    last_offset  bigint,
    write_offset bigint,
    detail       jsonb
);

CREATE INDEX events_xid_id_idx ON events (xid, id);
CREATE INDEX events_partition_idx ON events (pipeline, topic, partition, id);
-- For retention / compaction and recent_events; BRIN because rows arrive in time order.
CREATE INDEX events_at_brin ON events USING brin (at);

COMMENT ON TABLE events IS
    'Every checkpoint and lease change, written in the same transaction as the change, so a '
    'row exists iff the change committed. Do not page through this table by id alone: ids '
    'are assigned at insert, not at commit, so a reader asking for id > last can miss a '
    'lower id whose transaction commits later. Readers order by (xid, id) and only read rows '
    'whose xid is below the xmin horizon of their snapshot '
    '(xid < pg_snapshot_xmin(pg_current_snapshot())): every transaction below it has ended, '
    'so no earlier row can appear afterwards. The resume token of `sidecar watch` and '
    '/v1/events encodes that position.';
COMMENT ON COLUMN events.xid IS
    'Transaction that wrote the row (64-bit, never wraps). Together with id it gives the '
    'commit-safe order; see the table comment.';
COMMENT ON COLUMN events.at IS
    'Start time of the writing transaction.';
COMMENT ON COLUMN events.kind IS
    'lease: ownership changed; pend: batch recorded as pending; commit: batch committed; '
    'replay: pending batch re-delivered after a takeover or crash; fenced: a write lost its '
    'lease; error: partition entered the error state; reset: checkpoint moved by an operator.';
COMMENT ON COLUMN events.first_offset IS
    'First Kafka offset of the batch concerned (pend, commit, replay).';
COMMENT ON COLUMN events.last_offset IS
    'Last Kafka offset (inclusive) of the batch concerned.';
COMMENT ON COLUMN events.write_offset IS
    'Sink position of the batch (see checkpoints.committed_write_offset for the unit).';
COMMENT ON COLUMN events.detail IS
    'Kind-specific extras (e.g. record count, checksum, error text).';

-- ---- partition_stats -------------------------------------------------------

CREATE TABLE partition_stats (
    pipeline       text        NOT NULL,
    topic          text        NOT NULL,
    partition      int         NOT NULL CHECK (partition >= 0),
    low_watermark  bigint,
    high_watermark bigint,
    sampled_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, topic, partition)
);

COMMENT ON TABLE partition_stats IS
    'Kafka watermarks of each owned partition, sampled periodically by the owning sidecar so '
    'that SQL can compute lag (see partition_status).';
COMMENT ON COLUMN partition_stats.low_watermark IS
    'Oldest offset still in Kafka (log start offset) when sampled.';
COMMENT ON COLUMN partition_stats.high_watermark IS
    'Offset the next produced record will get (log end offset) when sampled.';

-- ---- dead_letters ----------------------------------------------------------

CREATE TABLE dead_letters (
    id               bigserial   PRIMARY KEY,
    created_at       timestamptz NOT NULL DEFAULT now(),
    pipeline         text        NOT NULL,
    topic            text        NOT NULL,
    partition        int         NOT NULL,
    "offset"         bigint      NOT NULL,
    envelope         jsonb       NOT NULL,
    key              bytea,
    value            bytea,
    headers          jsonb,
    error            text        NOT NULL,
    http_status      int,
    response_excerpt text,
    attempts         int         NOT NULL DEFAULT 1,
    status           text        NOT NULL DEFAULT 'new'
                     CHECK (status IN ('new', 'redriven', 'discarded')),
    redriven_at      timestamptz,
    UNIQUE (pipeline, topic, partition, "offset")
);

-- `sidecar redrive` looks for the new letters of one pipeline.
CREATE INDEX dead_letters_new_idx ON dead_letters (pipeline, id) WHERE status = 'new';

COMMENT ON TABLE dead_letters IS
    'Records a sink rejected permanently (e.g. HTTP 4xx) under on_error = dead_letter: the '
    'record is kept here and the partition moves on. `sidecar redrive` sends them again.';
COMMENT ON COLUMN dead_letters.envelope IS
    'The record as the sink would have received it (the JSON envelope).';
COMMENT ON COLUMN dead_letters.key IS
    'Raw key bytes (NULL for a null key).';
COMMENT ON COLUMN dead_letters.value IS
    'Raw value bytes (NULL for a tombstone).';
COMMENT ON COLUMN dead_letters.error IS
    'Why the sink rejected the record.';
COMMENT ON COLUMN dead_letters.http_status IS
    'HTTP status of the last attempt (http sink only).';
COMMENT ON COLUMN dead_letters.response_excerpt IS
    'Beginning of the last response body (http sink only).';
COMMENT ON COLUMN dead_letters.attempts IS
    'Delivery attempts so far, redrives included.';
COMMENT ON COLUMN dead_letters.status IS
    'new: waiting; redriven: delivered by `sidecar redrive` (at redriven_at); discarded: '
    'given up by an operator.';

-- ---- views -----------------------------------------------------------------

CREATE VIEW partition_status AS
SELECT c.pipeline,
       c.topic,
       c.partition,
       l.owner,
       l.epoch,
       coalesce(l.expires_at > now(), false) AS lease_live,
       l.expires_at AS lease_expires_at,
       c.committed_offset,
       c.committed_write_offset,
       c.pending_first_offset,
       c.pending_last_offset,
       c.pending_count,
       CASE WHEN c.pending_first_offset IS NOT NULL THEN now() - c.pending_since END
           AS pending_age,
       s.high_watermark,
       -- greatest() ignores NULLs: without the CASE a missing sample would read as lag 0.
       CASE WHEN s.high_watermark IS NOT NULL THEN
           greatest(s.high_watermark - coalesce(c.committed_offset, s.low_watermark, 0), 0)
       END AS lag,
       s.sampled_at AS stats_sampled_at,
       c.state,
       c.error,
       c.updated_at
  FROM checkpoints c
  LEFT JOIN leases l
    ON l.pipeline = c.pipeline AND l.topic = c.topic AND l.partition = c.partition
  LEFT JOIN partition_stats s
    ON s.pipeline = c.pipeline AND s.topic = c.topic AND s.partition = c.partition;

COMMENT ON VIEW partition_status IS
    'One row per checkpoint: the lease (owner, epoch, whether it is live), committed and '
    'pending positions, lag and the error state. This is what `sidecar status` shows.';
COMMENT ON COLUMN partition_status.epoch IS
    'Epoch of the current lease (NULL if the partition was never leased).';
COMMENT ON COLUMN partition_status.lease_live IS
    'Whether the lease has not expired (expires_at > now()).';
COMMENT ON COLUMN partition_status.pending_age IS
    'How long the pending batch has been pending; NULL when nothing is pending.';
COMMENT ON COLUMN partition_status.lag IS
    'Records not yet delivered as of stats_sampled_at: high_watermark - committed_offset '
    '(or - low_watermark before the first commit), never negative; NULL until the owner '
    'sampled the watermarks.';

CREATE VIEW pending AS
SELECT c.pipeline,
       c.topic,
       c.partition,
       c.epoch,
       c.pending_first_offset,
       c.pending_last_offset,
       c.pending_count,
       c.pending_checksum,
       c.pending_write_offset,
       c.pending_since,
       now() - c.pending_since AS pending_age,
       c.committed_offset,
       c.committed_write_offset,
       c.state,
       c.error
  FROM checkpoints c
 WHERE c.pending_first_offset IS NOT NULL
 ORDER BY c.pending_since DESC NULLS LAST, c.pipeline, c.topic, c.partition;

COMMENT ON VIEW pending IS
    'Checkpoints with a batch recorded but not yet committed, newest first. A pending batch '
    'that stays old means a stuck sink or a dead owner whose lease has not been taken over.';

CREATE VIEW recent_events AS
SELECT e.id,
       e.xid,
       e.at,
       e.pipeline,
       e.topic,
       e.partition,
       e.kind,
       e.epoch,
       e.owner,
       e.first_offset,
       e.last_offset,
       e.write_offset,
       e.detail
  FROM events e
 WHERE e.at > now() - interval '24 hours'
 ORDER BY e.id DESC
 LIMIT 1000;

COMMENT ON VIEW recent_events IS
    'The newest events of the last 24 hours (at most 1000), newest first: for a quick look. '
    'Programs that follow events use `sidecar watch` or /v1/events, which are commit-ordered.';
