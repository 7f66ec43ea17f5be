-- 006_reset_bounds.sql - reset_checkpoint() reads the log end as at least what was consumed
--
-- 004_operator.sql's reset_checkpoint() checked the new offset against the log end
-- offset of the owner's last watermark sample (taken every 5 s).  A sample taken just
-- before the latest records arrived refused a reset to an offset the sidecar had already
-- delivered ("past the log end offset 200" with offset 300 committed).  The log reaches at
-- least to the committed offset and past the pending batch, so the bound is the greatest
-- of those and the sample.  Same signature and behaviour otherwise.
--
-- Runs with search_path set to the sidecar's schema (see 001_init.sql).

CREATE OR REPLACE FUNCTION reset_checkpoint(p_pipeline text, p_topic text, p_partition int,
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
    v_end bigint;
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
    -- The log reaches at least as far as what was delivered or is pending: a sample taken
    -- before the latest records arrived must not refuse an offset the sidecar has consumed.
    v_end := greatest(s.high_watermark, c.committed_offset, c.pending_last_offset + 1);
    IF p_to_offset > v_end THEN
        RAISE EXCEPTION 'reset of %[%] (pipeline %) refused: offset % is past the log end offset % '
                        '(sampled at %)', p_topic, p_partition, p_pipeline, p_to_offset,
                        v_end, s.sampled_at
            USING ERRCODE = 'numeric_value_out_of_range',
                  HINT = format('the next record produced gets offset %s; reset to at most that',
                                v_end);
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
