-- 005_lease_assignment.sql - partitions shared through leases alone
-- ("assignment": "lease"), the instance registry, and operator control of who
-- owns what.
--
--   * instances: one row per sidecar process and pipeline, renewed together
--     with that process's leases; a live row (expires_at > now()) is a live
--     instance.  It lets lease-mode instances count each other (fair share =
--     ceil(partitions / live instances)) and lets a second process that was
--     given the same instance_id refuse to start (both modes);
--   * leases gain pinned_to (an operator's pin), and handoff_to /
--     handoff_reason / handoff_at: a request that the owner hand the
--     partition over (balance, move, pin) and, once it released it, the
--     reservation that lets only that instance take it;
--   * lease_epochs: every acquisition takes its epoch from this sequence, so
--     an epoch never repeats even when lease and checkpoint rows are both
--     deleted (before, epochs restarted at 1 and a stalled owner holding epoch
--     N stopped being fenced once the epoch climbed back to N);
--   * acquire_leases(), lease_tick(), register_instance(): what the sidecar
--     runs: one lease_tick() per renew interval per instance, whatever the
--     partition count;
--   * pin_partition(), unpin_partition(), move_partition(), drain_instance(),
--     undrain_instance(): operator control, each with its event and a NOTIFY
--     on the control channel so the instances concerned act at once;
--   * control_channel(): "<schema>_control", where operator actions, handoff
--     requests and releases are announced; control_event() now notifies it
--     too, so pause/resume/reset reach a running owner without waiting for
--     its next renewal;
--   * partition_status gains the columns of ownership (appended); the view
--     instance_status lists the instances.
--
-- The protocol, with what a crash at each step leaves behind, is described in
-- docs/design.md ("Lease-coordinated assignment").  Runs with search_path set
-- to the sidecar's schema (see 001_init.sql).

-- ---- the instance registry ----------------------------------------------------------

CREATE TABLE instances (
    pipeline    text        NOT NULL,
    instance_id text        NOT NULL,
    incarnation bigint      NOT NULL,
    assignment  text        NOT NULL CHECK (assignment IN ('kafka-group', 'lease')),
    host        text,
    os_pid      int,
    backend_pid int,
    version     text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    renewed_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    draining    boolean     NOT NULL DEFAULT false,
    partitions  int,
    share       int,
    topics      jsonb,
    PRIMARY KEY (pipeline, instance_id)
);

COMMENT ON TABLE instances IS
    'The sidecar processes of each pipeline. A process registers when it starts and renews its '
    'row in the same statement as its leases (lease_tick); the row is live while expires_at is '
    'in the future. Lease-mode instances divide the partitions by the number of live, '
    'non-draining instances; a second process started with the same instance_id is refused '
    'while this row is live and its session is connected.';
COMMENT ON COLUMN instances.incarnation IS
    'Random number chosen by each process start: tells a restart of the same instance_id apart '
    'from a second process running with it.';
COMMENT ON COLUMN instances.assignment IS
    'The pipeline''s assignment mode in this process: kafka-group or lease.';
COMMENT ON COLUMN instances.backend_pid IS
    'PostgreSQL backend of the process''s lease session: while it is connected, the process is '
    'alive (a crashed process''s session ends at once).';
COMMENT ON COLUMN instances.draining IS
    'Set by drain_instance(): the instance hands all its partitions to the others and takes '
    'none until undrain_instance(), across restarts.';
COMMENT ON COLUMN instances.partitions IS
    'Partitions of the pipeline''s topics as this instance last saw them in Kafka''s metadata.';
COMMENT ON COLUMN instances.share IS
    'Lease mode: this instance''s fair share, ceil(partitions / live non-draining instances).';
COMMENT ON COLUMN instances.topics IS
    'Partition count per topic as this instance last saw it, e.g. {"orders": 12}.';

-- ---- leases: pins, handoffs, and epochs from a sequence --------------------------------------

ALTER TABLE leases ADD COLUMN pinned_to text;
ALTER TABLE leases ADD COLUMN handoff_to text;
ALTER TABLE leases ADD COLUMN handoff_reason text
    CHECK (handoff_reason IN ('balance', 'move', 'pin'));
ALTER TABLE leases ADD COLUMN handoff_at timestamptz;

COMMENT ON COLUMN leases.pinned_to IS
    'Lease mode: pin_partition() set it; while that instance is live it owns the partition.';
COMMENT ON COLUMN leases.handoff_to IS
    'Lease mode: while the lease is live, a request that the owner hand the partition to this '
    'instance; once released, a reservation: only this instance may take it (for one lease TTL).';
COMMENT ON COLUMN leases.handoff_reason IS
    'Why the handoff was asked: balance (an instance below its share), move '
    '(move_partition()), pin (pin_partition()).';
COMMENT ON COLUMN leases.handoff_at IS
    'When the handoff was asked for, or the reservation made.';

CREATE SEQUENCE lease_epochs AS bigint;
SELECT setval('lease_epochs',
              greatest(coalesce((SELECT max(epoch) FROM leases), 0),
                       coalesce((SELECT max(epoch) FROM checkpoints), 0)) + 1, false);

COMMENT ON SEQUENCE lease_epochs IS
    'Source of lease epochs: an acquisition takes the greater of its next value and one more '
    'than the lease''s and the checkpoint''s epochs, so an epoch is never handed out twice.';

-- ---- channels and events -------------------------------------------------------------------

-- The channel on which owners hear of operator actions, handoff requests and releases.
CREATE FUNCTION control_channel() RETURNS text
    LANGUAGE sql STABLE SET search_path FROM CURRENT
    AS $$ SELECT current_schema() || '_control' $$;

COMMENT ON FUNCTION control_channel() IS
    'The LISTEN/NOTIFY channel on which running sidecars hear of operator actions, handoff '
    'requests and releases, e.g. sidecar_control.';

-- Announces a change on the control channel: {pipeline, topic, partition, action}.
CREATE FUNCTION control_notify(p_pipeline text, p_topic text, p_partition int, p_action text,
                               p_instance text DEFAULT NULL)
    RETURNS void
    LANGUAGE sql SET search_path FROM CURRENT
AS $$
    SELECT pg_notify(control_channel(),
                     json_build_object('pipeline', p_pipeline, 'topic', p_topic,
                                       'partition', p_partition, 'action', p_action,
                                       'instance', p_instance)::text)
$$;

-- Operator events (reset, pause, resume, and the actions below) now also reach the owner at
-- once on the control channel.
CREATE OR REPLACE FUNCTION control_event(p_pipeline text, p_topic text, p_partition int,
                                         p_kind text, p_epoch bigint, p_first bigint,
                                         p_write bigint, p_detail jsonb)
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
    PERFORM control_notify(p_pipeline, p_topic, p_partition,
                           coalesce(p_detail ->> 'action', p_kind), p_detail ->> 'instance');
    RETURN v_id;
END
$$;

-- ---- registering an instance ---------------------------------------------------------------

-- Whether the process that registered row i is still connected.
CREATE FUNCTION instance_connected(p_backend_pid int)
    RETURNS boolean
    LANGUAGE sql STABLE SET search_path FROM CURRENT
AS $$
    SELECT p_backend_pid IS NOT NULL
       AND (p_backend_pid = pg_backend_pid()
            OR EXISTS (SELECT 1 FROM pg_stat_activity a
                        WHERE a.pid = p_backend_pid
                          AND a.application_name LIKE 'kafka-sidecar/%'))
$$;

-- Registers (or re-registers) a process for a pipeline.  Refused, returning the holder, while
-- another incarnation's row is live and its session connected: a second process with the same
-- instance_id.  A crashed predecessor's session is gone, so a restart is never refused.
CREATE FUNCTION register_instance(p_pipeline text, p_instance text, p_incarnation bigint,
                                  p_assignment text, p_ttl_ms bigint, p_host text, p_os_pid int,
                                  p_version text)
    RETURNS TABLE (registered boolean, holder_host text, holder_os_pid int,
                   holder_started_at timestamptz, holder_expires_ms bigint, draining boolean)
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    i instances;
BEGIN
    INSERT INTO instances AS r (pipeline, instance_id, incarnation, assignment, host, os_pid,
                                backend_pid, version, started_at, renewed_at, expires_at)
    VALUES (p_pipeline, p_instance, p_incarnation, p_assignment, p_host, p_os_pid,
            pg_backend_pid(), p_version, now(), now(),
            now() + make_interval(secs => p_ttl_ms / 1000.0))
    ON CONFLICT (pipeline, instance_id) DO UPDATE
       SET incarnation = EXCLUDED.incarnation, assignment = EXCLUDED.assignment,
           host = EXCLUDED.host, os_pid = EXCLUDED.os_pid, backend_pid = EXCLUDED.backend_pid,
           version = EXCLUDED.version, started_at = now(), renewed_at = now(),
           expires_at = EXCLUDED.expires_at, partitions = NULL, share = NULL, topics = NULL
     WHERE r.incarnation = EXCLUDED.incarnation OR r.expires_at <= now()
        OR NOT instance_connected(r.backend_pid)
    RETURNING * INTO i;
    IF FOUND THEN
        RETURN QUERY SELECT true, NULL::text, NULL::int, NULL::timestamptz, NULL::bigint,
                            i.draining;
        RETURN;
    END IF;
    SELECT * INTO i FROM instances WHERE pipeline = p_pipeline AND instance_id = p_instance;
    RETURN QUERY SELECT false, i.host, i.os_pid, i.started_at,
                        (extract(epoch FROM (i.expires_at - now())) * 1000)::bigint, i.draining;
END
$$;

COMMENT ON FUNCTION register_instance(text, text, bigint, text, bigint, text, int, text) IS
    'Called by a sidecar at start: registers the process, or refuses (registered = false, '
    'naming the holder) while another live, connected process holds the same instance_id in '
    'the pipeline.';

-- ---- acquiring leases ----------------------------------------------------------------------

-- Locks the pipeline's lease rows of (p_topics[i], p_partitions[i]) in (topic, partition)
-- order and returns those it locked: every statement that locks several lease rows goes
-- through here, so two of them never wait for each other in a cycle (a deadlock).  Rows
-- locked by another session are skipped (the caller reports them busy), never waited for.
-- The locks last until the caller's transaction ends.
CREATE FUNCTION lock_lease_rows(p_pipeline text, p_topics text[], p_partitions int[],
                                OUT o_topics text[], OUT o_partitions int[])
    LANGUAGE sql SET search_path FROM CURRENT
AS $$
    SELECT array_agg(k.topic), array_agg(k.partition)
      FROM (SELECT l.topic, l.partition FROM leases l
             WHERE l.pipeline = p_pipeline
               AND (l.topic, l.partition) IN (SELECT * FROM unnest(p_topics, p_partitions))
             ORDER BY l.topic, l.partition
               FOR UPDATE SKIP LOCKED) k;
$$;

-- Tries to take the leases of the given partitions, in one transaction.  A lease can be taken
-- when it is free, expired or released (unless reserved for another live instance by a
-- handoff), or held by p_owner itself (a restart, or re-reading after an operator change).
-- A lease or checkpoint row locked by another session (an operator's open transaction, a
-- stalled instance) is skipped, never waited for: only its own partition is delayed
-- (busy = true; the caller tries again).  The holder reported for a lease not taken is read
-- from the locked row, so it is never stale.  Every acquisition raises the epoch (from
-- lease_epochs) and writes it into the checkpoint row, with a 'lease' event.
CREATE FUNCTION acquire_leases(p_pipeline text, p_owner text, p_ttl_ms bigint, p_topics text[],
                               p_partitions int[], p_events_channel text)
    RETURNS TABLE (acquired boolean, topic text, partition int, epoch bigint,
                   committed_offset bigint, committed_write_offset bigint,
                   pending_first_offset bigint, pending_last_offset bigint, pending_count int,
                   pending_checksum bigint, pending_write_offset bigint, state text, error text,
                   paused boolean, control_seq bigint, holder text, holder_ms bigint,
                   busy boolean)
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    v_ttl interval := make_interval(secs => p_ttl_ms / 1000.0);
    v_lt text[];
    v_lp int[];
    v_ct text[];
    v_cp int[];
    v_lock_timeout text;
    v_t text;
    v_p int;
BEGIN
    -- The rows must exist to be locked.  ON CONFLICT DO NOTHING does not wait for a row that
    -- exists, even a locked one, but it does wait for a row another transaction is inserting:
    -- briefly, then one row at a time, leaving out the ones still being inserted (busy below).
    v_lock_timeout := current_setting('lock_timeout');
    PERFORM set_config('lock_timeout', '50ms', true);
    BEGIN
        INSERT INTO leases (pipeline, topic, partition)
        SELECT DISTINCT p_pipeline, r.t, r.p FROM unnest(p_topics, p_partitions) AS r(t, p)
        ON CONFLICT DO NOTHING;
        INSERT INTO checkpoints (pipeline, topic, partition)
        SELECT DISTINCT p_pipeline, r.t, r.p FROM unnest(p_topics, p_partitions) AS r(t, p)
        ON CONFLICT DO NOTHING;
    EXCEPTION WHEN lock_not_available THEN
        FOR v_t, v_p IN SELECT DISTINCT * FROM unnest(p_topics, p_partitions) LOOP
            BEGIN
                INSERT INTO leases (pipeline, topic, partition) VALUES (p_pipeline, v_t, v_p)
                ON CONFLICT DO NOTHING;
                INSERT INTO checkpoints (pipeline, topic, partition)
                VALUES (p_pipeline, v_t, v_p) ON CONFLICT DO NOTHING;
            EXCEPTION WHEN lock_not_available THEN
                NULL;
            END;
        END LOOP;
    END;
    PERFORM set_config('lock_timeout', v_lock_timeout, true);

    -- Lock order everywhere: the lease row, then the checkpoint row.
    SELECT * INTO v_lt, v_lp FROM lock_lease_rows(p_pipeline, p_topics, p_partitions);
    SELECT array_agg(k.topic), array_agg(k.partition) INTO v_ct, v_cp
      FROM (SELECT c.topic, c.partition FROM checkpoints c
             WHERE c.pipeline = p_pipeline
               AND (c.topic, c.partition) IN (SELECT * FROM unnest(v_lt, v_lp))
             ORDER BY c.topic, c.partition
               FOR UPDATE SKIP LOCKED) k;

    RETURN QUERY
    WITH mine AS (
        SELECT * FROM unnest(v_ct, v_cp) AS m(topic, partition)),
    got AS (
        UPDATE leases l
           SET owner = p_owner,
               epoch = greatest(nextval('lease_epochs'), l.epoch + 1, c.epoch + 1),
               acquired_at = now(), renewed_at = now(), expires_at = now() + v_ttl,
               -- a pending request stays with a re-acquiring owner; a reservation is used up
               handoff_to = CASE WHEN l.owner = p_owner AND l.expires_at > now()
                                 THEN l.handoff_to END,
               handoff_reason = CASE WHEN l.owner = p_owner AND l.expires_at > now()
                                     THEN l.handoff_reason END,
               handoff_at = CASE WHEN l.owner = p_owner AND l.expires_at > now()
                                 THEN l.handoff_at END
          FROM checkpoints c, mine
         WHERE l.pipeline = p_pipeline AND l.topic = mine.topic AND l.partition = mine.partition
           AND c.pipeline = p_pipeline AND c.topic = mine.topic AND c.partition = mine.partition
           AND ((l.owner = p_owner AND l.expires_at > now())
                OR ((l.expires_at IS NULL OR l.expires_at <= now())
                    AND (l.handoff_to IS NULL OR l.handoff_to = p_owner
                         OR l.handoff_at <= now() - v_ttl
                         OR NOT EXISTS (SELECT 1 FROM instances i
                                         WHERE i.pipeline = p_pipeline
                                           AND i.instance_id = l.handoff_to
                                           AND i.expires_at > now()))))
        RETURNING l.topic, l.partition, l.epoch),
    cp AS (
        UPDATE checkpoints c SET epoch = got.epoch, updated_at = now()
          FROM got
         WHERE c.pipeline = p_pipeline AND c.topic = got.topic AND c.partition = got.partition
        RETURNING c.*),
    e AS (
        INSERT INTO events (pipeline, topic, partition, kind, epoch, owner, first_offset,
                            last_offset, write_offset, detail)
        SELECT p_pipeline, cp.topic, cp.partition, 'lease', cp.epoch, p_owner,
               cp.committed_offset, NULL, cp.committed_write_offset,
               jsonb_build_object('action', 'acquire',
                                  'pending', cp.pending_first_offset IS NOT NULL)
          FROM cp
        RETURNING id),
    n AS (
        SELECT pg_notify(p_events_channel,
                         json_build_object('id', max(e.id), 'pipeline', p_pipeline)::text)
          FROM e
        HAVING p_events_channel IS NOT NULL AND count(*) > 0)
    SELECT true, cp.topic, cp.partition, cp.epoch, cp.committed_offset,
           cp.committed_write_offset, cp.pending_first_offset, cp.pending_last_offset,
           cp.pending_count, cp.pending_checksum, cp.pending_write_offset, cp.state, cp.error,
           cp.paused, cp.control_seq, NULL::text, NULL::bigint, false
      FROM cp, (SELECT count(*) FROM n) AS _n
    UNION ALL
    -- Locked by us (both rows) but not ours to take: the holder (or the instance it is
    -- reserved for), as the locked row has it now.
    SELECT false, l.topic, l.partition, l.epoch, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, NULL, NULL,
           CASE WHEN l.expires_at > now() THEN l.owner ELSE l.handoff_to END,
           CASE WHEN l.expires_at > now()
                THEN (extract(epoch FROM (l.expires_at - now())) * 1000)::bigint
                ELSE greatest((extract(epoch FROM (l.handoff_at + v_ttl - now())) * 1000)::bigint,
                              0) END,
           false
      FROM leases l, unnest(v_ct, v_cp) AS k(topic, partition)
     WHERE l.pipeline = p_pipeline AND l.topic = k.topic AND l.partition = k.partition
       AND (k.topic, k.partition) NOT IN (SELECT g.topic, g.partition FROM got g)
    UNION ALL
    -- Locked by another session: try again later.
    SELECT false, r.t, r.p, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, NULL, true
      FROM (SELECT DISTINCT * FROM unnest(p_topics, p_partitions)) AS r(t, p)
     WHERE (r.t, r.p) NOT IN (SELECT * FROM unnest(coalesce(v_ct, '{}'), coalesce(v_cp, '{}')));
END
$$;

COMMENT ON FUNCTION acquire_leases(text, text, bigint, text[], int[], text) IS
    'Called by the sidecar: takes the leases of the given partitions that are free, expired, '
    'released or its own, skipping rows locked by other sessions (busy). See docs/design.md.';

-- ---- the renewal tick ----------------------------------------------------------------------

-- One call per renew interval per instance, whatever the partition count: renews the
-- instance's registration and the leases it holds (only while they are live: an expired lease
-- is no longer renewed, it must be acquired again), and answers, as rows of kind
--   'self'     the registration: live = still ours (false when another incarnation holds the
--              id); busy = its row is locked by another session and was not renewed this time
--   'held'     each lease asked to renew: live = renewed; owner/epoch as they are now;
--              control_seq, pinned_to and the handoff request on it; busy = still live but
--              locked by another session (an operator's open transaction, a stalled
--              instance's request): not renewed this time, still ours; the caller asks again
--              soon and does not extend its own validity for it
--   'lease'    (p_full) every lease of the pipeline: owner while live, pin, handoff
--   'instance' (p_full) every live instance of the pipeline: owner = instance_id,
--              epoch = leases it holds, live = eligible (lease mode, not draining, and it
--              sees partitions in the metadata: one that cannot reach Kafka takes no share),
--              control_seq = 1 while it is drained
-- A locked row is never waited for: one open transaction on one row must not stop the
-- instance from renewing everything else (its leases would all lapse).
CREATE FUNCTION lease_tick(p_pipeline text, p_instance text, p_incarnation bigint,
                           p_assignment text, p_ttl_ms bigint, p_topics text[],
                           p_partitions int[], p_epochs bigint[], p_known int, p_share int,
                           p_topic_counts jsonb, p_full boolean)
    RETURNS TABLE (kind text, topic text, partition int, owner text, epoch bigint,
                   live boolean, control_seq bigint, pinned_to text, handoff_to text,
                   handoff_reason text, handoff_ms bigint, held_ms bigint, busy boolean)
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    v_ttl interval := make_interval(secs => p_ttl_ms / 1000.0);
    v_ok boolean;
    v_busy boolean := false;
    v_inc bigint;
    v_lt text[];
    v_lp int[];
BEGIN
    PERFORM 1 FROM instances i WHERE i.pipeline = p_pipeline AND i.instance_id = p_instance
        FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        -- Missing, or locked by another session (drain_instance() in an open transaction):
        -- still ours if it names this incarnation; renewed at a later tick.
        SELECT i.incarnation INTO v_inc FROM instances i
         WHERE i.pipeline = p_pipeline AND i.instance_id = p_instance;
        v_busy := FOUND;
        v_ok := FOUND AND v_inc = p_incarnation;
    END IF;
    UPDATE instances i
       SET renewed_at = now(), expires_at = now() + v_ttl, backend_pid = pg_backend_pid(),
           incarnation = p_incarnation, assignment = p_assignment,
           partitions = p_known, share = p_share, topics = coalesce(p_topic_counts, i.topics)
     WHERE i.pipeline = p_pipeline AND i.instance_id = p_instance AND NOT v_busy
       AND (i.incarnation = p_incarnation OR i.expires_at <= now());
    IF NOT v_busy THEN
        v_ok := FOUND;
    END IF;
    RETURN QUERY SELECT 'self'::text, NULL::text, NULL::int, p_instance, p_incarnation, v_ok,
                        NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::bigint,
                        NULL::bigint, v_busy;
    IF NOT v_ok THEN
        RETURN;  -- another process holds this instance_id: renew nothing
    END IF;

    -- Lock the lease rows first, in order (lock_lease_rows); locked ones are busy.
    SELECT * INTO v_lt, v_lp FROM lock_lease_rows(p_pipeline, p_topics, p_partitions);

    RETURN QUERY
    WITH req AS (
        SELECT * FROM unnest(p_topics, p_partitions, p_epochs) AS r(topic, partition, epoch)),
    renewed AS (
        UPDATE leases l SET renewed_at = now(), expires_at = now() + v_ttl
          FROM req
         WHERE l.pipeline = p_pipeline AND l.topic = req.topic AND l.partition = req.partition
           AND l.epoch = req.epoch AND l.owner = p_instance AND l.expires_at > now()
           AND (req.topic, req.partition) IN (SELECT * FROM unnest(v_lt, v_lp))
        RETURNING l.topic, l.partition)
    SELECT 'held'::text, req.topic, req.partition, l.owner, l.epoch,
           EXISTS (SELECT 1 FROM renewed w WHERE w.topic = req.topic
                                             AND w.partition = req.partition),
           c.control_seq, l.pinned_to, l.handoff_to, l.handoff_reason,
           (extract(epoch FROM (now() - l.handoff_at)) * 1000)::bigint, NULL::bigint,
           l.expires_at > now()
               AND (req.topic, req.partition) NOT IN (SELECT * FROM unnest(coalesce(v_lt, '{}'),
                                                                          coalesce(v_lp, '{}')))
      FROM req
      LEFT JOIN leases l
        ON l.pipeline = p_pipeline AND l.topic = req.topic AND l.partition = req.partition
      LEFT JOIN checkpoints c
        ON c.pipeline = p_pipeline AND c.topic = req.topic AND c.partition = req.partition;

    IF NOT p_full THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT 'lease'::text, l.topic, l.partition,
           CASE WHEN l.expires_at > now() THEN l.owner END, l.epoch, l.expires_at > now(),
           NULL::bigint, l.pinned_to, l.handoff_to, l.handoff_reason,
           (extract(epoch FROM (now() - l.handoff_at)) * 1000)::bigint,
           (extract(epoch FROM (now() - l.acquired_at)) * 1000)::bigint, NULL::boolean
      FROM leases l
     WHERE l.pipeline = p_pipeline
       AND (l.expires_at > now() OR l.pinned_to IS NOT NULL OR l.handoff_to IS NOT NULL);
    RETURN QUERY
    SELECT 'instance'::text, NULL::text, NULL::int, i.instance_id,
           (SELECT count(*) FROM leases l WHERE l.pipeline = p_pipeline
               AND l.owner = i.instance_id AND l.expires_at > now()),
           i.assignment = 'lease' AND NOT i.draining AND coalesce(i.partitions, 0) > 0,
           CASE WHEN i.draining THEN 1 ELSE 0 END::bigint, NULL::text, NULL::text,
           NULL::text, NULL::bigint, NULL::bigint, NULL::boolean
      FROM instances i
     WHERE i.pipeline = p_pipeline AND i.expires_at > now();
    -- Forget instances gone for a day (their draining flag with them), unless locked.
    DELETE FROM instances i
     WHERE (i.pipeline, i.instance_id) IN
           (SELECT o.pipeline, o.instance_id FROM instances o
             WHERE o.pipeline = p_pipeline AND o.expires_at < now() - interval '1 day'
               FOR UPDATE SKIP LOCKED);
END
$$;

COMMENT ON FUNCTION lease_tick(text, text, bigint, text, bigint, text[], int[], bigint[], int,
                               int, jsonb, boolean) IS
    'Called by the sidecar once per renew interval: renews its registration and its live '
    'leases and returns what the assignment needs to decide. See docs/design.md.';

-- Asks the live owners of the given partitions to hand them to p_instance (lease mode,
-- reason 'balance'); a partition already asked for, pinned to someone else, or not live is
-- left alone.  Returns the partitions asked for.
CREATE FUNCTION request_handoffs(p_pipeline text, p_instance text, p_topics text[],
                                 p_partitions int[], p_owners text[])
    RETURNS TABLE (topic text, partition int, owner text)
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    v_lt text[];
    v_lp int[];
BEGIN
    -- Lock order: the lease rows in (topic, partition) order, as in lease_tick; a row locked
    -- by another session is left alone (asked for again at the next tick), never waited for.
    SELECT * INTO v_lt, v_lp FROM lock_lease_rows(p_pipeline, p_topics, p_partitions);
    RETURN QUERY
    WITH asked AS (
        UPDATE leases l
           SET handoff_to = p_instance, handoff_reason = 'balance', handoff_at = now()
          FROM unnest(p_topics, p_partitions, p_owners) AS r(topic, partition, owner)
         WHERE l.pipeline = p_pipeline AND l.topic = r.topic AND l.partition = r.partition
           AND (r.topic, r.partition) IN (SELECT * FROM unnest(v_lt, v_lp))
           AND l.owner = r.owner AND l.expires_at > now() AND l.handoff_to IS NULL
           AND (l.pinned_to IS NULL OR l.pinned_to = p_instance)
        RETURNING l.topic, l.partition, l.owner, l.epoch),
    e AS (
        INSERT INTO events (pipeline, topic, partition, kind, epoch, owner, detail)
        SELECT p_pipeline, a.topic, a.partition, 'lease', a.epoch, p_instance,
               jsonb_build_object('action', 'handoff_request', 'from', a.owner,
                                  'reason', 'balance')
          FROM asked a)
    SELECT a.topic, a.partition, a.owner FROM asked a;
    IF FOUND THEN
        PERFORM control_notify(p_pipeline, NULL, NULL, 'handoff_request', p_instance);
    END IF;
END
$$;

-- Refuses handoff requests on leases p_owner holds (clears them), with an event each.
-- p_was[i] is the request as the caller judged it (its handoff_to): a request made since
-- (another instance's, an operator's move) is newer than the decision and stays.  A row
-- locked by another session is left alone (the caller refuses again at its next tick).
CREATE FUNCTION refuse_handoffs(p_pipeline text, p_owner text, p_topics text[],
                                p_partitions int[], p_why text, p_was text[])
    RETURNS int
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    v_n int;
    v_lt text[];
    v_lp int[];
BEGIN
    -- Lock order: the lease rows in (topic, partition) order, as in lease_tick.
    SELECT * INTO v_lt, v_lp FROM lock_lease_rows(p_pipeline, p_topics, p_partitions);
    WITH cleared AS (
        UPDATE leases l SET handoff_to = NULL, handoff_reason = NULL, handoff_at = NULL
          FROM unnest(p_topics, p_partitions, p_was) AS r(topic, partition, was), leases old
         WHERE l.pipeline = p_pipeline AND l.topic = r.topic AND l.partition = r.partition
           AND (r.topic, r.partition) IN (SELECT * FROM unnest(v_lt, v_lp))
           AND old.pipeline = l.pipeline AND old.topic = l.topic AND old.partition = l.partition
           AND l.owner = p_owner AND l.expires_at > now() AND l.handoff_to IS NOT NULL
           AND l.handoff_to = r.was
        RETURNING l.topic, l.partition, l.epoch, old.handoff_to AS was),
    e AS (
        INSERT INTO events (pipeline, topic, partition, kind, epoch, owner, detail)
        SELECT p_pipeline, c.topic, c.partition, 'lease', c.epoch, p_owner,
               jsonb_build_object('action', 'handoff_refused', 'to', c.was, 'why', p_why)
          FROM cleared c
        RETURNING 1)
    SELECT count(*) INTO v_n FROM e;
    RETURN v_n;
END
$$;

-- ---- operator control ------------------------------------------------------------------------

-- Refuses operator assignment actions on a pipeline whose live instances use Kafka's group
-- coordinator, and names of pipelines and instances nobody has heard of.
CREATE FUNCTION control_check_assignment(p_pipeline text, p_instance text, p_what text)
    RETURNS void
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    v_group text;
    v_live text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM instances WHERE pipeline = p_pipeline)
       AND NOT EXISTS (SELECT 1 FROM leases WHERE pipeline = p_pipeline) THEN
        RAISE EXCEPTION '%: unknown pipeline "%" (no sidecar has run it against this schema)',
                        p_what, p_pipeline
            USING ERRCODE = 'undefined_object';
    END IF;
    SELECT string_agg(instance_id, ', ' ORDER BY instance_id) INTO v_group FROM instances
     WHERE pipeline = p_pipeline AND expires_at > now() AND assignment = 'kafka-group';
    IF v_group IS NOT NULL THEN
        RAISE EXCEPTION '%: pipeline "%" runs with "assignment": "kafka-group" (instances %): '
                        'Kafka''s group coordinator decides who consumes what',
                        p_what, p_pipeline, v_group
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'set "assignment": "lease" for the pipeline to control ownership from SQL';
    END IF;
    IF p_instance IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM instances
                        WHERE pipeline = p_pipeline AND instance_id = p_instance) THEN
        SELECT string_agg(instance_id, ', ' ORDER BY instance_id) INTO v_live FROM instances
         WHERE pipeline = p_pipeline AND expires_at > now();
        RAISE EXCEPTION '%: no instance "%" has run pipeline "%"', p_what, p_instance, p_pipeline
            USING ERRCODE = 'undefined_object',
                  HINT = 'live instances: ' || coalesce(v_live, '(none)');
    END IF;
END
$$;

-- Refuses a partition the pipeline's live instances do not see in Kafka's metadata (or, with
-- none running, one that never had a lease or checkpoint row).
CREATE FUNCTION control_check_partition(p_pipeline text, p_topic text, p_partition int,
                                        p_what text)
    RETURNS void
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    v_seen int;
    v_count int;
    v_topics text;
BEGIN
    SELECT count(*), max((topics ->> p_topic)::int),
           string_agg(DISTINCT t.k, ', ')
      INTO v_seen, v_count, v_topics
      FROM instances i LEFT JOIN LATERAL jsonb_object_keys(i.topics) AS t(k) ON true
     WHERE i.pipeline = p_pipeline AND i.expires_at > now() AND i.topics IS NOT NULL;
    IF v_seen > 0 THEN
        IF v_count IS NULL THEN
            RAISE EXCEPTION '%: pipeline "%" does not consume topic "%" (its topics: %)', p_what,
                            p_pipeline, p_topic, v_topics
                USING ERRCODE = 'undefined_object';
        END IF;
        IF p_partition < 0 OR p_partition >= v_count THEN
            RAISE EXCEPTION '%: topic "%" has % partitions (0..%), not %', p_what, p_topic,
                            v_count, v_count - 1, p_partition
                USING ERRCODE = 'undefined_object';
        END IF;
    ELSIF NOT EXISTS (SELECT 1 FROM leases
                       WHERE pipeline = p_pipeline AND topic = p_topic
                         AND partition = p_partition)
          AND NOT EXISTS (SELECT 1 FROM checkpoints
                           WHERE pipeline = p_pipeline AND topic = p_topic
                             AND partition = p_partition) THEN
        RAISE EXCEPTION '%: %[%] of pipeline "%" is unknown here', p_what, p_topic, p_partition,
                        p_pipeline
            USING ERRCODE = 'undefined_object',
                  HINT = 'no instance of the pipeline is running to check it against Kafka';
    END IF;
END
$$;

CREATE FUNCTION pin_partition(p_pipeline text, p_topic text, p_partition int, p_instance text)
    RETURNS leases
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    l leases;
BEGIN
    PERFORM control_check_assignment(p_pipeline, p_instance, 'pin_partition');
    PERFORM control_check_partition(p_pipeline, p_topic, p_partition, 'pin_partition');
    INSERT INTO leases (pipeline, topic, partition, pinned_to)
    VALUES (p_pipeline, p_topic, p_partition, p_instance)
    ON CONFLICT (pipeline, topic, partition) DO UPDATE SET pinned_to = EXCLUDED.pinned_to
    RETURNING * INTO l;
    PERFORM control_event(p_pipeline, p_topic, p_partition, 'lease', l.epoch, NULL, NULL,
                          jsonb_build_object('action', 'pin', 'instance', p_instance));
    RETURN l;
END
$$;

COMMENT ON FUNCTION pin_partition(text, text, int, text) IS
    'Lease mode: p_instance owns the partition whenever it is live (its current owner hands it '
    'over at once); other instances never take it from a live p_instance. unpin_partition() '
    'undoes it.';

CREATE FUNCTION unpin_partition(p_pipeline text, p_topic text, p_partition int)
    RETURNS leases
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    l leases;
BEGIN
    PERFORM control_check_assignment(p_pipeline, NULL, 'unpin_partition');
    UPDATE leases SET pinned_to = NULL
     WHERE pipeline = p_pipeline AND topic = p_topic AND partition = p_partition
    RETURNING * INTO l;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unpin_partition: %[%] of pipeline "%" has no lease row', p_topic,
                        p_partition, p_pipeline
            USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM control_event(p_pipeline, p_topic, p_partition, 'lease', l.epoch, NULL, NULL,
                          jsonb_build_object('action', 'unpin'));
    RETURN l;
END
$$;

COMMENT ON FUNCTION unpin_partition(text, text, int) IS
    'Removes a pin: the partition stays where it is, and balancing may move it again.';

CREATE FUNCTION move_partition(p_pipeline text, p_topic text, p_partition int,
                               p_to_instance text)
    RETURNS leases
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    l leases;
    i instances;
BEGIN
    PERFORM control_check_assignment(p_pipeline, p_to_instance, 'move_partition');
    SELECT * INTO i FROM instances
     WHERE pipeline = p_pipeline AND instance_id = p_to_instance;
    IF i.expires_at <= now() OR i.draining THEN
        RAISE EXCEPTION 'move_partition: instance "%" is %', p_to_instance,
                        CASE WHEN i.draining THEN 'draining' ELSE 'not running' END
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT * INTO l FROM leases
     WHERE pipeline = p_pipeline AND topic = p_topic AND partition = p_partition FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'move_partition: %[%] of pipeline "%" has no lease row', p_topic,
                        p_partition, p_pipeline
            USING ERRCODE = 'undefined_object';
    END IF;
    IF l.pinned_to IS NOT NULL AND l.pinned_to <> p_to_instance THEN
        RAISE EXCEPTION 'move_partition: %[%] is pinned to "%"', p_topic, p_partition,
                        l.pinned_to
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'unpin_partition() first, or pin it to "' || p_to_instance || '"';
    END IF;
    IF l.owner = p_to_instance AND l.expires_at > now() THEN
        RAISE NOTICE 'move_partition: "%" owns %[%] already', p_to_instance, p_topic,
                     p_partition;
        RETURN l;
    END IF;
    -- Live owner: it hands the partition over after its batch; free: reserved for the target.
    UPDATE leases SET handoff_to = p_to_instance, handoff_reason = 'move', handoff_at = now()
     WHERE pipeline = p_pipeline AND topic = p_topic AND partition = p_partition
    RETURNING * INTO l;
    PERFORM control_event(p_pipeline, p_topic, p_partition, 'lease', l.epoch, NULL, NULL,
                          jsonb_build_object('action', 'move', 'instance', p_to_instance,
                                             'from', CASE WHEN l.expires_at > now()
                                                          THEN l.owner END));
    RETURN l;
END
$$;

COMMENT ON FUNCTION move_partition(text, text, int, text) IS
    'Lease mode: asks the owner to hand the partition to p_to_instance (a live instance) after '
    'the batch in flight; one-shot: balancing may later even out the counts again (pin it to '
    'keep it there).';

CREATE FUNCTION drain_instance(p_pipeline text, p_instance text, p_drain boolean DEFAULT true)
    RETURNS instances
    LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    i instances;
BEGIN
    PERFORM control_check_assignment(p_pipeline, p_instance,
                                     CASE WHEN p_drain THEN 'drain_instance'
                                          ELSE 'undrain_instance' END);
    UPDATE instances SET draining = p_drain
     WHERE pipeline = p_pipeline AND instance_id = p_instance
    RETURNING * INTO i;
    IF p_drain AND NOT EXISTS (SELECT 1 FROM instances o
                                WHERE o.pipeline = p_pipeline AND o.instance_id <> p_instance
                                  AND o.expires_at > now() AND NOT o.draining
                                  AND o.assignment = 'lease'
                                  AND coalesce(o.partitions, 0) > 0) THEN
        RAISE WARNING 'no other instance of pipeline "%" can take the partitions of "%" (none '
                      'is running undrained and seeing the topics): the pipeline stops '
                      'consuming until one starts or "%" is undrained', p_pipeline, p_instance,
                      p_instance;
    END IF;
    PERFORM control_event(p_pipeline, NULL, NULL, 'lease', NULL, NULL, NULL,
                          jsonb_build_object('action', CASE WHEN p_drain THEN 'drain'
                                                            ELSE 'undrain' END,
                                             'instance', p_instance));
    RETURN i;
END
$$;

CREATE FUNCTION undrain_instance(p_pipeline text, p_instance text)
    RETURNS instances
    LANGUAGE sql SET search_path FROM CURRENT
AS $$ SELECT drain_instance(p_pipeline, p_instance, false) $$;

COMMENT ON FUNCTION drain_instance(text, text, boolean) IS
    'Lease mode: the instance hands all its partitions to the others (each after its batch in '
    'flight) and then idles, also across restarts, until undrain_instance(). For rolling '
    'deploys and taking a host out of rotation. Draining the last instance that could consume '
    'stops the pipeline: it is done, with a WARNING.';
COMMENT ON FUNCTION undrain_instance(text, text) IS
    'Lets a drained instance take partitions again.';

-- ---- views -----------------------------------------------------------------------------------

-- partition_status gains who may own what (appended after 004's dead_letters: existing queries
-- keep working).
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
       -- so its lag is unknown rather than a number that looks current (004_operator.sql).
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
           AND d.status = 'new') AS dead_letters,
       coalesce(oi.assignment,
                (SELECT min(a.assignment) FROM instances a
                  WHERE a.pipeline = c.pipeline AND a.expires_at > now())) AS assignment,
       l.pinned_to,
       l.handoff_to,
       l.handoff_reason,
       oi.share AS owner_share,
       (SELECT count(*) FROM leases o
         WHERE o.pipeline = c.pipeline AND o.owner = l.owner AND o.expires_at > now()
           AND l.expires_at > now())::int AS owner_partitions,
       oi.draining AS owner_draining
  FROM checkpoints c
  LEFT JOIN leases l
    ON l.pipeline = c.pipeline AND l.topic = c.topic AND l.partition = c.partition
  LEFT JOIN partition_stats s
    ON s.pipeline = c.pipeline AND s.topic = c.topic AND s.partition = c.partition
  LEFT JOIN instances oi
    ON oi.pipeline = l.pipeline AND oi.instance_id = l.owner AND oi.expires_at > now()
       AND l.expires_at > now();

COMMENT ON COLUMN partition_status.assignment IS
    'kafka-group or lease: the mode of the owner, else of the pipeline''s live instances.';
COMMENT ON COLUMN partition_status.pinned_to IS
    'Lease mode: the instance the partition is pinned to (pin_partition()).';
COMMENT ON COLUMN partition_status.handoff_to IS
    'Lease mode: a handoff in progress to this instance (requested, or released and reserved).';
COMMENT ON COLUMN partition_status.owner_share IS
    'Lease mode: the live owner''s fair share (ceil(partitions / live instances)).';
COMMENT ON COLUMN partition_status.owner_partitions IS
    'How many partitions of the pipeline the live owner holds.';

CREATE VIEW instance_status AS
SELECT i.pipeline,
       i.instance_id,
       i.assignment,
       i.expires_at > now() AS live,
       i.draining,
       (SELECT count(*) FROM leases l
         WHERE l.pipeline = i.pipeline AND l.owner = i.instance_id
           AND l.expires_at > now())::int AS owned,
       i.share,
       i.partitions,
       i.host,
       i.os_pid,
       i.version,
       i.started_at,
       i.renewed_at,
       i.expires_at
  FROM instances i;

COMMENT ON VIEW instance_status IS
    'The sidecar processes of each pipeline: mode, whether live or draining, how many leases '
    'each holds, and (lease mode) its fair share. What `sidecar status` lists below the '
    'partitions.';
