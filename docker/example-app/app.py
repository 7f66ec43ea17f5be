#!/usr/bin/env python3
"""example-app - a tiny service that receives the kafka sidecar's HTTP sink
and applies every record exactly once, by de-duplicating on Idempotency-Key.

Python 3 standard library only (http.server + sqlite3), so it runs on
python:3-slim or on Debian's python3 and its test runs in CI as is.

The contract it implements (docs/sinks.md, "Receiving from the HTTP sink"):

- One request is one batch: POST (or PUT) /ingest, body = the batch's record
  envelopes as NDJSON (or a JSON array), headers
  `Idempotency-Key: <pipeline>/<topic>/<partition>/<first>-<last>`,
  `X-Sidecar-First-Offset`, `X-Sidecar-Last-Offset`, `X-Sidecar-Epoch`.
- A replay (after a crash, a restart or a takeover) resends the identical
  body under the identical key; only X-Sidecar-Epoch may differ.  The
  receiver must apply it once: it answers 200 again and changes nothing.
- 2xx means "durable": the sidecar commits its checkpoint after it.  408,
  429 and 5xx make the sidecar retry; other 4xx mean "these records are
  bad": the sidecar bisects the batch and dead-letters the records that are
  rejected alone (or stops the partition, per on_error).  401/403/404 stop
  the partition whatever on_error says.

How this receiver answers (see ingest()):

  200 {"status": "stored", ...}     first delivery of the key; applied in one
                                    SQLite transaction, committed (synchronous
                                    FULL) before the answer
  200 {"status": "duplicate", ...}  the key was stored before with the same
                                    body: nothing is applied again
  409 {"error": ...}                conflict: the key was stored before with a
                                    DIFFERENT body, or a record of the batch
                                    (pipeline, topic, partition, offset) was
                                    stored before with different bytes.  The
                                    first version is kept, nothing of the
                                    request is applied, and the sidecar
                                    dead-letters the conflicting records, where
                                    an operator sees them.  Answering 200
                                    would drop data silently; 5xx would make
                                    the sidecar retry forever.
  400 {"error": ...}                a malformed request (no key, bad JSON, a
                                    key that does not match the body)
  401                               APP_TOKEN is set and the bearer token is
                                    missing or wrong
  413 / 411                         body too large / no Content-Length
  503 {"error": ...}                the database is busy: retried

Records are also de-duplicated one by one by (pipeline, topic, partition,
offset), so a batch that overlaps stored records under a new key (after an
operator moved a checkpoint back with `sidecar reset`, say) applies only the
records it has not applied yet.

Environment: APP_LISTEN (default 0.0.0.0:8080), APP_DB (default
/data/app.db), APP_TOKEN (optional bearer token), APP_MAX_BODY_BYTES
(default 67108864), APP_LOG (1: one line per request on stderr, default 1).

NOTE: the SQLite file is this process's own storage.  With several replicas
(Kubernetes), a replay can reach another replica than the first delivery,
so a real service must keep its idempotency keys in storage that every
replica shares (its database), in the same transaction as its own writes.
"""

import hashlib
import json
import os
import re
import signal
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Mapping, NamedTuple, Optional, Tuple

# <pipeline>/<topic>/<partition>/<first>-<last>; pipeline and topic names
# cannot contain "/" (sidecar config rules), so the split is unambiguous.
KEY_RE = re.compile(
    r"^(?P<pipeline>[A-Za-z0-9][A-Za-z0-9._-]*)/(?P<topic>[A-Za-z0-9._-]+)/"
    r"(?P<partition>[0-9]+)/(?P<first>[0-9]+)-(?P<last>[0-9]+)$"
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    idempotency_key TEXT PRIMARY KEY,
    body_sha256     TEXT NOT NULL,
    records         INTEGER NOT NULL,
    epoch           TEXT,
    received_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS records (
    pipeline        TEXT NOT NULL,
    topic           TEXT NOT NULL,
    partition       INTEGER NOT NULL,
    "offset"        INTEGER NOT NULL,
    envelope        BLOB NOT NULL,      -- the record's bytes exactly as received
    idempotency_key TEXT NOT NULL,      -- the batch that applied it
    PRIMARY KEY (pipeline, topic, partition, "offset")
) WITHOUT ROWID;
"""


class BadRequest(Exception):
    """A request this receiver rejects; status is the HTTP answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    raw: bytes  # the envelope's bytes exactly as they arrived
    envelope: dict


class BatchKey(NamedTuple):
    pipeline: str
    topic: str
    partition: int
    first: int
    last: int


class Response(NamedTuple):
    status: int
    body: dict


def parse_idempotency_key(key: Optional[str]) -> BatchKey:
    """Splits `<pipeline>/<topic>/<partition>/<first>-<last>`; BadRequest if malformed."""
    if not key:
        raise BadRequest("missing Idempotency-Key header")
    m = KEY_RE.match(key)
    if not m:
        raise BadRequest("Idempotency-Key %r is not <pipeline>/<topic>/<partition>/<first>-<last>" % key)
    k = BatchKey(m["pipeline"], m["topic"], int(m["partition"]), int(m["first"]), int(m["last"]))
    if k.first > k.last:
        raise BadRequest("Idempotency-Key %r: first offset after last offset" % key)
    return k


def _record(obj, raw: bytes, where: str) -> Record:
    if not isinstance(obj, dict):
        raise BadRequest("%s: expected a JSON object (a record envelope)" % where)
    topic, partition, offset = obj.get("topic"), obj.get("partition"), obj.get("offset")
    if not isinstance(topic, str) or not topic:
        raise BadRequest('%s: "topic" must be a non-empty string' % where)
    for name, v in (("partition", partition), ("offset", offset)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise BadRequest('%s: "%s" must be a non-negative integer' % (where, name))
    return Record(topic, partition, offset, raw, obj)


def parse_records(body: bytes, content_type: str = "application/x-ndjson") -> List[Record]:
    """Parses a batch body into records, keeping each envelope's exact bytes.

    NDJSON (the sidecar's default, `application/x-ndjson`): one envelope per
    line, each line ending in "\\n"; empty lines are ignored.  A JSON array
    (`application/json`, sink format json_array): each element's bytes are
    the exact slice of the body it was parsed from.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest("body is not valid UTF-8 (byte %d)" % e.start)
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or (media != "application/x-ndjson" and text.lstrip().startswith("[")):
        return _parse_array(text)
    records = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise BadRequest("line %d: invalid JSON: %s" % (lineno, e))
        records.append(_record(obj, line.encode("utf-8"), "line %d" % lineno))
    return records


def _parse_array(text: str) -> List[Record]:
    dec = json.JSONDecoder()
    ws = re.compile(r"[ \t\r\n]*")
    pos = ws.match(text, 0).end()
    if text[pos:pos + 1] != "[":
        raise BadRequest("expected a JSON array")
    pos = ws.match(text, pos + 1).end()
    records: List[Record] = []
    if text[pos:pos + 1] == "]":
        pos += 1
    else:
        while True:
            try:
                obj, end = dec.raw_decode(text, pos)
            except ValueError as e:
                raise BadRequest("element %d: invalid JSON: %s" % (len(records), e))
            records.append(_record(obj, text[pos:end].encode("utf-8"), "element %d" % len(records)))
            pos = ws.match(text, end).end()
            if text[pos:pos + 1] == ",":
                pos = ws.match(text, pos + 1).end()
                continue
            if text[pos:pos + 1] == "]":
                pos += 1
                break
            raise BadRequest("element %d: expected ',' or ']'" % (len(records) - 1))
    if text[pos:].strip(" \t\r\n"):
        raise BadRequest("unexpected data after the JSON array")
    return records


def check_batch(key: BatchKey, records: List[Record], headers: Mapping[str, str]) -> None:
    """The key, the X-Sidecar-* headers and the records must describe the same batch."""
    if not records:
        raise BadRequest("empty batch")
    prev = -1
    for r in records:
        if (r.topic, r.partition) != (key.topic, key.partition):
            raise BadRequest(
                "record at offset %d is from %s/%d, the Idempotency-Key names %s/%d"
                % (r.offset, r.topic, r.partition, key.topic, key.partition)
            )
        if r.offset <= prev:
            raise BadRequest("offsets are not increasing (%d after %d)" % (r.offset, prev))
        prev = r.offset
    if (records[0].offset, records[-1].offset) != (key.first, key.last):
        raise BadRequest(
            "records span offsets %d-%d, the Idempotency-Key says %d-%d"
            % (records[0].offset, records[-1].offset, key.first, key.last)
        )
    for name, want in (("x-sidecar-first-offset", key.first), ("x-sidecar-last-offset", key.last)):
        got = headers.get(name)
        if got is not None and got.strip() != str(want):
            raise BadRequest("%s is %s, the Idempotency-Key says %d" % (name, got.strip(), want))


class Store:
    """The SQLite database: applied batches (by key) and applied records.

    Thread-safe: every thread gets its own connection, and every ingest runs
    in one BEGIN IMMEDIATE transaction, so concurrent requests for the same
    key are serialised by SQLite's write lock: exactly one of them applies
    the batch, the others see it and answer "duplicate".
    """

    def __init__(self, path: str, busy_timeout_s: float = 10.0):
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: no implicit transactions, we BEGIN ourselves.
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
            # FULL: a 2xx promises durability (the sidecar commits its checkpoint after it).
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    def apply_record(self, conn: sqlite3.Connection, key: BatchKey, key_text: str, r: Record) -> None:
        """Applies one new record.  A real service does its own work here, in
        the same transaction as the de-duplication rows."""
        conn.execute(
            'INSERT INTO records (pipeline, topic, partition, "offset", envelope, idempotency_key)'
            " VALUES (?, ?, ?, ?, ?, ?)",
            (key.pipeline, r.topic, r.partition, r.offset, r.raw, key_text),
        )

    def ingest(self, headers: Mapping[str, str], body: bytes) -> Response:
        """Handles one delivery from the sidecar; see the module docstring for the answers."""
        h = {k.lower(): v for k, v in headers.items()}
        key_text = (h.get("idempotency-key") or "").strip()
        try:
            key = parse_idempotency_key(key_text)
            records = parse_records(body, h.get("content-type", "application/x-ndjson"))
            check_batch(key, records, h)
        except BadRequest as e:
            return Response(e.status, {"error": str(e)})
        digest = hashlib.sha256(body).hexdigest()
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            return Response(503, {"error": "database busy: %s" % e})
        try:
            row = conn.execute(
                "SELECT body_sha256 FROM deliveries WHERE idempotency_key = ?", (key_text,)
            ).fetchone()
            if row is not None:
                conn.execute("ROLLBACK")
                if row[0] == digest:
                    return Response(200, {"status": "duplicate", "idempotency_key": key_text})
                return Response(409, {
                    "error": "Idempotency-Key %s was delivered before with a different body; "
                             "the first delivery is kept" % key_text,
                    "idempotency_key": key_text,
                })
            applied = duplicates = 0
            for r in records:
                old = conn.execute(
                    'SELECT envelope FROM records WHERE pipeline = ? AND topic = ? AND partition = ? AND "offset" = ?',
                    (key.pipeline, r.topic, r.partition, r.offset),
                ).fetchone()
                if old is None:
                    self.apply_record(conn, key, key_text, r)
                    applied += 1
                elif bytes(old[0]) == r.raw:
                    duplicates += 1
                else:
                    conn.execute("ROLLBACK")
                    return Response(409, {
                        "error": "record %s/%d offset %d was delivered before with different content; "
                                 "the first delivery is kept" % (r.topic, r.partition, r.offset),
                        "idempotency_key": key_text,
                        "offset": r.offset,
                    })
            conn.execute(
                "INSERT INTO deliveries (idempotency_key, body_sha256, records, epoch) VALUES (?, ?, ?, ?)",
                (key_text, digest, len(records), h.get("x-sidecar-epoch")),
            )
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return Response(503, {"error": "database error: %s" % e})
        return Response(200, {
            "status": "stored",
            "idempotency_key": key_text,
            "records": applied,
            "duplicate_records": duplicates,
        })

    def stats(self) -> dict:
        """Counts per partition: what a reader checks for "every record exactly once"."""
        conn = self._conn()
        parts: Dict[str, dict] = {}
        for pipeline, topic, partition, n, lo, hi in conn.execute(
            'SELECT pipeline, topic, partition, count(*), min("offset"), max("offset") FROM records'
            " GROUP BY pipeline, topic, partition ORDER BY pipeline, topic, partition"
        ):
            parts["%s/%s/%d" % (pipeline, topic, partition)] = {
                "records": n, "first_offset": lo, "last_offset": hi,
                # offsets are contiguous on a plain topic, so this is 0 when nothing is missing
                "gaps": (hi - lo + 1) - n,
            }
        batches = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
        total = sum(p["records"] for p in parts.values())
        return {"records": total, "batches": batches, "partitions": parts}


class Handler(BaseHTTPRequestHandler):
    """HTTP front end of a Store (set as the server's .store)."""

    protocol_version = "HTTP/1.1"  # keep-alive: the sidecar reuses its connection
    timeout = 60  # seconds an idle keep-alive connection is kept
    server_version = "example-app/1"

    def _reply(self, status: int, body: dict, extra: Tuple[Tuple[str, str], ...] = ()) -> None:
        data = (json.dumps(body, sort_keys=True) + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _authorized(self) -> bool:
        token = self.server.token
        return not token or self.headers.get("Authorization", "") == "Bearer " + token

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            try:
                self.server.store._conn().execute("SELECT 1").fetchone()
            except sqlite3.Error as e:
                self._reply(503, {"status": "database unavailable", "error": str(e)})
                return
            self._reply(200, {"status": "ok"})
        elif path == "/stats":
            if not self._authorized():
                self._reply(401, {"error": "missing or wrong bearer token"})
                return
            self._reply(200, self.server.store.stats())
        else:
            self._reply(404, {"error": "no such endpoint"})

    do_HEAD = do_GET

    def _ingest(self) -> None:
        if self.path.split("?", 1)[0] != "/ingest":
            self._reply(404, {"error": "no such endpoint"})
            return
        if not self._authorized():
            self._reply(401, {"error": "missing or wrong bearer token"})
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._reply(411, {"error": "Content-Length required"})
            self.close_connection = True
            return
        if int(length) > self.server.max_body:
            self._reply(413, {"error": "body larger than %d bytes" % self.server.max_body})
            self.close_connection = True
            return
        body = self.rfile.read(int(length))
        res = self.server.store.ingest(self.headers, body)
        extra = (("Retry-After", "1"),) if res.status == 503 else ()
        self._reply(res.status, res.body, extra)

    do_POST = _ingest
    do_PUT = _ingest

    def log_message(self, fmt: str, *args) -> None:
        if self.server.log:
            sys.stderr.write("%s %s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"),
                                             self.headers.get("Idempotency-Key", "-") if self.headers else "-",
                                             fmt % args))


class Server(ThreadingHTTPServer):
    daemon_threads = True  # an unanswered request is simply retried by the sidecar

    def __init__(self, addr, store: Store, token: str = "", max_body: int = 64 << 20, log: bool = True):
        super().__init__(addr, Handler)
        self.store, self.token, self.max_body, self.log = store, token, max_body, log


def main() -> int:
    host, _, port = os.environ.get("APP_LISTEN", "0.0.0.0:8080").rpartition(":")
    db = os.environ.get("APP_DB", "/data/app.db")
    server = Server(
        (host or "0.0.0.0", int(port)),
        Store(db),
        token=os.environ.get("APP_TOKEN", ""),
        max_body=int(os.environ.get("APP_MAX_BODY_BYTES", str(64 << 20))),
        log=os.environ.get("APP_LOG", "1") == "1",
    )

    # PID 1 in a container ignores SIGTERM unless it handles it.  shutdown()
    # waits for serve_forever() to return, so it must run on another thread.
    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stderr.write("example-app listening on %s:%d, database %s\n" % (server.server_address[0],
                                                                       server.server_address[1], db))
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
