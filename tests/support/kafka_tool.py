#!/usr/bin/env python3
"""Independent Kafka client for the integration tests (PyPI confluent-kafka).

The tests use it so that what reaches the service over the Kafka protocol is produced by a
client nobody here wrote:
  create-topics BOOTSTRAP NAME:PARTITIONS...   create topics through the admin API
  produce BOOTSTRAP TOPIC EVENTS_FILE          produce every record of an events file, in order
  add-partitions BOOTSTRAP TOPIC TOTAL         grow a topic to TOTAL partitions
  lag BOOTSTRAP GROUP TOPIC                    records not yet committed by GROUP
  dump-dlq BOOTSTRAP TOPIC                     dead letters as JSON lines

An events file is a sequence of length-delimited smki.v1.EventFileRecord protobuf messages
(field 1 = key bytes, field 2 = value bytes); the few lines of wire-format reading below are
test tooling, not product code.
"""
import sys

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic


def varint(buf, pos):
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def records(path):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
        length, pos = varint(data, pos)
        end = pos + length
        key = value = b""
        while pos < end:
            tag, pos = varint(data, pos)
            n, pos = varint(data, pos)
            field = data[pos:pos + n]
            pos += n
            if tag >> 3 == 1:
                key = field
            elif tag >> 3 == 2:
                value = field
        yield key, value


def create_topics(bootstrap, specs):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [NewTopic(s.split(":")[0], num_partitions=int(s.split(":")[1]), replication_factor=1) for s in specs]
    for name, fut in admin.create_topics(topics, operation_timeout=30).items():
        fut.result()
        print(f"created {name}", file=sys.stderr)


def add_partitions(bootstrap, topic, total):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for name, fut in admin.create_partitions([NewPartitions(topic, int(total))]).items():
        fut.result()
        print(f"{name} now has {total} partitions", file=sys.stderr)


def produce(bootstrap, topic, path):
    failures = []

    def report(err, _msg):
        if err is not None:
            failures.append(err)

    p = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "queue.buffering.max.messages": 500000,
    })
    n = 0
    for key, value in records(path):
        while True:
            try:
                p.produce(topic, key=key, value=value, on_delivery=report)
                break
            except BufferError:
                p.poll(0.05)
        n += 1
        if n % 1000 == 0:
            p.poll(0)
    remaining = p.flush(300)
    if remaining or failures:
        sys.exit(f"produce failed: {remaining} undelivered, {len(failures)} errors: {failures[:3]}")
    print(f"produced {n} records to {topic}", file=sys.stderr)


def lag(bootstrap, group, topic):
    """Total records of TOPIC not yet committed by GROUP (Kafka's informational offsets)."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    md = c.list_topics(topic, timeout=10)
    parts = [TopicPartition(topic, p) for p in md.topics[topic].partitions]
    committed = {tp.partition: tp.offset for tp in c.committed(parts, timeout=10)}
    total = 0
    for tp in parts:
        lo, hi = c.get_watermark_offsets(tp, timeout=10)
        done = committed.get(tp.partition, -1)
        total += hi - (done if done >= 0 else lo)
    c.close()
    print(total)


def dump_dlq(bootstrap, topic):
    """One JSON line per dead letter: reason and origin partition/offset from its headers."""
    import json
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "dump-dlq", "enable.auto.commit": False,
                  "enable.partition.eof": True})
    md = c.list_topics(topic, timeout=10)
    parts = [TopicPartition(topic, p, 0) for p in md.topics[topic].partitions]
    c.assign(parts)
    remaining = {tp.partition for tp in parts}
    while remaining:
        m = c.poll(10)
        if m is None:
            sys.exit(f"timed out reading {topic}")
        if m.error():
            if m.error().code() == -191:  # _PARTITION_EOF
                remaining.discard(m.partition())
                continue
            sys.exit(str(m.error()))
        h = {k: v.decode() for k, v in (m.headers() or [])}
        print(json.dumps({"reason": h.get("smki-dlq-reason"), "partition": int(h["smki-origin-partition"]),
                          "offset": int(h["smki-origin-offset"])}))
    c.close()


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "create-topics":
        create_topics(args[0], args[1:])
    elif cmd == "produce":
        produce(*args)
    elif cmd == "lag":
        lag(*args)
    elif cmd == "dump-dlq":
        dump_dlq(*args)
    elif cmd == "add-partitions":
        add_partitions(*args)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
