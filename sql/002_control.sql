-- 002_control.sql - operating the sidecar from SQL, and event retention.
--
--   * reset_checkpoint(), pause_partition(), resume_partition(): operator
--     actions that running sidecars pick up by themselves (they see
--     control_seq change when they renew their leases, and every checkpoint
--     write they make checks the row it expects, so a concurrent change is
--     never written over);
--   * the 'pause', 'resume' and 'notify_mode' event kinds;
--   * compact_events(): consolidates old events into event_history, in
--     small transactions, and records how far history was pruned in
--     event_horizon so a reader holding an older resume token is told its
--     token expired instead of silently missing events.
--
-- Runs with search_path set to the sidecar's schema (see 001_init.sql).

-- ---- operator control -------------------------------------------------------

ALTER TABLE checkpoints ADD COLUMN paused boolean NOT NULL DEFAULT false;
ALTER TABLE checkpoints ADD COLUMN control_seq bigint NOT NULL DEFAULT 0;

COMMENT ON COLUMN checkpoints.paused IS
    'Set by pause_partition(): the owner keeps its lease but delivers nothing until '
    'resume_partition().';
COMMENT ON COLUMN checkpoints.control_seq IS
    'Incremented by every operator action (reset_checkpoint, pause_partition, '
    'resume_partition). The owning sidecar notices the change when it renews its lease and '
    're-reads the row, so the action takes effect without a restart.';

ALTER TABLE events DROP CONSTRAINT events_kind_check;
ALTER TABLE events ADD CONSTRAINT events_kind_check
    CHECK (kind IN ('lease', 'pend', 'commit', 'replay', 'fenced', 'error', 'reset', 'pause',
                    'resume', 'notify_mode'));

-- The channel every event is announced on: "<schema>_events".
CREATE FUNCTION events_channel() RETURNS text
    LANGUAGE sql STABLE SET search_path FROM CURRENT
    AS $$ SELECT current_schema() || '_events' $$;

COMMENT ON FUNCTION events_channel() IS
    'The LISTEN/NOTIFY channel of this schema''s events, e.g. sidecar_events.';

-- Writes an operator event and announces it.
CREATE FUNCTION control_event(p_pipeline text, p_topic text, p_partition int, p_kind text,
                              p_epoch bigint, p_first bigint, p_write bigint, p_detail jsonb)
    RETURNS bigint
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    v_id bigint;
BEGIN
    INSERT INTO events (pipeline, topic, partition, kind, epoch, owner, first_offset,
                        write_offset, detail)
    VALUES (p_pipeline, p_topic, p_partition, p_kind, p_epoch, 'sql:' || session_user, p_first,
            p_write, p_detail)
    RETURNING id INTO v_id;
    PERFORM pg_notify(events_channel(),
                      json_build_object('id', v_id, 'pipeline', p_pipeline, 'topic', p_topic,
                                        'partition', p_partition, 'kind', p_kind)::text);
    RETURN v_id;
END
$$;

-- Refuses while another instance holds a live lease, unless forced.
CREATE FUNCTION control_check_lease(p_pipeline text, p_topic text, p_partition int,
                                    p_force boolean, p_what text)
    RETURNS void
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    l leases;
BEGIN
    -- Lock order: lease row, then checkpoint row, as everywhere else.
    SELECT * INTO l FROM leases
     WHERE pipeline = p_pipeline AND topic = p_topic AND partition = p_partition
       FOR UPDATE;
    IF FOUND AND l.expires_at > now() AND NOT p_force THEN
        RAISE EXCEPTION '% of %[%] (pipeline %) refused: % holds a live lease (epoch %) until %',
                        p_what, p_topic, p_partition, p_pipeline, l.owner, l.epoch, l.expires_at
            USING ERRCODE = 'lock_not_available',
                  HINT = 'stop that instance first, or force it: the running sidecar picks the '
                         'change up by itself';
    END IF;
END
$$;

CREATE FUNCTION reset_checkpoint(p_pipeline text, p_topic text, p_partition int,
                                 p_to_offset bigint, p_force boolean DEFAULT false)
    RETURNS checkpoints
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    c checkpoints;
    v_previous bigint;
BEGIN
    IF p_to_offset IS NULL OR p_to_offset < 0 THEN
        RAISE EXCEPTION 'reset_checkpoint: p_to_offset must be an offset >= 0 (got %)', p_to_offset
            USING HINT = '`sidecar reset --to-offset earliest|latest` resolves those from Kafka';
    END IF;
    PERFORM control_check_lease(p_pipeline, p_topic, p_partition, p_force, 'reset');
    SELECT committed_offset INTO v_previous FROM checkpoints
     WHERE pipeline = p_pipeline AND topic = p_topic AND partition = p_partition FOR UPDATE;
    INSERT INTO checkpoints (pipeline, topic, partition, committed_offset, control_seq)
    VALUES (p_pipeline, p_topic, p_partition, p_to_offset, 1)
    ON CONFLICT (pipeline, topic, partition) DO UPDATE
       SET committed_offset = EXCLUDED.committed_offset,
           pending_first_offset = NULL, pending_last_offset = NULL, pending_count = NULL,
           pending_checksum = NULL, pending_write_offset = NULL, pending_since = NULL,
           state = 'ok', error = NULL,
           control_seq = checkpoints.control_seq + 1, updated_at = now()
    RETURNING * INTO c;
    PERFORM control_event(p_pipeline, p_topic, p_partition, 'reset', c.epoch, p_to_offset,
                          c.committed_write_offset,
                          jsonb_build_object('previous_committed_offset', v_previous,
                                             'force', p_force));
    RETURN c;
END
$$;

COMMENT ON FUNCTION reset_checkpoint(text, text, int, bigint, boolean) IS
    'Moves a partition''s checkpoint to p_to_offset (the next offset to deliver), drops its '
    'pending batch and clears the error state. Refuses while another instance holds a live '
    'lease unless p_force; a running owner picks the change up by itself.';

CREATE FUNCTION pause_partition(p_pipeline text, p_topic text, p_partition int)
    RETURNS checkpoints
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    c checkpoints;
BEGIN
    INSERT INTO checkpoints (pipeline, topic, partition, paused, control_seq)
    VALUES (p_pipeline, p_topic, p_partition, true, 1)
    ON CONFLICT (pipeline, topic, partition) DO UPDATE
       SET paused = true, control_seq = checkpoints.control_seq + 1, updated_at = now()
    RETURNING * INTO c;
    PERFORM control_event(p_pipeline, p_topic, p_partition, 'pause', c.epoch, c.committed_offset,
                          c.committed_write_offset, '{}');
    RETURN c;
END
$$;

COMMENT ON FUNCTION pause_partition(text, text, int) IS
    'Stops delivery of a partition (its owner keeps the lease) until resume_partition().';

CREATE FUNCTION resume_partition(p_pipeline text, p_topic text, p_partition int)
    RETURNS checkpoints
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    c checkpoints;
BEGIN
    UPDATE checkpoints SET paused = false, control_seq = control_seq + 1, updated_at = now()
     WHERE pipeline = p_pipeline AND topic = p_topic AND partition = p_partition
    RETURNING * INTO c;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'resume_partition: no checkpoint for %[%] in pipeline %', p_topic,
                        p_partition, p_pipeline;
    END IF;
    PERFORM control_event(p_pipeline, p_topic, p_partition, 'resume', c.epoch,
                          c.committed_offset, c.committed_write_offset, '{}');
    RETURN c;
END
$$;

COMMENT ON FUNCTION resume_partition(text, text, int) IS
    'Resumes delivery of a partition paused with pause_partition().';

-- partition_status gains the paused flag (appended: existing queries keep working).
CREATE OR REPLACE VIEW partition_status AS
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
       CASE WHEN s.high_watermark IS NOT NULL THEN
           greatest(s.high_watermark - coalesce(c.committed_offset, s.low_watermark, 0), 0)
       END AS lag,
       s.sampled_at AS stats_sampled_at,
       c.state,
       c.error,
       c.updated_at,
       c.paused
  FROM checkpoints c
  LEFT JOIN leases l
    ON l.pipeline = c.pipeline AND l.topic = c.topic AND l.partition = c.partition
  LEFT JOIN partition_stats s
    ON s.pipeline = c.pipeline AND s.topic = c.topic AND s.partition = c.partition;

COMMENT ON COLUMN partition_status.paused IS
    'Delivery paused by pause_partition().';

-- ---- event retention ----------------------------------------------------------

CREATE TABLE event_history (
    pipeline     text        NOT NULL,
    topic        text        NOT NULL,  -- '' for pipeline-wide events
    partition    int         NOT NULL,  -- -1 for pipeline-wide events
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL,
    first_offset bigint,
    last_offset  bigint,
    batches      bigint      NOT NULL DEFAULT 0,
    events       bigint      NOT NULL DEFAULT 0,
    kinds        jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (pipeline, topic, partition, period_start)
);

COMMENT ON TABLE event_history IS
    'Consolidated history of events older than events.retention: one row per partition per '
    'hour with the first and last committed offsets of that hour, the number of committed '
    'batches, the number of events and a count per kind. Individual events (epochs, owners, '
    'details) are not kept past the retention period.';

CREATE TABLE event_horizon (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    pruned_xid xid8,
    pruned_id  bigint,
    pruned_at  timestamptz
);

INSERT INTO event_horizon (singleton) VALUES (true);

COMMENT ON TABLE event_horizon IS
    'Position (xid, id) of the last event removed by compact_events(). Events are removed in '
    'reader order, so a resume token at or after this position is still complete; an older '
    'token has expired.';

CREATE FUNCTION compact_events(p_older_than interval, p_limit int DEFAULT 5000)
    RETURNS bigint
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    v_cutoff timestamptz := now() - p_older_than;
    v_deleted bigint := 0;
    v_xid xid8;
    v_id bigint;
BEGIN
    -- One compactor at a time per schema; the others find nothing to do.
    IF NOT pg_try_advisory_xact_lock(
               hashtextextended('kafka-sidecar:compact:' || current_schema(), 0)) THEN
        RETURN 0;
    END IF;
    -- The oldest events in reader order ((xid, id), finished transactions only), cut at the
    -- first one that is still within the retention period: what is removed is always a
    -- prefix of what readers see, so event_horizon says exactly which tokens expired.
    CREATE TEMP TABLE IF NOT EXISTS compact_victims (LIKE events) ON COMMIT DROP;
    TRUNCATE compact_victims;
    INSERT INTO compact_victims
    SELECT id, xid, at, pipeline, topic, partition, kind, epoch, owner, first_offset,
           last_offset, write_offset, detail
      FROM (SELECT e.*, bool_and(e.at < v_cutoff) OVER (ORDER BY e.xid, e.id) AS old
              FROM (SELECT * FROM events
                     WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
                     ORDER BY xid, id
                     LIMIT p_limit) e) o
     WHERE o.old;
    SELECT count(*) INTO v_deleted FROM compact_victims;
    IF v_deleted = 0 THEN
        RETURN 0;
    END IF;

    INSERT INTO event_history AS h (pipeline, topic, partition, period_start, period_end,
                                    first_offset, last_offset, batches, events, kinds)
    SELECT pipeline, topic, partition, period_start, max(period_end), min(first_offset),
           max(last_offset), sum(batches), sum(n), jsonb_object_agg(kind, n)
      FROM (SELECT pipeline, coalesce(topic, '') AS topic, coalesce(partition, -1) AS partition,
                   date_trunc('hour', at) AS period_start, kind, max(at) AS period_end,
                   min(first_offset) FILTER (WHERE kind IN ('commit', 'replay')) AS first_offset,
                   max(last_offset) FILTER (WHERE kind IN ('commit', 'replay')) AS last_offset,
                   count(*) FILTER (WHERE kind IN ('commit', 'replay')) AS batches,
                   count(*) AS n
              FROM compact_victims
             GROUP BY 1, 2, 3, 4, 5) per_kind
     GROUP BY pipeline, topic, partition, period_start
    ON CONFLICT (pipeline, topic, partition, period_start) DO UPDATE
       SET period_end = greatest(h.period_end, EXCLUDED.period_end),
           first_offset = least(h.first_offset, EXCLUDED.first_offset),
           last_offset = greatest(h.last_offset, EXCLUDED.last_offset),
           batches = h.batches + EXCLUDED.batches,
           events = h.events + EXCLUDED.events,
           kinds = (SELECT jsonb_object_agg(k, coalesce((h.kinds ->> k)::bigint, 0)
                                               + coalesce((EXCLUDED.kinds ->> k)::bigint, 0))
                      FROM (SELECT jsonb_object_keys(h.kinds) AS k
                            UNION SELECT jsonb_object_keys(EXCLUDED.kinds)) keys);

    DELETE FROM events e USING compact_victims v WHERE e.id = v.id;
    SELECT xid, id INTO v_xid, v_id FROM compact_victims ORDER BY xid DESC, id DESC LIMIT 1;
    UPDATE event_horizon
       SET pruned_xid = v_xid, pruned_id = v_id, pruned_at = now()
     WHERE pruned_xid IS NULL OR (pruned_xid, pruned_id) < (v_xid, v_id);
    RETURN v_deleted;
END
$$;

COMMENT ON FUNCTION compact_events(interval, int) IS
    'Moves up to p_limit events older than p_older_than into event_history and deletes them '
    '(the sidecar calls it in the background every events.compact_interval, repeatedly, in '
    'small transactions). Returns how many events it removed.';
