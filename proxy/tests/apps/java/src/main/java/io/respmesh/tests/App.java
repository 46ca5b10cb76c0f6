// An application written against Jedis and Lettuce, the way applications use them: a Jedis
// pool, pipelines, transactions with WATCH, scripts, blocking pops, pub/sub; Lettuce's
// HELLO on connect, its transactions and its pub/sub connection. It checks what it gets and
// prints a transcript, which the test compares between direct Redis and respmesh.
//
//   java -cp CLASSPATH io.respmesh.tests.App PORT PROTOCOL [PASSWORD]
package io.respmesh.tests;

import io.lettuce.core.ClientOptions;
import io.lettuce.core.RedisURI;
import io.lettuce.core.ScriptOutputType;
import io.lettuce.core.api.StatefulRedisConnection;
import io.lettuce.core.api.sync.RedisCommands;
import io.lettuce.core.protocol.ProtocolVersion;
import io.lettuce.core.pubsub.RedisPubSubAdapter;
import io.lettuce.core.pubsub.StatefulRedisPubSubConnection;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Objects;
import redis.clients.jedis.DefaultJedisClientConfig;
import redis.clients.jedis.HostAndPort;
import redis.clients.jedis.Jedis;
import redis.clients.jedis.JedisClientConfig;
import redis.clients.jedis.JedisPooled;
import redis.clients.jedis.JedisPubSub;
import redis.clients.jedis.Pipeline;
import redis.clients.jedis.RedisProtocol;
import redis.clients.jedis.Transaction;

public class App {
  static final List<String> lines = new ArrayList<>();

  static void check(String what, Object got, Object want) {
    lines.add(what + " " + got);
    if (!Objects.equals(String.valueOf(got), String.valueOf(want))) {
      lines.forEach(System.out::println);
      System.err.println(what + ": got " + got + ", want " + want);
      System.exit(1);
    }
  }

  public static void main(String[] args) throws Exception {
    int port = Integer.parseInt(args[0]);
    int protocol = Integer.parseInt(args[1]);
    String password = args.length > 2 ? args[2] : null;
    HostAndPort addr = new HostAndPort("127.0.0.1", port);
    JedisClientConfig config = DefaultJedisClientConfig.builder()
        .password(password)
        .protocol(protocol == 3 ? RedisProtocol.RESP3 : RedisProtocol.RESP2)
        .build();

    try (JedisPooled j = new JedisPooled(addr, config)) {
      j.flushDB();
      check("jedis set", j.set("k", "v") + " " + j.get("k"), "OK v");
      try (Pipeline p = j.pipelined()) {
        for (int i = 0; i < 1000; i++) p.set("key:" + i, "" + i);
        p.sync();
      }
      check("jedis mget", j.mget("key:1", "key:999", "nope"), Arrays.asList("1", "999", null));
      String script = "return redis.call('incrby', KEYS[1], ARGV[1])";
      check("jedis eval", j.eval(script, List.of("s"), List.of("5")), 5);
      String sha = j.scriptLoad(script);
      check("jedis evalsha", j.evalsha(sha, List.of("s"), List.of("5")), 10);
      check("jedis blpop timeout", j.blpop(1, "q"), null);
      check("jedis hset", j.hset("h", java.util.Map.of("a", "1")), 1);
      check("jedis dbsize", j.dbSize(), 1003);
    }
    try (Jedis j = new Jedis(addr, config)) {
      Transaction t = j.multi();
      t.incr("c");
      t.incr("c");
      check("jedis multi", t.exec(), List.of(1L, 2L));
      j.watch("w");
      Transaction watched = j.multi();
      watched.set("w", "1");
      check("jedis watch", watched.exec(), List.of("OK"));
      check("jedis client name", j.clientSetname("jedis-app") + " " + j.clientGetname(), "OK jedis-app");
    }
    try (Jedis subscriber = new Jedis(addr, config); Jedis publisher = new Jedis(addr, config)) {
      List<String> got = Collections.synchronizedList(new ArrayList<>());
      JedisPubSub listener = new JedisPubSub() {
        @Override public void onSubscribe(String channel, int count) {
          check("jedis subscribed", channel + " " + count, "jch 1");
          check("jedis publish", publisher.publish("jch", "hello"), 1);
        }
        @Override public void onMessage(String channel, String message) {
          got.add(channel + ":" + message);
          unsubscribe();
        }
      };
      subscriber.subscribe(listener, "jch");
      check("jedis message", got, List.of("jch:hello"));
    }

    RedisURI.Builder uri = RedisURI.builder().withHost("127.0.0.1").withPort(port);
    if (password != null) uri.withPassword(password.toCharArray());
    io.lettuce.core.RedisClient client = io.lettuce.core.RedisClient.create(uri.build());
    client.setOptions(ClientOptions.builder()
        .protocolVersion(protocol == 3 ? ProtocolVersion.RESP3 : ProtocolVersion.RESP2)
        .build());
    try (StatefulRedisConnection<String, String> conn = client.connect()) {
      RedisCommands<String, String> s = conn.sync();
      check("lettuce set", s.set("lk", "v") + " " + s.get("lk"), "OK v");
      s.multi();
      s.incr("lc");
      s.incr("lc");
      check("lettuce multi", s.exec().stream().toList(), List.of(1L, 2L));
      check("lettuce blpop timeout", s.blpop(1, "lq"), null);
      check("lettuce eval", s.<Long>eval("return 7", ScriptOutputType.INTEGER), 7);
      try (StatefulRedisPubSubConnection<String, String> ps = client.connectPubSub()) {
        List<String> got = Collections.synchronizedList(new ArrayList<>());
        ps.addListener(new RedisPubSubAdapter<>() {
          @Override public void message(String channel, String message) {
            got.add(channel + ":" + message);
          }
        });
        ps.sync().subscribe("lch");
        check("lettuce publish", s.publish("lch", "hi"), 1);
        for (int i = 0; i < 100 && got.isEmpty(); i++) Thread.sleep(20);
        check("lettuce message", got, List.of("lch:hi"));
      }
      check("lettuce dbsize", s.dbsize(), 1007);
    } finally {
      client.shutdown();
    }
    lines.forEach(System.out::println);
  }
}
