// An application written against go-redis v9, the way applications use it: HELLO 3 with AUTH
// and CLIENT SETINFO on connect, a connection pool shared by goroutines, pipelines,
// transactions with WATCH, scripts (EVALSHA, then EVAL after NOSCRIPT), blocking pops,
// pub/sub, streams, SCAN iterators. It checks what it gets and prints a transcript, which the
// test compares between direct Redis and respmesh.
//
//	go-redis-app PORT PROTOCOL [PASSWORD]
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

var lines []string

func check(what string, got, want any) {
	line := fmt.Sprintf("%s %v", what, got)
	lines = append(lines, line)
	if !reflect.DeepEqual(got, want) {
		for _, l := range lines {
			fmt.Println(l)
		}
		fmt.Fprintf(os.Stderr, "%s: got %#v, want %#v\n", what, got, want)
		os.Exit(1)
	}
}

func main() {
	ctx := context.Background()
	protocol, err := strconv.Atoi(os.Args[2])
	if err != nil {
		panic(err)
	}
	password := ""
	if len(os.Args) > 3 {
		password = os.Args[3]
	}
	r := redis.NewClient(&redis.Options{
		Addr: "127.0.0.1:" + os.Args[1], Password: password, Protocol: protocol, PoolSize: 8,
	})

	check("ping", r.Ping(ctx).Val(), "PONG")
	r.FlushDB(ctx)
	check("set", r.Set(ctx, "k", "v", time.Minute).Val(), "OK")
	check("get", r.Get(ctx, "k").Val(), "v")
	_, err = r.Get(ctx, "missing").Result()
	check("missing is nil", errors.Is(err, redis.Nil), true)
	check("hset", r.HSet(ctx, "h", "a", 1, "b", 2).Val(), int64(2))
	check("hgetall", r.HGetAll(ctx, "h").Val(), map[string]string{"a": "1", "b": "2"})

	cmds, err := r.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Incr(ctx, "c")
		p.Incr(ctx, "c")
		p.Get(ctx, "c")
		return nil
	})
	check("multi", []any{len(cmds), err, cmds[2].(*redis.StringCmd).Val()}, []any{3, nil, "2"})

	p := r.Pipeline()
	for i := 0; i < 1000; i++ {
		p.Set(ctx, fmt.Sprintf("key:%d", i), i, 0)
	}
	cmds, err = p.Exec(ctx)
	check("pipeline", []any{len(cmds), err}, []any{1000, nil})
	check("mget", r.MGet(ctx, "key:1", "key:999", "nope").Val(), []any{"1", "999", nil})

	for i := 0; i < 5; i++ {
		err := r.Watch(ctx, func(tx *redis.Tx) error {
			n, _ := tx.Get(ctx, "w").Int()
			_, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.Set(ctx, "w", n+1, 0)
				return nil
			})
			return err
		}, "w")
		check("watch transaction", err, nil)
	}
	check("watch", r.Get(ctx, "w").Val(), "5")

	script := redis.NewScript("return redis.call('incrby', KEYS[1], ARGV[1])")
	check("script", script.Run(ctx, r, []string{"s"}, 5).Val(), int64(5))
	check("script again", script.Run(ctx, r, []string{"s"}, 5).Val(), int64(10))
	r.ScriptFlush(ctx)
	check("script after flush", script.Run(ctx, r, []string{"s"}, 1).Val(), int64(11))

	n := 0
	it := r.Scan(ctx, 0, "key:*", 100).Iterator()
	for it.Next(ctx) {
		n++
	}
	check("scan", []any{n, it.Err()}, []any{1000, nil})
	check("keys", len(r.Keys(ctx, "key:1*").Val()), 111)

	_, err = r.BLPop(ctx, time.Second, "q").Result()
	check("blpop timeout", errors.Is(err, redis.Nil), true)
	go func() {
		time.Sleep(300 * time.Millisecond)
		r.RPush(ctx, "q", "x")
	}()
	check("blpop", r.BLPop(ctx, 5*time.Second, "q").Val(), []string{"q", "x"})

	ps := r.Subscribe(ctx, "ch")
	_, err = ps.Receive(ctx)
	check("subscribe", err, nil)
	check("publish", r.Publish(ctx, "ch", "hello").Val(), int64(1))
	m, err := ps.ReceiveMessage(ctx)
	check("message", []any{m.Channel, m.Payload, err}, []any{"ch", "hello", nil})
	check("numsub", r.PubSubNumSub(ctx, "ch").Val(), map[string]int64{"ch": 1})
	check("unsubscribe", ps.Close(), nil)

	check("info", len(r.Info(ctx, "server").Val()) > 0, true)
	check("dbsize", r.DBSize(ctx).Val(), int64(1005))
	check("xadd", r.XAdd(ctx, &redis.XAddArgs{Stream: "st", ID: "1-1", Values: []string{"f", "v"}}).Val(), "1-1")
	streams := r.XRead(ctx, &redis.XReadArgs{Streams: []string{"st", "0"}, Block: 100 * time.Millisecond}).Val()
	check("xread", fmt.Sprint(streams), "[{st [{1-1 map[f:v] 0 0}]}]")
	check("unknown command", fmt.Sprint(r.Do(ctx, "NOSUCHCMD").Err()),
		"ERR unknown command 'NOSUCHCMD', with args beginning with: ")
	check("zadd", r.ZAdd(ctx, "z", redis.Z{Score: 1, Member: "a"}, redis.Z{Score: 2, Member: "b"}).Val(), int64(2))
	check("zrange", r.ZRangeWithScores(ctx, "z", 0, -1).Val(), []redis.Z{{Score: 1, Member: "a"}, {Score: 2, Member: "b"}})

	// Sixteen goroutines share the pool of eight connections.
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				r.Incr(ctx, "counter")
			}
		}()
	}
	wg.Wait()
	check("goroutines", r.Get(ctx, "counter").Val(), "1600")
	check("pool timeouts", r.PoolStats().Timeouts, uint32(0))
	check("close", r.Close(), nil)
	for _, l := range lines {
		fmt.Println(l)
	}
}
