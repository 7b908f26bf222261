use super::*;

const C2S: Flow = Flow::ClientToServer;
const S2C: Flow = Flow::ServerToClient;

fn run(conn: &mut RedisConnection, chunks: &[(Flow, &[u8])]) -> Vec<Event> {
    let mut out = Vec::new();
    for (flow, bytes) in chunks {
        conn.feed(*flow, bytes, bytes.len() as u64, &mut out);
    }
    out
}

fn feed_capped(
    conn: &mut RedisConnection,
    flow: Flow,
    bytes: &[u8],
    cap: usize,
    out: &mut Vec<Event>,
) {
    let n = bytes.len().min(cap);
    conn.feed(flow, &bytes[..n], bytes.len() as u64, out);
}

/// RESP array of bulk strings, as clients send commands.
fn cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

fn summary(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Event::Request { id, command } => format!("req#{id} {}", command.query_text()),
            Event::Response { id, reply, end } => match reply {
                Some(r) => format!(
                    "resp#{id} {:?}{}{} {end:?}",
                    r.kind,
                    r.len.map_or(String::new(), |l| format!(" len={l}")),
                    r.error
                        .as_ref()
                        .map_or(String::new(), |e| format!(" {}: {}", e.code, e.message)),
                ),
                None => format!("resp#{id} - {end:?}"),
            },
        })
        .collect()
}

#[test]
fn get_and_bulk_reply() {
    let mut c = RedisConnection::new();
    let ev = run(
        &mut c,
        &[
            (C2S, b"*2\r\n$3\r\nGET\r\n$6\r\nuser:1\r\n"),
            (S2C, b"$5\r\nalice\r\n"),
        ],
    );
    assert_eq!(
        summary(&ev),
        ["req#0 GET user:1", "resp#0 BulkString len=5 Complete"]
    );
    let Event::Request { command, .. } = &ev[0] else {
        panic!()
    };
    assert_eq!(command.name, "GET");
    assert_eq!(command.arg_count, 1);
    assert_eq!(command.args[0].prefix, b"user:1");
    assert!(!command.inline);
}

fn pipeline() -> (Vec<u8>, Vec<u8>) {
    let reqs = [
        cmd(&[b"SET", b"counter:a", b"10"]),
        cmd(&[b"INCR", b"counter:a"]),
        cmd(&[b"GET", b"missing"]),
        cmd(&[b"HGETALL", b"h"]),
        cmd(&[b"LPUSH", b"l", b"x", b"y"]),
        cmd(&[b"FOO"]),
    ]
    .concat();
    let resps = b"+OK\r\n:11\r\n$-1\r\n*4\r\n$1\r\nf\r\n$1\r\nv\r\n$2\r\nf2\r\n$0\r\n\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n-ERR unknown command 'FOO', with args beginning with: \r\n".to_vec();
    (reqs, resps)
}

#[test]
fn pipeline_pairs_in_order() {
    let (reqs, resps) = pipeline();
    let mut c = RedisConnection::new();
    let ev = run(&mut c, &[(C2S, &reqs), (S2C, &resps)]);
    assert_eq!(
        summary(&ev),
        [
            "req#0 SET counter:a ?",
            "req#1 INCR counter:a",
            "req#2 GET missing",
            "req#3 HGETALL h",
            "req#4 LPUSH l ? ?",
            "req#5 FOO",
            "resp#0 SimpleString Complete",
            "resp#1 Integer Complete",
            "resp#2 Null Complete",
            "resp#3 Array len=4 Complete",
            "resp#4 Error WRONGTYPE: Operation against a key holding the wrong kind of value Complete",
            "resp#5 Error ERR: unknown command 'FOO', with args beginning with:  Complete",
        ]
    );
    assert_eq!(c.desyncs(), 0);
    assert!(c.pending.is_empty());
}

#[test]
fn every_split_point_gives_the_same_events() {
    let (reqs, resps) = pipeline();
    let mut whole = RedisConnection::new();
    let want = run(&mut whole, &[(C2S, &reqs), (S2C, &resps)]);
    for i in 0..=reqs.len() {
        let mut c = RedisConnection::new();
        let ev = run(
            &mut c,
            &[(C2S, &reqs[..i]), (C2S, &reqs[i..]), (S2C, &resps)],
        );
        assert_eq!(ev, want, "request split at {i}");
    }
    for i in 0..=resps.len() {
        for j in [i, (i + 3).min(resps.len()), resps.len()] {
            let mut c = RedisConnection::new();
            let ev = run(
                &mut c,
                &[
                    (C2S, &reqs),
                    (S2C, &resps[..i]),
                    (S2C, &resps[i..j]),
                    (S2C, &resps[j..]),
                ],
            );
            assert_eq!(ev, want, "reply split at {i},{j}");
        }
    }
}

#[test]
fn resp3_types() {
    let mut c = RedisConnection::new();
    let reqs = [
        cmd(&[b"HELLO", b"3"]),
        cmd(&[b"EXISTS", b"k"]),
        cmd(&[b"GET", b"nil"]),
        cmd(&[b"INCRBYFLOAT", b"f", b"1.5"]),
        cmd(&[b"DEBUG", b"PROTOCOL", b"bignum"]),
        cmd(&[b"LATENCY", b"DOCTOR"]),
        cmd(&[b"SMEMBERS", b"s"]),
        cmd(&[b"ZRANGE", b"z", b"0", b"-1"]),
        cmd(&[b"SET", b"x", b"y", b"GET"]),
    ]
    .concat();
    let resps = [
        b"%3\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n$7\r\nmodules\r\n*0\r\n".as_slice(),
        b"#t\r\n",
        b"_\r\n",
        b",3.14\r\n",
        b"(3492890328409238509324850943850943825024385\r\n",
        b"=15\r\ntxt:Some string\r\n",
        // An out-of-band push between replies.
        b">3\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n$0\r\n\r\n",
        b"~2\r\n+a\r\n+b\r\n",
        // An attribute before the reply (the RESP3 spec's example), nested inside too.
        b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n|1\r\n+ttl\r\n:3600\r\n:9543892\r\n",
        b"!21\r\nSYNTAX invalid syntax\r\n",
    ]
    .concat();
    let ev = run(&mut c, &[(C2S, &reqs), (S2C, &resps)]);
    assert_eq!(
        summary(&ev)[9..],
        [
            "resp#0 Map len=3 Complete",
            "resp#1 Boolean Complete",
            "resp#2 Null Complete",
            "resp#3 Double Complete",
            "resp#4 BigNumber Complete",
            "resp#5 VerbatimString len=15 Complete",
            "resp#6 Set len=2 Complete",
            "resp#7 Array len=2 Complete",
            "resp#8 BlobError len=21 SYNTAX: invalid syntax Complete",
        ]
    );
}

#[test]
fn inline_commands() {
    let mut c = RedisConnection::new();
    let ev = run(
        &mut c,
        &[
            (C2S, b"PING\r\n"),
            (S2C, b"+PONG\r\n"),
            (C2S, b"set  a\tb\r\n\r\n"),
            (S2C, b"+OK\r\n"),
        ],
    );
    assert_eq!(
        summary(&ev),
        [
            "req#0 PING",
            "resp#0 SimpleString Complete",
            "req#1 SET a ?",
            "resp#1 SimpleString Complete"
        ]
    );
    let Event::Request { command, .. } = &ev[2] else {
        panic!()
    };
    assert!(command.inline);
    assert_eq!(command.arg_count, 2);
}

#[test]
fn large_values_outside_the_capture_are_skipped_by_count() {
    let value = vec![b'v'; 10_000];
    let mut c = RedisConnection::new();
    let mut ev = Vec::new();
    feed_capped(&mut c, C2S, &cmd(&[b"SET", b"blob", &value]), 512, &mut ev);
    c.feed(S2C, b"+OK\r\n", 5, &mut ev);
    feed_capped(&mut c, C2S, &cmd(&[b"GET", b"blob"]), 512, &mut ev);
    // The reply comes in two syscalls of which only 512 bytes each are captured.
    let reply = [format!("${}\r\n", value.len()).as_bytes(), &value, b"\r\n"].concat();
    let (a, b) = reply.split_at(6000);
    feed_capped(&mut c, S2C, a, 512, &mut ev);
    feed_capped(&mut c, S2C, b, 512, &mut ev);
    assert_eq!(
        summary(&ev),
        [
            "req#0 SET blob ?",
            "resp#0 SimpleString Complete",
            "req#1 GET blob",
            "resp#1 BulkString len=10000 Complete",
        ]
    );
    let Event::Request { command, .. } = &ev[0] else {
        panic!()
    };
    assert_eq!(command.args[1].len, 10_000);
    assert!(command.args[1].is_truncated());
    assert_eq!(command.args[1].prefix.len(), MAX_ARG_PREFIX);
    assert_eq!(c.desyncs(), 0);
}

#[test]
fn lost_reply_ends_unknown_at_the_next_command() {
    let mut c = RedisConnection::new();
    let mut ev = run(&mut c, &[(C2S, &cmd(&[b"LRANGE", b"list", b"0", b"-1"]))]);
    let mut reply = b"*1000\r\n".to_vec();
    for i in 0..1000 {
        let item = format!("item-{i}");
        reply.extend_from_slice(format!("${}\r\n{item}\r\n", item.len()).as_bytes());
    }
    for part in reply.chunks(4096) {
        feed_capped(&mut c, S2C, part, 512, &mut ev);
    }
    assert_eq!(summary(&ev), ["req#0 LRANGE list ? ?"]);
    let mut more = run(&mut c, &[(C2S, &cmd(&[b"PING"])), (S2C, b"+PONG\r\n")]);
    ev.append(&mut more);
    assert_eq!(
        summary(&ev),
        [
            "req#0 LRANGE list ? ?",
            "resp#0 - Unknown",
            "req#1 PING",
            "resp#1 SimpleString Complete"
        ]
    );
    assert_eq!(c.desyncs(), 1);
}

#[test]
fn lost_client_pipeline_discards_unpairable_replies() {
    let mut c = RedisConnection::new();
    let mut ev = Vec::new();
    let reqs: Vec<u8> = (0..100)
        .flat_map(|i| cmd(&[b"SET", format!("key:{i}").as_bytes(), b"value"]))
        .collect();
    feed_capped(&mut c, C2S, &reqs, 200, &mut ev);
    let n_seen = ev.len();
    assert!((4..=6).contains(&n_seen), "{:?}", summary(&ev));
    let replies = b"+OK\r\n".repeat(100);
    c.feed(S2C, &replies, replies.len() as u64, &mut ev);
    let responses = ev
        .iter()
        .filter(|e| matches!(e, Event::Response { .. }))
        .count();
    assert_eq!(responses, n_seen);
    // Back in sync for the next command.
    let mut more = run(
        &mut c,
        &[(C2S, &cmd(&[b"GET", b"key:1"])), (S2C, b"$5\r\nvalue\r\n")],
    );
    assert_eq!(
        summary(&more),
        [
            format!("req#{n_seen} GET key:1"),
            format!("resp#{n_seen} BulkString len=5 Complete")
        ]
    );
    ev.append(&mut more);
}

#[test]
fn pubsub_resp2() {
    let mut c = RedisConnection::new();
    let ev = run(
        &mut c,
        &[
            (C2S, &cmd(&[b"SUBSCRIBE", b"news", b"sports"])),
            (
                S2C,
                b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$6\r\nsports\r\n:2\r\n",
            ),
            (S2C, b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n"),
            (C2S, &cmd(&[b"PING"])),
            (
                S2C,
                b"*3\r\n$8\r\npmessage\r\n$1\r\n*\r\n$4\r\nnews\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n",
            ),
            (C2S, &cmd(&[b"UNSUBSCRIBE"])),
            (
                S2C,
                b"*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:1\r\n*3\r\n$11\r\nunsubscribe\r\n$6\r\nsports\r\n:0\r\n",
            ),
            (C2S, &cmd(&[b"LRANGE", b"l", b"0", b"0"])),
            (S2C, b"*1\r\n$7\r\nmessage\r\n"),
        ],
    );
    assert_eq!(
        summary(&ev),
        [
            "req#0 SUBSCRIBE news sports",
            "resp#0 Array len=3 Complete",
            "req#1 PING",
            "resp#1 Array len=2 Complete",
            "req#2 UNSUBSCRIBE",
            "resp#2 Array len=3 Complete",
            "req#3 LRANGE l ? ?",
            "resp#3 Array len=1 Complete",
        ]
    );
    assert!(!c.is_subscribed());
}

#[test]
fn pubsub_resp3_pushes() {
    let mut c = RedisConnection::new();
    let ev = run(
        &mut c,
        &[
            (C2S, &cmd(&[b"SUBSCRIBE", b"ch"])),
            (S2C, b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"),
            (C2S, &cmd(&[b"GET", b"k"])),
            (
                S2C,
                b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n$1\r\nv\r\n",
            ),
        ],
    );
    assert_eq!(
        summary(&ev),
        [
            "req#0 SUBSCRIBE ch",
            "resp#0 Push len=3 Complete",
            "req#1 GET k",
            "resp#1 BulkString len=1 Complete"
        ]
    );
}

#[test]
fn multi_exec() {
    let mut c = RedisConnection::new();
    let reqs = [
        cmd(&[b"MULTI"]),
        cmd(&[b"INCR", b"a"]),
        cmd(&[b"INCR", b"b"]),
        cmd(&[b"EXEC"]),
    ]
    .concat();
    let ev = run(
        &mut c,
        &[
            (C2S, &reqs),
            (S2C, b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n:1\r\n"),
        ],
    );
    assert_eq!(
        summary(&ev)[4..],
        [
            "resp#0 SimpleString Complete",
            "resp#1 SimpleString Complete",
            "resp#2 SimpleString Complete",
            "resp#3 Array len=2 Complete"
        ]
    );
}

#[test]
fn nesting_is_bounded() {
    let mut c = RedisConnection::new();
    let mut ev = run(&mut c, &[(C2S, &cmd(&[b"EVAL", b"return x", b"0"]))]);
    let deep = b"*1\r\n".repeat(MAX_DEPTH + 5);
    c.feed(S2C, &deep, deep.len() as u64, &mut ev);
    assert_eq!(c.desyncs(), 1);
    c.close(&mut ev);
    assert_eq!(summary(&ev), ["req#0 EVAL ? ?", "resp#0 - Unknown"]);
    // Exactly at the limit is fine.
    let mut c = RedisConnection::new();
    let mut ev = run(&mut c, &[(C2S, &cmd(&[b"EVAL", b"return x", b"0"]))]);
    let mut ok = b"*1\r\n".repeat(MAX_DEPTH);
    ok.extend_from_slice(b":1\r\n");
    c.feed(S2C, &ok, ok.len() as u64, &mut ev);
    assert_eq!(summary(&ev)[1], "resp#0 Array len=1 Complete");
}

#[test]
fn close_and_gap() {
    let mut c = RedisConnection::new();
    let mut ev = run(&mut c, &[(C2S, &cmd(&[b"BLPOP", b"q", b"0"]))]);
    c.close(&mut ev);
    assert_eq!(summary(&ev), ["req#0 BLPOP q ?", "resp#0 - Incomplete"]);

    let mut c = RedisConnection::new();
    let mut ev = run(
        &mut c,
        &[(C2S, &cmd(&[b"GET", b"a"])), (S2C, b"$10\r\n01234")],
    );
    c.gap(S2C);
    c.feed(S2C, b"+OK\r\n", 5, &mut ev); // ignored: framing unknown until the next command
    let mut more = run(
        &mut c,
        &[(C2S, &cmd(&[b"GET", b"b"])), (S2C, b"$1\r\nx\r\n")],
    );
    ev.append(&mut more);
    assert_eq!(
        summary(&ev),
        [
            "req#0 GET a",
            "resp#0 - Unknown",
            "req#1 GET b",
            "resp#1 BulkString len=1 Complete"
        ]
    );
}

#[test]
fn pending_is_bounded() {
    let mut c = RedisConnection::new();
    let mut ev = Vec::new();
    let one = cmd(&[b"GET", b"k"]);
    let many = one.repeat(MAX_PENDING + 100);
    c.feed(C2S, &many, many.len() as u64, &mut ev);
    assert_eq!(ev.len(), MAX_PENDING);
    assert!(c.pending.len() <= MAX_PENDING + 1);
    let replies = b":1\r\n".repeat(MAX_PENDING + 100);
    c.feed(S2C, &replies, replies.len() as u64, &mut ev);
    assert_eq!(ev.len(), 2 * MAX_PENDING);
    assert!(c.pending.is_empty());
    let ev = run(&mut c, &[(C2S, &one), (S2C, b":2\r\n")]);
    assert_eq!(
        summary(&ev),
        [
            format!("req#{MAX_PENDING} GET k"),
            format!("resp#{MAX_PENDING} Integer Complete")
        ]
    );
}

#[test]
fn garbage_does_not_pair() {
    let mut c = RedisConnection::new();
    let ev = run(
        &mut c,
        &[
            (C2S, b"\x16\x03\x01garbage"),
            (S2C, b"+OK\r\n"),
            (C2S, &cmd(&[b"PING"])),
            (S2C, b"+PONG\r\n"),
        ],
    );
    assert_eq!(summary(&ev), ["req#0 PING", "resp#0 SimpleString Complete"]);
}
