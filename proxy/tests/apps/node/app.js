// An application written against the two Node.js clients, ioredis and node-redis, the way
// applications use them: ready checks (INFO) and connection names on connect, MULTI,
// pipelines, defined Lua commands (EVALSHA, then EVAL after NOSCRIPT), SCAN streams, blocking
// pops, subscriber connections and QUIT. It checks what it gets and prints a transcript, which
// the test compares between direct Redis and respmesh.
//
//   node app.js PORT PROTOCOL [PASSWORD]     (NODE_PATH: where ioredis and redis are installed)
"use strict";
const assert = require("node:assert");
const Redis = require("ioredis");
const { createClient } = require("redis");

const [port, protocol, password] = [Number(process.argv[2]), Number(process.argv[3]), process.argv[4]];
const lines = [];
function check(what, got, want) {
  lines.push(`${what} ${JSON.stringify(got)}`);
  try {
    assert.deepStrictEqual(got, want);
  } catch (e) {
    console.log(lines.join("\n"));
    console.error(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
    process.exit(1);
  }
}
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

async function ioredis() {
  const options = { host: "127.0.0.1", port, password, lazyConnect: true, maxRetriesPerRequest: 0 };
  const r = new Redis({ ...options, connectionName: "io-app" });
  await r.connect();
  check("io ping", await r.ping(), "PONG");
  await r.flushdb();
  check("io set", [await r.set("k", "v", "EX", 100), await r.get("k")], ["OK", "v"]);
  check("io multi", await r.multi().incr("c").incr("c").get("c").exec(), [[null, 1], [null, 2], [null, "2"]]);
  const p = r.pipeline();
  for (let i = 0; i < 1000; i++) p.set(`key:${i}`, i);
  check("io pipeline", (await p.exec()).every(([err, ok]) => err === null && ok === "OK"), true);
  check("io mget", await r.mget("key:1", "key:999", "nope"), ["1", "999", null]);
  r.defineCommand("incrbyScript", { numberOfKeys: 1, lua: "return redis.call('incrby', KEYS[1], ARGV[1])" });
  check("io script", [await r.incrbyScript("s", 5), await r.incrbyScript("s", 5)], [5, 10]);
  await r.script("FLUSH");
  check("io script after flush", await r.incrbyScript("s", 1), 11);
  const keys = [];
  await new Promise((done, fail) =>
    r.scanStream({ match: "key:*", count: 100 }).on("data", (k) => keys.push(...k)).on("end", done).on("error", fail),
  );
  check("io scan", new Set(keys).size, 1000);
  check("io blpop timeout", await r.blpop("q", 1), null);
  const pusher = new Redis(options);
  setTimeout(() => pusher.rpush("q", "x"), 300);
  check("io blpop", await r.blpop("q", 5), ["q", "x"]);
  pusher.disconnect();
  const sub = new Redis(options);
  check("io subscribe", await sub.subscribe("ch"), 1);
  const message = new Promise((done) => sub.on("message", (channel, text) => done([channel, text])));
  check("io publish", await r.publish("ch", "hello"), 1);
  check("io message", await message, ["ch", "hello"]);
  check("io subscriber quit", await sub.quit(), "OK");
  await sleep(100);
  check("io publish after quit", await r.publish("ch", "anyone?"), 0);
  check("io client name", await r.client("GETNAME"), "io-app");
  check("io dbsize", await r.dbsize(), 1003);
  await r.call("NOSUCHCMD").then(
    () => check("io unknown command", "no error", "an error"),
    (e) => check("io unknown command", e.message, "ERR unknown command 'NOSUCHCMD', with args beginning with: "),
  );
  check("io quit", await r.quit(), "OK");
}

async function nodeRedis() {
  const auth = password ? `:${password}@` : "";
  const n = createClient({ url: `redis://${auth}127.0.0.1:${port}`, RESP: protocol, name: "node-app" });
  n.on("error", () => {});
  await n.connect();
  check("node set", [await n.set("nk", "1"), await n.get("nk")], ["OK", "1"]);
  check("node multi", await n.multi().incr("nc").incr("nc").exec(), [1, 2]);
  check("node hset", await n.hSet("nh", { a: "1", b: "2" }), 2);
  check("node hgetall", { ...(await n.hGetAll("nh")) }, { a: "1", b: "2" });
  check("node client name", await n.clientGetName(), "node-app");
  const sub = n.duplicate();
  sub.on("error", () => {});
  await sub.connect();
  const message = new Promise((done) => sub.subscribe("nch", (m) => done(m)));
  await sleep(100);
  check("node publish", await n.publish("nch", "hi"), 1);
  check("node message", await message, "hi");
  check("node subscriber quit", String(await sub.quit()), "OK"); // a Buffer in RESP2
  await sleep(100);
  check("node publish after quit", await n.publish("nch", "anyone?"), 0);
  check("node quit", await n.quit(), "OK");
}

(async () => {
  await ioredis();
  await nodeRedis();
  console.log(lines.join("\n"));
  process.exit(0);
})().catch((e) => {
  console.log(lines.join("\n"));
  console.error("failed:", e);
  process.exit(1);
});
