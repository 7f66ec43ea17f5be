#!/usr/bin/python3
"""Avro binary datums written by python3-avro (Debian), independently of the
sidecar's decoder, for its tests.

  avro_encode.py cases          one JSON line per test case:
                                {"name": ..., "schema": ..., "hex": ...}
                                (tests/unit/check_avro.c holds the JSON each
                                must decode to)
  avro_encode.py orders F N     the "Order" schema on the first line, then
                                orders F..F+N-1, one hex datum per line
                                (integration and chaos tests; scx_avro_order_json()
                                in tests/harness/scx.c gives the JSON each must
                                decode to)
"""
import datetime
import decimal
import io
import warnings
import json
import sys

import avro.io
import avro.schema


def encode(schema_json, datum):
    schema = avro.schema.parse(json.dumps(schema_json))
    out = io.BytesIO()
    avro.io.DatumWriter(schema).write(datum, avro.io.BinaryEncoder(out))
    return out.getvalue().hex()


UTC = datetime.timezone.utc

PRIMITIVES = {
    "type": "record", "name": "Primitives", "fields": [
        {"name": "n", "type": "null"},
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "by", "type": "bytes"},
        {"name": "s", "type": "string"},
    ]}

NESTED = {
    "type": "record", "name": "Outer", "namespace": "com.example", "fields": [
        {"name": "a", "type": {"type": "record", "name": "Inner",
                               "fields": [{"name": "x", "type": "int"}]}},
        {"name": "b", "type": "Inner"},
        {"name": "c", "type": "com.example.Inner"},
    ]}

COLLECTIONS = {
    "type": "record", "name": "Collections", "fields": [
        {"name": "arr", "type": {"type": "array", "items": "int"}},
        {"name": "empty", "type": {"type": "array", "items": "string"}},
        {"name": "m", "type": {"type": "map", "values": "string"}},
        {"name": "nested", "type": {"type": "array",
                                    "items": {"type": "map", "values": "long"}}},
    ]}

UNIONS = {
    "type": "record", "name": "Unions", "fields": [
        {"name": "o1", "type": ["null", "string"]},
        {"name": "o2", "type": ["null", "string"], "default": None},
        {"name": "u", "type": ["null", "long", "string"]},
        {"name": "r", "type": ["null", {"type": "record", "name": "R",
                                        "fields": [{"name": "z", "type": "boolean"}]}]},
    ]}

ENUM = {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}

FIXED = {"type": "fixed", "name": "F4", "size": 4}

LOGICAL = {
    "type": "record", "name": "Logical", "fields": [
        {"name": "date", "type": {"type": "int", "logicalType": "date"}},
        {"name": "tmillis", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "tmicros", "type": {"type": "long", "logicalType": "time-micros"}},
        {"name": "tsmillis", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "tsmicros", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "before1970", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "uuid", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "dec", "type": {"type": "bytes", "logicalType": "decimal",
                                 "precision": 10, "scale": 2}},
        {"name": "decfixed", "type": {"type": "fixed", "name": "D8", "size": 8,
                                      "logicalType": "decimal", "precision": 18,
                                      "scale": 4}},
        {"name": "small", "type": {"type": "bytes", "logicalType": "decimal",
                                   "precision": 5, "scale": 5}},
        {"name": "unknown", "type": {"type": "string", "logicalType": "made-up"}},
        {"name": "opt_ts", "type": ["null", {"type": "long",
                                             "logicalType": "timestamp-millis"}]},
    ]}

RECURSIVE = {
    "type": "record", "name": "Node", "fields": [
        {"name": "v", "type": "int"},
        {"name": "next", "type": ["null", "Node"]},
    ]}

SPECIAL = {
    "type": "record", "name": "Special", "fields": [
        {"name": "nan", "type": "double"},
        {"name": "inf", "type": "double"},
        {"name": "ninf", "type": "float"},
        {"name": "neg0", "type": "double"},
        {"name": "big", "type": "double"},
        {"name": "third", "type": "float"},
    ]}

ORDER = {
    "type": "record", "name": "Order", "namespace": "shop", "fields": [
        {"name": "order_id", "type": "long"},
        {"name": "customer", "type": "string"},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal",
                                    "precision": 12, "scale": 2}},
        {"name": "status", "type": {"type": "enum", "name": "Status",
                                    "symbols": ["NEW", "PAID", "SHIPPED"]}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
    ]}


def cases():
    yield "primitives", PRIMITIVES, {
        "n": None, "b": True, "i": -42, "l": 9007199254740993, "f": 1.5, "d": 0.1,
        "by": b"\x00\xff", "s": "h\u00e9llo \"q\"\n"}
    yield "nested", NESTED, {"a": {"x": 1}, "b": {"x": 2}, "c": {"x": -3}}
    yield "collections", COLLECTIONS, {
        "arr": [1, 2, 3], "empty": [], "m": {"k1": "v1", "k2": "v2"},
        "nested": [{"a": 1}, {}, {"b": -2, "c": 3}]}
    yield "unions_null", UNIONS, {"o1": None, "o2": "x", "u": None, "r": None}
    yield "unions_values", UNIONS, {"o1": "", "o2": None, "u": 5, "r": {"z": False}}
    yield "unions_string", UNIONS, {"o1": "a", "o2": "b", "u": "five", "r": None}
    yield "enum", ENUM, "GREEN"
    yield "fixed", FIXED, b"\x01\x02\x03\x04"
    yield "bytes_top", "bytes", b"hello"
    yield "string_top", "string", "plain"
    yield "logical", LOGICAL, {
        "date": datetime.date(2024, 11, 22),
        "tmillis": datetime.time(13, 45, 30, 123000),
        "tmicros": datetime.time(0, 0, 1, 5),
        "tsmillis": datetime.datetime(2024, 11, 22, 1, 46, 40, 7000, tzinfo=UTC),
        "tsmicros": datetime.datetime(2000, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        "before1970": datetime.datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
        "uuid": "123e4567-e89b-12d3-a456-426614174000",
        "dec": decimal.Decimal("-12.30"),
        "decfixed": decimal.Decimal("1234.5678"),
        "small": decimal.Decimal("0.00042"),
        "unknown": "kept as a string",
        "opt_ts": datetime.datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)}
    yield "recursive", RECURSIVE, {"v": 1, "next": {"v": 2, "next": {"v": 3, "next": None}}}
    yield "special", SPECIAL, {
        "nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"), "neg0": -0.0,
        "big": 1e300, "third": 1.0 / 3.0}


def order(i):
    return {
        "order_id": i,
        "customer": "customer-%d" % (i % 97),
        # scaleb, not division: python3-avro writes the digits as they are, so the
        # exponent must be the schema's scale
        "amount": decimal.Decimal(i * 7 % 100000).scaleb(-2),
        "status": ["NEW", "PAID", "SHIPPED"][i % 3],
        "note": None if i % 2 else "note %d" % i,
        "placed_at": datetime.datetime.fromtimestamp(1700000000 + i, UTC),
        "tags": ["t%d" % j for j in range(i % 3)],
    }


def main():
    warnings.simplefilter("ignore")  # "unknown logical type": on purpose
    if sys.argv[1:2] == ["cases"]:
        for name, schema, datum in cases():
            print(json.dumps({"name": name, "schema": json.dumps(schema),
                              "hex": encode(schema, datum)}))
    elif sys.argv[1:2] == ["orders"]:
        first, count = int(sys.argv[2]), int(sys.argv[3])
        print(json.dumps(ORDER))
        for i in range(first, first + count):
            print(encode(ORDER, order(i)))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
