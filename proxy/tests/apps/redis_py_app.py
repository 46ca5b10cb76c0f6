"""An application written against redis-py, the way applications use it: a connection pool,
pipelines, transactions with WATCH, registered Lua scripts, blocking pops, pub/sub, streams,
SCAN iterators, health checks. It checks what it gets and prints a transcript, which the test
compares between direct Redis and respmesh.

    python redis_py_app.py PORT PROTOCOL [PASSWORD]
"""

import asyncio
import sys
import threading
import time

import redis
import redis.asyncio

port, protocol = int(sys.argv[1]), int(sys.argv[2])
password = sys.argv[3] if len(sys.argv) > 3 else None


def connect(**kw):
    return redis.Redis(host="127.0.0.1", port=port, password=password, protocol=protocol,
                       decode_responses=True, **kw)


r = connect(health_check_interval=1)
lines = []


def say(what, *values):
    lines.append(" ".join([what] + [repr(v) for v in values]))


def check(what, got, want):
    say(what, got)
    if got != want:
        print("\n".join(lines))
        sys.exit(f"{what}: got {got!r}, want {want!r}")


check("ping", r.ping(), True)
r.flushdb()
check("set", (r.set("k", "v", ex=100), r.get("k"), r.ttl("k")), (True, "v", 100))
check("hset", (r.hset("h", mapping={"a": 1, "b": 2}), r.hgetall("h")), (2, {"a": "1", "b": "2"}))

p = r.pipeline(transaction=True)
p.incr("c")
p.incr("c")
p.get("c")
check("multi", p.execute(), [1, 2, "2"])

p = r.pipeline(transaction=False)
for i in range(1000):
    p.set(f"key:{i}", i)
check("pipeline", p.execute(), [True] * 1000)
check("mget", r.mget("key:1", "key:999", "nope"), ["1", "999", None])


def increment(pipe):
    value = int(pipe.get("w") or 0)
    pipe.multi()
    pipe.set("w", value + 1)


for _ in range(5):
    r.transaction(increment, "w")
check("watch", r.get("w"), "5")

script = r.register_script("return redis.call('incrby', KEYS[1], ARGV[1])")
check("script", (script(keys=["s"], args=[5]), script(keys=["s"], args=[5])), (5, 10))
r.script_flush()
check("script after flush", script(keys=["s"], args=[1]), 11)

check("scan", len(list(r.scan_iter(match="key:*", count=100))), 1000)
check("keys", len(r.keys("key:1*")), 111)

check("blpop timeout", r.blpop(["q"], timeout=1), None)


def push_later():
    time.sleep(0.3)
    connect().rpush("q", "x")


threading.Thread(target=push_later).start()
check("blpop", tuple(r.blpop(["q"], timeout=5)), ("q", "x"))

ps = r.pubsub()
ps.subscribe("ch")
ps.psubscribe("c*")
received = []
deadline = time.time() + 5
while time.time() < deadline and len(received) < 2:
    m = ps.get_message(timeout=0.5)
    if m:
        received.append((m["type"], m["channel"]))
check("subscribed", sorted(received), [("psubscribe", "c*"), ("subscribe", "ch")])
check("publish", r.publish("ch", "hello"), 2)
received = []
deadline = time.time() + 5
while time.time() < deadline and len(received) < 2:
    m = ps.get_message(timeout=0.5)
    if m:
        received.append((m["type"], m["channel"], m["data"]))
check("messages", sorted(received), [("message", "ch", "hello"), ("pmessage", "ch", "hello")])
check("numsub", r.pubsub_numsub("ch"), [("ch", 1)])
ps.close()

check("setname", (r.client_setname("app"), r.client_getname()), (True, "app"))
check("info", "redis_version" in r.info("server"), True)
check("dbsize", r.dbsize(), 1005)
check("xadd", r.xadd("st", {"f": "v"}, id="1-1"), "1-1")
entries = r.xread({"st": "0"}, block=100)
entries = entries["st"][0] if isinstance(entries, dict) else entries[0][1]
check("xread", entries, [("1-1", {"f": "v"})])

try:
    r.execute_command("NOSUCHCMD")
    check("unknown command", "no error", "an error")
except redis.ResponseError as e:
    check("unknown command", str(e), "unknown command 'NOSUCHCMD', with args beginning with: ")

# Eight threads share the pool.
def add(n):
    c = connect()
    for _ in range(n):
        c.incr("counter")


threads = [threading.Thread(target=add, args=(200,)) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
check("threads", r.get("counter"), "1600")



async def asyncio_app():
    a = redis.asyncio.Redis(host="127.0.0.1", port=port, password=password, protocol=protocol,
                            decode_responses=True)
    # A pool of several connections; the subscriber takes one of them and does not wait for
    # its confirmation before the PUBLISH.
    check("asyncio gather", max(await asyncio.gather(*[a.incr("async") for _ in range(20)])), 20)
    async with a.pipeline(transaction=True) as p:
        check("asyncio multi", await p.incr("async").get("async").execute(), [21, "21"])
    ps = a.pubsub()
    await ps.subscribe("async-ch")
    check("asyncio publish", await a.publish("async-ch", "now"), 1)
    message = None
    for _ in range(25):
        message = await ps.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message:
            break
    check("asyncio message", message and message["data"], "now")
    await ps.aclose()
    await a.aclose()


asyncio.run(asyncio_app())

time.sleep(1.2)  # the next command is preceded by the pool's health check (PING)
check("after health check", r.get("k"), "v")
print("\n".join(lines))
