-- 004_operator.sql - safer operator actions, and what `sidecar status` shows.
--
--   * reset_checkpoint() validates before it changes anything and never
--     creates a row: the pipeline and the partition must have a checkpoint
--     (a sidecar owned the partition at least once), and the offset must lie
--     within the partition's log as last sampled from Kafka (log start <=
--     offset <= log end).  It can also set where the sink continues writing
--     (p_write_offset: e.g. 0 for a file sink whose file was deleted).
--   * retry_partition() / retry_errored(): take a partition (all errored
--     partitions of a pipeline) out of the error state while keeping its
--     position and its pending batch, which the owner then replays: for
--     errors whose cause was fixed outside (a wrong URL, a missing table).
--     Event kind 'retry'.
--   * partition_status: lag is NULL (unknown) unless a live lease holds the
--     partition, since only an owner samples the watermarks; and a
--     dead_letters column counts the partition's dead letters waiting for a
--     redrive.
--
-- Runs with search_path set to the sidecar's schema (see 001_init.sql).

-- ---- the 'retry' event kind ---------------------------------------------------

-- Adds 'retry' to whatever kinds the check allows by now (an earlier migration may have added
-- its own), instead of restating the list.
DO $$
DECLARE
    v_def text;
BEGIN
    SELECT pg_get_constraintdef(oid) INTO v_def
      FROM pg_constraint
     WHERE conrelid = 'events'::regclass AND conname = 'events_kind_check';
    IF v_def IS NULL OR v_def NOT LIKE '%ARRAY[%' THEN
        RAISE EXCEPTION 'events_kind_check has an unexpected form: %', v_def;
    END IF;
    IF v_def NOT LIKE '%''retry''%' THEN
        ALTER TABLE events DROP CONSTRAINT events_kind_check;
        EXECUTE 'ALTER TABLE events ADD CONSTRAINT events_kind_check '
                || replace(v_def, 'ARRAY[', 'ARRAY[''retry''::text, ');
    END IF;
END
$$;

-- ---- validation helpers -------------------------------------------------------

-- The checkpoint row of a partition, locked, or an error that says what does exist.
-- Lock order (lease, then checkpoint) is the caller's: it checks the lease first.
CREATE FUNCTION control_find_checkpoint(p_pipeline text, p_topic text, p_partition int,
                                        p_what text)
    RETURNS checkpoints
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    c checkpoints;
    v_known text;
BEGIN
    SELECT * INTO c FROM checkpoints
     WHERE pipeline = p_pipeline AND topic = p_topic AND partition = p_partition
       FOR UPDATE;
    IF FOUND THEN
        RETURN c;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM checkpoints WHERE pipeline = p_pipeline) THEN
        SELECT string_agg(DISTINCT pipeline, ', ' ORDER BY pipeline) INTO v_known
          FROM checkpoints;
        RAISE EXCEPTION '% refused: no pipeline "%" has a checkpoint (pipelines with '
                        'checkpoints: %)', p_what, p_pipeline, coalesce(v_known, 'none')
            USING ERRCODE = 'undefined_object',
                  HINT = 'check the pipeline name; a pipeline has checkpoints once a sidecar '
                         'has run it';
    END IF;
    SELECT string_agg(partition::text, ', ' ORDER BY partition) INTO v_known
      FROM checkpoints WHERE pipeline = p_pipeline AND topic = p_topic;
    RAISE EXCEPTION '% refused: pipeline "%" has no checkpoint for %[%] (its partitions of "%": %)',
                    p_what, p_pipeline, p_topic, p_partition, p_topic, coalesce(v_known, 'none')
        USING ERRCODE = 'undefined_object',
              HINT = 'check the topic and partition; a partition has a checkpoint once a sidecar '
                     'has owned it, and this never creates one';
END
$$;

-- ---- reset_checkpoint ----------------------------------------------------------

-- A new parameter changes the signature, so the old function goes (calls with 4 or 5
-- arguments work as before).
DROP FUNCTION reset_checkpoint(text, text, int, bigint, boolean);

CREATE FUNCTION reset_checkpoint(p_pipeline text, p_topic text, p_partition int,
                                 p_to_offset bigint, p_force boolean DEFAULT false,
                                 p_write_offset bigint DEFAULT NULL)
    RETURNS checkpoints
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    c checkpoints;
    s partition_stats;
    v_previous bigint;
    v_previous_write bigint;
BEGIN
    IF p_to_offset IS NULL OR p_to_offset < 0 THEN
        RAISE EXCEPTION 'reset_checkpoint: p_to_offset must be an offset >= 0 (got %)', p_to_offset
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = '`sidecar reset --to-offset earliest|latest` resolves those from Kafka';
    END IF;
    IF p_write_offset < 0 THEN
        RAISE EXCEPTION 'reset_checkpoint: p_write_offset must be >= 0, or NULL to keep it (got %)',
                        p_write_offset
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM control_check_lease(p_pipeline, p_topic, p_partition, p_force, 'reset');
    c := control_find_checkpoint(p_pipeline, p_topic, p_partition, 'reset');

    -- The offset must lie within the log: what the owner sampled last (`sidecar reset` stores a
    -- fresh sample from Kafka in the same transaction first).
    SELECT * INTO s FROM partition_stats
     WHERE pipeline = p_pipeline AND topic = p_topic AND partition = p_partition;
    IF NOT FOUND OR s.high_watermark IS NULL THEN
        RAISE EXCEPTION 'reset of %[%] (pipeline %) refused: its log start and end offsets are not '
                        'known yet (no watermark sample)', p_topic, p_partition, p_pipeline
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'use `sidecar reset`, which asks Kafka, or wait until the owner has '
                         'sampled the partition (every 5 s)';
    END IF;
    IF p_to_offset > s.high_watermark THEN
        RAISE EXCEPTION 'reset of %[%] (pipeline %) refused: offset % is past the log end offset % '
                        '(sampled at %)', p_topic, p_partition, p_pipeline, p_to_offset,
                        s.high_watermark, s.sampled_at
            USING ERRCODE = 'numeric_value_out_of_range',
                  HINT = format('the next record produced gets offset %s; reset to at most that',
                                s.high_watermark);
    END IF;
    IF s.low_watermark IS NOT NULL AND p_to_offset < s.low_watermark THEN
        RAISE EXCEPTION 'reset of %[%] (pipeline %) refused: offset % is before the log start '
                        'offset % (sampled at %): Kafka no longer has those records',
                        p_topic, p_partition, p_pipeline, p_to_offset, s.low_watermark,
                        s.sampled_at
            USING ERRCODE = 'numeric_value_out_of_range',
                  HINT = format('the oldest record Kafka still has is offset %s', s.low_watermark);
    END IF;

    v_previous := c.committed_offset;
    v_previous_write := c.committed_write_offset;
    UPDATE checkpoints
       SET committed_offset = p_to_offset,
           committed_write_offset = coalesce(p_write_offset, committed_write_offset),
           pending_first_offset = NULL, pending_last_offset = NULL, pending_count = NULL,
           pending_checksum = NULL, pending_write_offset = NULL, pending_since = NULL,
           state = 'ok', error = NULL,
           control_seq = control_seq + 1, updated_at = now()
     WHERE pipeline = p_pipeline AND topic = p_topic AND partition = p_partition
    RETURNING * INTO c;
    PERFORM control_event(p_pipeline, p_topic, p_partition, 'reset', c.epoch, p_to_offset,
                          c.committed_write_offset,
                          jsonb_build_object('previous_committed_offset', v_previous,
                                             'previous_write_offset', v_previous_write,
                                             'force', p_force));
    RETURN c;
END
$$;

COMMENT ON FUNCTION reset_checkpoint(text, text, int, bigint, boolean, bigint) IS
    'Moves a partition''s checkpoint to p_to_offset (the next offset to deliver), drops its '
    'pending batch and clears the error state; p_write_offset (NULL: keep) sets where the sink '
    'continues writing. Refuses an unknown pipeline or partition (it never creates a row), an '
    'offset outside the log as last sampled from Kafka, and a live lease of a running instance '
    'unless p_force; a running owner picks the change up by itself.';

-- ---- retry ---------------------------------------------------------------------

CREATE FUNCTION retry_partition(p_pipeline text, p_topic text, p_partition int)
    RETURNS checkpoints
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    c checkpoints;
    v_error text;
BEGIN
    c := control_find_checkpoint(p_pipeline, p_topic, p_partition, 'retry');
    IF c.state <> 'error' THEN
        RAISE EXCEPTION 'retry of %[%] (pipeline %) refused: it is not in the error state',
                        p_topic, p_partition, p_pipeline
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    v_error := c.error;
    UPDATE checkpoints
       SET state = 'ok', error = NULL, control_seq = control_seq + 1, updated_at = now()
     WHERE pipeline = p_pipeline AND topic = p_topic AND partition = p_partition
    RETURNING * INTO c;
    PERFORM control_event(p_pipeline, p_topic, p_partition, 'retry', c.epoch,
                          coalesce(c.pending_first_offset, c.committed_offset),
                          coalesce(c.pending_write_offset, c.committed_write_offset),
                          jsonb_build_object('error', v_error,
                                             'pending_first_offset', c.pending_first_offset,
                                             'pending_last_offset', c.pending_last_offset));
    RETURN c;
END
$$;

COMMENT ON FUNCTION retry_partition(text, text, int) IS
    'Takes a partition out of the error state keeping its position and its pending batch (the '
    'owner replays it): after fixing the cause outside (a URL, a table). Writes a retry event; '
    'a running owner picks it up by itself.';

CREATE FUNCTION retry_errored(p_pipeline text)
    RETURNS SETOF checkpoints
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    r record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM checkpoints WHERE pipeline = p_pipeline) THEN
        PERFORM control_find_checkpoint(p_pipeline, '', -1, 'retry');
    END IF;
    FOR r IN SELECT topic, partition FROM checkpoints
              WHERE pipeline = p_pipeline AND state = 'error'
              ORDER BY topic, partition
    LOOP
        RETURN NEXT retry_partition(p_pipeline, r.topic, r.partition);
    END LOOP;
END
$$;

COMMENT ON FUNCTION retry_errored(text) IS
    'retry_partition() for every partition of the pipeline in the error state; returns the rows '
    'it changed (none: nothing was in the error state).';

-- ---- partition_status ------------------------------------------------------------

-- Same columns, in the same order; lag needs a live lease, dead_letters is appended.
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
       -- Only an owner samples: an expired or released lease leaves a sample that goes stale,
       -- so its lag is unknown rather than a number that looks current.
       CASE WHEN s.high_watermark IS NOT NULL AND l.expires_at > now() THEN
           greatest(s.high_watermark - coalesce(c.committed_offset, s.low_watermark, 0), 0)
       END AS lag,
       s.sampled_at AS stats_sampled_at,
       c.state,
       c.error,
       c.updated_at,
       c.paused,
       (SELECT count(*) FROM dead_letters d
         WHERE d.pipeline = c.pipeline AND d.topic = c.topic AND d.partition = c.partition
           AND d.status = 'new') AS dead_letters
  FROM checkpoints c
  LEFT JOIN leases l
    ON l.pipeline = c.pipeline AND l.topic = c.topic AND l.partition = c.partition
  LEFT JOIN partition_stats s
    ON s.pipeline = c.pipeline AND s.topic = c.topic AND s.partition = c.partition;

COMMENT ON COLUMN partition_status.lag IS
    'Records not yet delivered as of stats_sampled_at: high_watermark - committed_offset '
    '(or - low_watermark before the first commit), never negative; NULL (unknown) until the '
    'owner sampled the watermarks, and while no live lease holds the partition.';
COMMENT ON COLUMN partition_status.dead_letters IS
    'Dead letters of the partition waiting for a redrive (status new).';
