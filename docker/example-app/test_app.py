"""Tests of the example app's de-duplication (python3 -m unittest, stdlib only).

Run from anywhere:  python3 -m unittest discover -s docker/example-app -v
"""

import json
import os
import shutil
import sys
import tempfile
import threading
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import app  # noqa: E402


def envelope(offset, topic="orders", partition=0, value=None, key=None):
    """One record envelope in the sidecar's fixed key order (docs/sinks.md "Record envelope")."""
    if value is None:
        value = {"order_id": offset, "amount": "1.10"}
    return {"topic": topic, "partition": partition, "offset": offset, "timestamp": 1732240000000 + offset,
            "key": key if key is not None else "customer-%d" % (offset % 7), "value": value, "headers": {}}


def ndjson(envs):
    return b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in envs)


def batch(first, last, topic="orders", partition=0, pipeline="orders-to-app", epoch=1, **kw):
    """(headers, body) of the request the sidecar sends for offsets first..last."""
    body = ndjson(envelope(o, topic, partition, **kw) for o in range(first, last + 1))
    headers = {
        "Idempotency-Key": "%s/%s/%d/%d-%d" % (pipeline, topic, partition, first, last),
        "X-Sidecar-First-Offset": str(first),
        "X-Sidecar-Last-Offset": str(last),
        "X-Sidecar-Epoch": str(epoch),
        "Content-Type": "application/x-ndjson",
    }
    return headers, body


class StoreTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="example-app-test-")
        self.db = os.path.join(self.dir, "app.db")
        self.store = app.Store(self.db)

    def tearDown(self):
        shutil.rmtree(self.dir)

    def count(self, table):
        return self.store._conn().execute("SELECT count(*) FROM %s" % table).fetchone()[0]

    # -- the contract --------------------------------------------------------

    def test_first_delivery_is_stored(self):
        headers, body = batch(0, 9)
        res = self.store.ingest(headers, body)
        self.assertEqual(res.status, 200)
        self.assertEqual(res.body["status"], "stored")
        self.assertEqual(res.body["records"], 10)
        self.assertEqual(self.count("records"), 10)
        self.assertEqual(self.count("deliveries"), 1)
        # the record's bytes are kept exactly as sent
        raw = self.store._conn().execute(
            'SELECT envelope FROM records WHERE "offset" = 3').fetchone()[0]
        self.assertEqual(bytes(raw), body.split(b"\n")[3])

    def test_identical_replay_is_ignored_and_answered_200(self):
        headers, body = batch(0, 9)
        self.assertEqual(self.store.ingest(headers, body).status, 200)
        for epoch in (1, 2):  # a takeover replays with a new epoch: still the same batch
            headers["X-Sidecar-Epoch"] = str(epoch)
            res = self.store.ingest(headers, body)
            self.assertEqual(res.status, 200)
            self.assertEqual(res.body["status"], "duplicate")
        self.assertEqual(self.count("records"), 10)
        self.assertEqual(self.count("deliveries"), 1)

    def test_replay_after_restart_is_ignored(self):
        headers, body = batch(0, 4)
        self.assertEqual(self.store.ingest(headers, body).body["status"], "stored")
        restarted = app.Store(self.db)  # the app restarted: state comes from the file
        self.assertEqual(restarted.ingest(headers, body).body["status"], "duplicate")
        self.assertEqual(restarted.stats()["records"], 5)

    def test_same_key_different_body_is_a_conflict(self):
        headers, body = batch(0, 2)
        self.assertEqual(self.store.ingest(headers, body).status, 200)
        _, other = batch(0, 2, value={"order_id": 0, "amount": "9.99"})
        res = self.store.ingest(headers, other)
        self.assertEqual(res.status, 409)
        self.assertIn("different body", res.body["error"])
        # the first delivery is kept, nothing of the second is applied
        raw = self.store._conn().execute('SELECT envelope FROM records WHERE "offset" = 0').fetchone()[0]
        self.assertEqual(bytes(raw), body.split(b"\n")[0])
        self.assertEqual(self.count("deliveries"), 1)

    def test_conflicting_record_under_a_new_key_applies_nothing(self):
        self.assertEqual(self.store.ingest(*batch(0, 4)).status, 200)
        # a new key whose range overlaps stored records, one of them with other bytes
        envs = [envelope(o) for o in range(3, 8)]
        envs[1]["value"] = {"changed": True}  # offset 4
        headers = batch(3, 7)[0]
        res = self.store.ingest(headers, ndjson(envs))
        self.assertEqual(res.status, 409)
        self.assertEqual(res.body["offset"], 4)
        self.assertEqual(self.count("records"), 5)  # 5, 6, 7 were not applied either
        self.assertEqual(self.count("deliveries"), 1)

    def test_overlapping_batch_applies_only_new_records(self):
        # e.g. after `sidecar reset` moved the checkpoint back: new batch boundaries, same records
        self.assertEqual(self.store.ingest(*batch(0, 4)).status, 200)
        res = self.store.ingest(*batch(3, 9))
        self.assertEqual(res.status, 200)
        self.assertEqual((res.body["records"], res.body["duplicate_records"]), (5, 2))
        stats = self.store.stats()
        self.assertEqual(stats["partitions"]["orders-to-app/orders/0"],
                         {"records": 10, "first_offset": 0, "last_offset": 9, "gaps": 0})

    def test_concurrent_duplicates_apply_once(self):
        headers, body = batch(100, 199, partition=3)
        n = 16
        barrier = threading.Barrier(n)
        results = [None] * n

        def deliver(i):
            barrier.wait()
            results[i] = self.store.ingest(dict(headers), body)

        threads = [threading.Thread(target=deliver, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(r.body["status"] for r in results)
        self.assertEqual([r.status for r in results], [200] * n)
        self.assertEqual(statuses, ["duplicate"] * (n - 1) + ["stored"])
        self.assertEqual(self.count("records"), 100)
        self.assertEqual(self.count("deliveries"), 1)

    def test_concurrent_partitions_all_stored(self):
        def deliver(p):
            for first in range(0, 50, 10):
                res = self.store.ingest(*batch(first, first + 9, partition=p))
                assert res.status == 200, res

        threads = [threading.Thread(target=deliver, args=(p,)) for p in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = self.store.stats()
        self.assertEqual(stats["records"], 200)
        self.assertEqual(stats["batches"], 20)
        for p in range(4):
            self.assertEqual(stats["partitions"]["orders-to-app/orders/%d" % p]["gaps"], 0)

    # -- malformed requests --------------------------------------------------

    def test_malformed_requests_are_400(self):
        headers, body = batch(0, 2)
        cases = {
            "no key": ({k: v for k, v in headers.items() if k != "Idempotency-Key"}, body),
            "bad key": (dict(headers, **{"Idempotency-Key": "orders/0/0-2"}), body),
            "key for another partition": (dict(headers, **{"Idempotency-Key": "orders-to-app/orders/1/0-2"}), body),
            "key range differs": (dict(headers, **{"Idempotency-Key": "orders-to-app/orders/0/0-3"}), body),
            "header range differs": (dict(headers, **{"X-Sidecar-Last-Offset": "5"}), body),
            "empty body": (headers, b""),
            "bad json": (headers, body + b"{not json\n"),
            "not an envelope": (headers, b'{"topic":"orders","partition":0}\n'),
            "offsets not increasing": (dict(headers, **{"Idempotency-Key": "orders-to-app/orders/0/1-1"}),
                                       ndjson([envelope(1), envelope(1)])),
        }
        for name, (h, b) in cases.items():
            with self.subTest(name):
                res = self.store.ingest(h, b)
                self.assertEqual(res.status, 400, res)
        self.assertEqual(self.count("records"), 0)
        self.assertEqual(self.count("deliveries"), 0)


class ParseTest(unittest.TestCase):
    def test_ndjson_records(self):
        body = (b'{"topic":"orders","partition":2,"offset":7,"timestamp":null,"key":null,'
                b'"value":{"price":1.10,"dup":1,"dup":2},"headers":{"h":"v"}}\n'
                b'\n'
                b'{"topic":"orders","partition":2,"offset":9,"timestamp":1,"key":"k","value":"caf\xc3\xa9",'
                b'"headers":{}}\n')
        recs = app.parse_records(body, "application/x-ndjson")
        self.assertEqual([(r.topic, r.partition, r.offset) for r in recs], [("orders", 2, 7), ("orders", 2, 9)])
        # the exact bytes are kept (1.10 and the duplicate key survive), not a re-serialisation
        self.assertEqual(recs[0].raw, body.split(b"\n")[0])
        self.assertEqual(recs[1].envelope["value"], "caf\u00e9")
        self.assertEqual(recs[0].envelope["headers"], {"h": "v"})

    def test_ndjson_errors_name_the_line(self):
        with self.assertRaisesRegex(app.BadRequest, "line 2"):
            app.parse_records(ndjson([envelope(0)]) + b"[1,2\n")
        with self.assertRaisesRegex(app.BadRequest, "UTF-8"):
            app.parse_records(b"\xff\n")

    def test_json_array_keeps_each_elements_bytes(self):
        body = b'[ {"topic":"t","partition":0,"offset":1,"value":1.50} ,\n{"topic":"t","partition":0,"offset":2}]'
        recs = app.parse_records(body, "application/json")
        self.assertEqual([r.raw for r in recs], [b'{"topic":"t","partition":0,"offset":1,"value":1.50}',
                                                 b'{"topic":"t","partition":0,"offset":2}'])
        self.assertEqual(app.parse_records(b"[]", "application/json"), [])
        for bad in (b"[", b'[{"topic":"t","partition":0,"offset":1}', b"[] x", b"{}"):
            with self.subTest(bad), self.assertRaises(app.BadRequest):
                app.parse_records(bad, "application/json")

    def test_idempotency_key(self):
        self.assertEqual(app.parse_idempotency_key("orders-to-app/orders.v2/11/100-199"),
                         app.BatchKey("orders-to-app", "orders.v2", 11, 100, 199))
        for bad in ("", "a/b/c/1-2", "p/t/1/5-4", "p/t/1/5", "p/t/x/1-2/extra"):
            with self.subTest(bad), self.assertRaises(app.BadRequest):
                app.parse_idempotency_key(bad)


class HttpTest(unittest.TestCase):
    """The same through the real HTTP server, as the sidecar talks to it."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="example-app-http-")
        self.server = app.Server(("127.0.0.1", 0), app.Store(os.path.join(self.dir, "app.db")),
                                 token="s3cret", max_body=1 << 16, log=False)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = "http://127.0.0.1:%d" % self.server.server_address[1]

    def tearDown(self):
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.dir)

    def request(self, method, path, headers=None, body=None, token="s3cret"):
        h = dict(headers or {})
        if token:
            h["Authorization"] = "Bearer " + token
        req = urllib.request.Request(self.base + path, data=body, headers=h, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def test_post_replay_put_and_stats(self):
        headers, body = batch(0, 4, partition=1)
        self.assertEqual(self.request("POST", "/ingest", headers, body)[1]["status"], "stored")
        self.assertEqual(self.request("POST", "/ingest", headers, body), (200, {
            "status": "duplicate", "idempotency_key": "orders-to-app/orders/1/0-4"}))
        self.assertEqual(self.request("PUT", "/ingest", *batch(5, 9, partition=1))[1]["status"], "stored")
        status, stats = self.request("GET", "/stats")
        self.assertEqual(status, 200)
        self.assertEqual(stats["partitions"]["orders-to-app/orders/1"]["records"], 10)

    def test_errors(self):
        headers, body = batch(0, 4)
        self.assertEqual(self.request("POST", "/ingest", headers, body, token="wrong")[0], 401)
        self.assertEqual(self.request("POST", "/ingest", headers, body, token=None)[0], 401)
        self.assertEqual(self.request("POST", "/elsewhere", headers, body)[0], 404)
        self.assertEqual(self.request("POST", "/ingest", headers, b"x" * (1 << 17))[0], 413)
        self.assertEqual(self.request("GET", "/healthz", token=None), (200, {"status": "ok"}))


if __name__ == "__main__":
    unittest.main()
