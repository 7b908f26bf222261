//! `db.query.text` sanitization: literals out, structure kept.
//!
//! SQL ([`sanitize_sql`]), MySQL dialect:
//! - string literals (`'…'`, `"…"`, with `\` escapes and doubled quotes, `N'…'`, `_utf8mb4'…'`),
//!   numbers (`42`, `-3.5e2` when the sign is unary, `.5`, `0x1F`, `0b101`), and hex/bit strings
//!   (`X'AB'`, `b'01'`) become `?`;
//! - comments (`-- `, `#`, `/* … */`, including optimizer hints and `/*! … */`) are always dropped
//!   (they often carry request ids or sqlcommenter tags);
//! - identifiers (also `` `quoted` `` and ones holding digits, like `t1`), keywords, operators,
//!   placeholders (`?`, `:name`, `$1`), `NULL`, `TRUE` and `FALSE` are kept;
//! - runs of whitespace become one space; `IN (?, ?, ?)` becomes `IN (?)`;
//! - an unterminated literal (a capture cut mid-string) becomes `?`.
//!
//! Redis ([`sanitize_redis`]): per the OpenTelemetry database conventions, `db.query.text` for
//! Redis is the command line with values replaced by `?`. Loupe keeps the command name, the
//! subcommand of container commands (`CLIENT SETNAME`, `CONFIG GET`, `XGROUP CREATE`), and the
//! **key** (and channel) arguments, which name what was touched; every other argument — values,
//! fields, members, scores, options, passwords, scripts — becomes `?`. Commands not in the table
//! keep only their name and get `?` for each argument, so nothing unknown leaks.

use std::borrow::Cow;

/// Longest SQL input considered, in bytes; the rest is ignored.
pub const MAX_SQL_INPUT: usize = 64 * 1024;
/// Longest Redis query text produced, in bytes (then ` …`).
pub const MAX_REDIS_TEXT: usize = 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Prev {
    Start,
    Keyword,
    Ident,
    Value,
    Operator,
    Open,
    Comma,
}

/// Words after which a `-`/`+` is a sign, not a binary operator.
const SIGN_CONTEXT_KEYWORDS: &[&str] = &[
    "SELECT",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "IN",
    "VALUES",
    "VALUE",
    "SET",
    "THEN",
    "WHEN",
    "ELSE",
    "RETURN",
    "LIMIT",
    "OFFSET",
    "BY",
    "BETWEEN",
    "IS",
    "LIKE",
    "ON",
    "AS",
    "CASE",
    "INTERVAL",
    "DEFAULT",
    "HAVING",
    "XOR",
    "DIV",
    "MOD",
    "IF",
    "ELSEIF",
    "REGEXP",
    "RLIKE",
    "ESCAPE",
    "UNION",
    "ALL",
    "DISTINCT",
    "AGAINST",
    "RETURNING",
    "USING",
];

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Length of a numeric literal starting at `i` (no sign), or 0 when there is none. A "number"
/// directly followed by identifier characters (`1abc`) is an identifier, reported as 0.
fn number_len(b: &[u8], i: usize) -> usize {
    let at = |k: usize| b.get(k).copied();
    let mut j = i;
    let is_digit = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_digit());
    if at(j) == Some(b'0') && matches!(at(j + 1), Some(b'x' | b'X')) {
        j += 2;
        let start = j;
        while at(j).is_some_and(|c| c.is_ascii_hexdigit()) {
            j += 1;
        }
        if j == start {
            return 0;
        }
    } else if at(j) == Some(b'0')
        && matches!(at(j + 1), Some(b'b' | b'B'))
        && matches!(at(j + 2), Some(b'0' | b'1'))
    {
        j += 2;
        while matches!(at(j), Some(b'0' | b'1')) {
            j += 1;
        }
    } else {
        let start = j;
        while is_digit(at(j)) {
            j += 1;
        }
        if at(j) == Some(b'.') && (j > start || is_digit(at(j + 1))) {
            j += 1;
            while is_digit(at(j)) {
                j += 1;
            }
        }
        if j == start {
            return 0;
        }
        if matches!(at(j), Some(b'e' | b'E')) {
            let mut k = j + 1;
            if matches!(at(k), Some(b'+' | b'-')) {
                k += 1;
            }
            if is_digit(at(k)) {
                while is_digit(at(k)) {
                    k += 1;
                }
                j = k;
            }
        }
    }
    if at(j).is_some_and(is_word_byte) {
        return 0;
    }
    j - i
}

/// End (exclusive) of a quoted run starting at `i` (the opening quote), honouring backslash
/// escapes (when `backslash`) and doubled quotes. Unterminated runs end at the input's end.
fn quoted_end(b: &[u8], i: usize, quote: u8, backslash: bool) -> usize {
    let mut j = i + 1;
    while let Some(&c) = b.get(j) {
        if backslash && c == b'\\' {
            j += 2;
            continue;
        }
        if c == quote {
            if b.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

struct SqlOut {
    out: Vec<u8>,
    space: bool,
    prev: Prev,
    /// Set right after `IN`.
    after_in: bool,
    /// An `IN (` list being collapsed: where its `(` was written and whether it is still only
    /// `?` and commas.
    in_list: Option<(usize, bool, bool)>,
}

impl SqlOut {
    fn emit(&mut self, tok: &[u8], prev: Prev) {
        if self.space && !self.out.is_empty() {
            self.out.push(b' ');
        }
        self.space = false;
        // IN-list tracking.
        if let Some((start, ok, seen_value)) = self.in_list {
            match (tok, prev) {
                (b"?", Prev::Value) => self.in_list = Some((start, ok, true)),
                (b",", _) => {}
                (b")", _) => {
                    self.in_list = None;
                    if ok && seen_value {
                        self.out.truncate(start);
                        self.out.extend_from_slice(b"(?)");
                        self.prev = Prev::Ident;
                        self.after_in = false;
                        return;
                    }
                }
                _ => self.in_list = None,
            }
        }
        if tok == b"(" && self.after_in {
            self.in_list = Some((self.out.len(), true, false));
        }
        self.after_in = prev == Prev::Keyword && tok.eq_ignore_ascii_case(b"IN");
        self.out.extend_from_slice(tok);
        self.prev = prev;
    }
}

/// Replaces SQL literals with `?` (see the module docs for the exact rules).
pub fn sanitize_sql(sql: &str) -> String {
    let mut cut = sql.len().min(MAX_SQL_INPUT);
    while !sql.is_char_boundary(cut) {
        cut -= 1;
    }
    let b = sql.as_bytes().get(..cut).unwrap_or_default();
    let mut o = SqlOut {
        out: Vec::with_capacity(b.len()),
        space: false,
        prev: Prev::Start,
        after_in: false,
        in_list: None,
    };
    let mut i = 0usize;
    while let Some(&c) = b.get(i) {
        let next = b.get(i + 1).copied();
        match c {
            b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c => {
                o.space = true;
                i += 1;
            }
            b'#' => {
                i = crate::util::find_byte(b, i, b'\n').unwrap_or(b.len());
                o.space = true;
            }
            b'-' if next == Some(b'-') && b.get(i + 2).is_none_or(|c| c.is_ascii_whitespace()) => {
                i = crate::util::find_byte(b, i, b'\n').unwrap_or(b.len());
                o.space = true;
            }
            b'/' if next == Some(b'*') => {
                let mut j = i + 2;
                loop {
                    match b.get(j) {
                        None => break,
                        Some(b'*') if b.get(j + 1) == Some(&b'/') => {
                            j += 2;
                            break;
                        }
                        Some(_) => j += 1,
                    }
                }
                i = j;
                o.space = true;
            }
            b'\'' | b'"' => {
                i = quoted_end(b, i, c, true);
                o.emit(b"?", Prev::Value);
            }
            b'`' => {
                let end = quoted_end(b, i, b'`', false);
                o.emit(b.get(i..end).unwrap_or_default(), Prev::Ident);
                i = end;
            }
            b'-' | b'+'
                if matches!(
                    o.prev,
                    Prev::Start | Prev::Keyword | Prev::Operator | Prev::Open | Prev::Comma
                ) && number_len(b, i + 1) > 0 =>
            {
                i += 1 + number_len(b, i + 1);
                o.emit(b"?", Prev::Value);
            }
            b'0'..=b'9' | b'.' if number_len(b, i) > 0 => {
                i += number_len(b, i);
                o.emit(b"?", Prev::Value);
            }
            c if is_word_byte(c) => {
                let mut j = i;
                while b.get(j).copied().is_some_and(is_word_byte) {
                    j += 1;
                }
                let word = b.get(i..j).unwrap_or_default();
                let introducer = word.eq_ignore_ascii_case(b"N")
                    || word.eq_ignore_ascii_case(b"X")
                    || word.eq_ignore_ascii_case(b"B")
                    || (word.first() == Some(&b'_') && word.len() > 1);
                if introducer && b.get(j) == Some(&b'\'') {
                    i = quoted_end(b, j, b'\'', true);
                    o.emit(b"?", Prev::Value);
                    continue;
                }
                let is_kw = SIGN_CONTEXT_KEYWORDS
                    .iter()
                    .any(|k| k.as_bytes().eq_ignore_ascii_case(word));
                o.emit(word, if is_kw { Prev::Keyword } else { Prev::Ident });
                i = j;
            }
            b'(' => {
                o.emit(b"(", Prev::Open);
                i += 1;
            }
            b')' => {
                o.emit(b")", Prev::Ident);
                i += 1;
            }
            b',' => {
                o.emit(b",", Prev::Comma);
                i += 1;
            }
            b'?' => {
                o.emit(b"?", Prev::Value);
                i += 1;
            }
            _ => {
                o.emit(&[c], Prev::Operator);
                i += 1;
            }
        }
    }
    String::from_utf8(o.out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The SQL statement's operation (`SELECT`, `INSERT`, …): its first keyword, uppercased, after
/// comments, whitespace and opening parentheses. `None` if it does not start with a word of
/// 1–32 ASCII letters.
pub fn sql_operation(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let mut i = 0usize;
    loop {
        match b.get(i)? {
            c if c.is_ascii_whitespace() || *c == b'(' => i += 1,
            b'#' => i = crate::util::find_byte(b, i, b'\n')?,
            b'-' if b.get(i + 1) == Some(&b'-') => i = crate::util::find_byte(b, i, b'\n')?,
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let rest = b.get(i + 2..)?;
                let end = rest.windows(2).position(|w| w == b"*/")?;
                i += 2 + end + 2;
            }
            _ => break,
        }
    }
    let rest = b.get(i..)?;
    let len = rest.iter().take_while(|c| c.is_ascii_alphabetic()).count();
    if len == 0 || len > 32 || rest.get(len).is_some_and(|&c| is_word_byte(c)) {
        return None;
    }
    let word = rest.get(..len)?;
    Some(String::from_utf8_lossy(word).to_ascii_uppercase())
}

/// Which Redis arguments are keys.
#[derive(Clone, Copy)]
enum Keys {
    /// No key arguments.
    None,
    /// The first argument.
    First,
    /// The first two arguments.
    FirstTwo,
    /// Every argument.
    All,
    /// Every argument but the last (blocking pops' timeout).
    AllButLast,
    /// Arguments 0, 2, 4, … (`MSET k v k v`).
    EveryOther,
    /// `EVAL script numkeys key…`: keys after the count.
    NumKeysAt1,
    /// `XREAD … STREAMS k1 k2 id1 id2`: the first half after `STREAMS`.
    Streams,
}

/// `(command, keeps a subcommand, key positions after the subcommand)`.
fn redis_spec(cmd: &str) -> Option<(bool, Keys)> {
    use Keys::*;
    let c = cmd.to_ascii_uppercase();
    let spec = match c.as_str() {
        "PING" | "ECHO" | "AUTH" | "HELLO" | "SELECT" | "QUIT" | "RESET" | "MULTI" | "EXEC"
        | "DISCARD" | "UNWATCH" | "DBSIZE" | "FLUSHDB" | "FLUSHALL" | "INFO" | "TIME" | "SAVE"
        | "BGSAVE" | "BGREWRITEAOF" | "LASTSAVE" | "RANDOMKEY" | "SCAN" | "KEYS" | "WAIT"
        | "READONLY" | "READWRITE" | "ROLE" | "SWAPDB" | "SHUTDOWN" | "MONITOR" | "SYNC"
        | "PSYNC" | "REPLICAOF" | "SLAVEOF" | "FAILOVER" => (false, None),
        "GET" | "SET" | "SETNX" | "SETEX" | "PSETEX" | "GETSET" | "GETDEL" | "GETEX" | "APPEND"
        | "STRLEN" | "INCR" | "DECR" | "INCRBY" | "DECRBY" | "INCRBYFLOAT" | "GETRANGE"
        | "SETRANGE" | "SUBSTR" | "GETBIT" | "SETBIT" | "BITCOUNT" | "BITPOS" | "BITFIELD"
        | "BITFIELD_RO" | "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" | "EXPIRETIME"
        | "PEXPIRETIME" | "TTL" | "PTTL" | "PERSIST" | "TYPE" | "DUMP" | "RESTORE" | "SORT"
        | "SORT_RO" | "HSET" | "HGET" | "HMSET" | "HMGET" | "HDEL" | "HEXISTS" | "HGETALL"
        | "HKEYS" | "HVALS" | "HLEN" | "HINCRBY" | "HINCRBYFLOAT" | "HSETNX" | "HSTRLEN"
        | "HSCAN" | "HRANDFIELD" | "HEXPIRE" | "HPEXPIRE" | "HTTL" | "HPERSIST" | "HGETDEL"
        | "HGETEX" | "HSETEX" | "LPUSH" | "RPUSH" | "LPUSHX" | "RPUSHX" | "LPOP" | "RPOP"
        | "LLEN" | "LRANGE" | "LINDEX" | "LSET" | "LREM" | "LTRIM" | "LINSERT" | "LPOS"
        | "SADD" | "SREM" | "SMEMBERS" | "SISMEMBER" | "SMISMEMBER" | "SCARD" | "SPOP"
        | "SRANDMEMBER" | "SSCAN" | "ZADD" | "ZREM" | "ZRANGE" | "ZREVRANGE" | "ZRANGEBYSCORE"
        | "ZREVRANGEBYSCORE" | "ZRANGEBYLEX" | "ZREVRANGEBYLEX" | "ZSCORE" | "ZMSCORE"
        | "ZINCRBY" | "ZCARD" | "ZCOUNT" | "ZRANK" | "ZREVRANK" | "ZSCAN" | "ZPOPMIN"
        | "ZPOPMAX" | "ZREMRANGEBYSCORE" | "ZREMRANGEBYRANK" | "ZREMRANGEBYLEX" | "ZLEXCOUNT"
        | "ZRANDMEMBER" | "PFADD" | "GEOADD" | "GEOPOS" | "GEODIST" | "GEOHASH" | "GEOSEARCH"
        | "GEORADIUS" | "GEORADIUSBYMEMBER" | "XADD" | "XLEN" | "XRANGE" | "XREVRANGE" | "XDEL"
        | "XTRIM" | "XACK" | "XCLAIM" | "XAUTOCLAIM" | "XPENDING" | "XSETID" | "PUBLISH"
        | "SPUBLISH" | "JSON.GET" | "JSON.SET" | "JSON.DEL" => (false, First),
        "RENAME" | "RENAMENX" | "RPOPLPUSH" | "SMOVE" | "LMOVE" | "BLMOVE" | "COPY"
        | "BRPOPLPUSH" | "GEOSEARCHSTORE" | "ZRANGESTORE" => (false, FirstTwo),
        "DEL" | "UNLINK" | "EXISTS" | "TOUCH" | "MGET" | "WATCH" | "PFCOUNT" | "PFMERGE"
        | "SINTER" | "SUNION" | "SDIFF" | "SINTERSTORE" | "SUNIONSTORE" | "SDIFFSTORE"
        | "SUBSCRIBE" | "UNSUBSCRIBE" | "PSUBSCRIBE" | "PUNSUBSCRIBE" | "SSUBSCRIBE"
        | "SUNSUBSCRIBE" => (false, All),
        "BLPOP" | "BRPOP" | "BZPOPMIN" | "BZPOPMAX" => (false, AllButLast),
        "MSET" | "MSETNX" => (false, EveryOther),
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => (false, NumKeysAt1),
        "XREAD" | "XREADGROUP" => (false, Streams),
        "OBJECT" | "MEMORY" | "XGROUP" | "XINFO" => (true, First),
        "CLIENT" | "CONFIG" | "CLUSTER" | "SCRIPT" | "FUNCTION" | "ACL" | "COMMAND" | "DEBUG"
        | "MODULE" | "SLOWLOG" | "LATENCY" | "PUBSUB" => (true, None),
        _ => return Option::None,
    };
    Some(spec)
}

fn key_mask(keys: Keys, args: &[&[u8]]) -> Vec<bool> {
    let n = args.len();
    let mut mask = vec![false; n];
    match keys {
        Keys::None => {}
        Keys::First => mask.iter_mut().take(1).for_each(|m| *m = true),
        Keys::FirstTwo => mask.iter_mut().take(2).for_each(|m| *m = true),
        Keys::All => mask.iter_mut().for_each(|m| *m = true),
        Keys::AllButLast => mask
            .iter_mut()
            .take(n.saturating_sub(1))
            .for_each(|m| *m = true),
        Keys::EveryOther => mask.iter_mut().step_by(2).for_each(|m| *m = true),
        Keys::NumKeysAt1 => {
            let count = args
                .get(1)
                .and_then(|a| crate::util::parse_u64(a))
                .and_then(|c| usize::try_from(c).ok())
                .unwrap_or(0);
            mask.iter_mut().skip(2).take(count).for_each(|m| *m = true);
        }
        Keys::Streams => {
            if let Some(pos) = args.iter().position(|a| a.eq_ignore_ascii_case(b"STREAMS")) {
                let rest = n - pos - 1;
                mask.iter_mut()
                    .skip(pos + 1)
                    .take(rest / 2)
                    .for_each(|m| *m = true);
            }
        }
    }
    mask
}

/// The sanitized Redis command line: `command [SUBCOMMAND] key ? ?…` (see the module docs).
/// `args` are the arguments after the command name, possibly truncated prefixes.
pub fn sanitize_redis<A: AsRef<[u8]>>(command: &str, args: &[A]) -> String {
    let args: Vec<&[u8]> = args.iter().map(AsRef::as_ref).collect();
    let mut out = String::with_capacity(64);
    let name = command.to_ascii_uppercase();
    out.push_str(name.get(..name.len().min(64)).unwrap_or(""));
    let (has_sub, keys) = redis_spec(&name).unwrap_or((false, Keys::None));
    let mut rest: &[&[u8]] = &args;
    if has_sub && let Some((sub, tail)) = args.split_first() {
        let plain = !sub.is_empty()
            && sub.len() <= 32
            && sub
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_');
        out.push(' ');
        if plain {
            out.push_str(&String::from_utf8_lossy(sub).to_ascii_uppercase());
        } else {
            out.push('?');
        }
        rest = tail;
    }
    let mask = key_mask(keys, rest);
    for (arg, is_key) in rest.iter().zip(mask) {
        let piece: Cow<'_, str> = if is_key {
            String::from_utf8_lossy(crate::util::trim_partial_utf8(arg))
        } else {
            Cow::Borrowed("?")
        };
        if out.len() + 1 + piece.len() > MAX_REDIS_TEXT {
            out.push_str(" …");
            return out;
        }
        out.push(' ');
        out.push_str(&piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_literals() {
        let cases = [
            (
                "SELECT * FROM users WHERE id = 42",
                "SELECT * FROM users WHERE id = ?",
            ),
            (
                "SELECT * FROM t WHERE name = 'O''Brien' AND x=\"a\\\"b\"",
                "SELECT * FROM t WHERE name = ? AND x=?",
            ),
            (
                "SELECT a FROM t1 WHERE b = -5 AND c = +3.5e-2",
                "SELECT a FROM t1 WHERE b = ? AND c = ?",
            ),
            (
                "SELECT a-1, a - 1, (-1), f(1,-2)",
                "SELECT a-?, a - ?, (?), f(?,?)",
            ),
            (
                "SELECT 0x1F, 0b101, X'AB', b'01', .5, 1.",
                "SELECT ?, ?, ?, ?, ?, ?",
            ),
            (
                "SELECT N'x', _utf8mb4'y', _utf8mb4 'z'",
                "SELECT ?, ?, _utf8mb4 ?",
            ),
            (
                "SELECT `order`, `we``ird 1` FROM `db`.`t2`",
                "SELECT `order`, `we``ird 1` FROM `db`.`t2`",
            ),
            (
                "SELECT col1, t2.c3 FROM t2 WHERE 1abc = 2",
                "SELECT col1, t2.c3 FROM t2 WHERE 1abc = ?",
            ),
            (
                "SELECT * FROM t WHERE id IN (1, 2,3)",
                "SELECT * FROM t WHERE id IN (?)",
            ),
            (
                "SELECT * FROM t WHERE id in ('a','b')",
                "SELECT * FROM t WHERE id in (?)",
            ),
            (
                "SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE x = 1)",
                "SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE x = ?)",
            ),
            (
                "SELECT * FROM t WHERE (a, b) IN ((1, 2), (3, 4))",
                "SELECT * FROM t WHERE (a, b) IN ((?, ?), (?, ?))",
            ),
            (
                "INSERT INTO t (a, b) VALUES (1, 'x'), (2, NULL)",
                "INSERT INTO t (a, b) VALUES (?, ?), (?, NULL)",
            ),
            (
                "SELECT /* comment 1 */ a -- trailing 2\nFROM t # hash 3\nWHERE b = ?",
                "SELECT a FROM t WHERE b = ?",
            ),
            (
                "SELECT /*+ MAX_EXECUTION_TIME(1000) */ a FROM t",
                "SELECT a FROM t",
            ),
            ("SELECT a--1 FROM t", "SELECT a-? FROM t"),
            ("  SELECT\n\t a \r\n FROM   t  ", "SELECT a FROM t"),
            (
                "SELECT * FROM t WHERE a = :id AND b = $1 AND c = @var",
                "SELECT * FROM t WHERE a = :id AND b = $1 AND c = @var",
            ),
            ("SELECT 'unterminated", "SELECT ?"),
            ("SELECT TRUE, FALSE, NULL", "SELECT TRUE, FALSE, NULL"),
            (
                "UPDATE t SET a = 1e10, b = 'é' WHERE ü = 3",
                "UPDATE t SET a = ?, b = ? WHERE ü = ?",
            ),
            (
                "SELECT * FROM t LIMIT 10 OFFSET 20",
                "SELECT * FROM t LIMIT ? OFFSET ?",
            ),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize_sql(input), want, "{input}");
        }
    }

    #[test]
    fn sql_idempotent_and_bounded() {
        let inputs = [
            "SELECT * FROM t WHERE id IN (1,2) AND x = -1",
            "INSERT INTO `a` VALUES ('x', 0x1)",
        ];
        for i in inputs {
            let once = sanitize_sql(i);
            assert_eq!(sanitize_sql(&once), once);
        }
        let big = format!("SELECT '{}'", "é".repeat(MAX_SQL_INPUT));
        assert_eq!(sanitize_sql(&big), "SELECT ?");
    }

    #[test]
    fn operation() {
        assert_eq!(sql_operation("select 1").as_deref(), Some("SELECT"));
        assert_eq!(
            sql_operation("  /* x */ (SELECT 1) UNION (SELECT 2)").as_deref(),
            Some("SELECT")
        );
        assert_eq!(
            sql_operation("-- c\ninsert into t values (1)").as_deref(),
            Some("INSERT")
        );
        assert_eq!(sql_operation("123"), None);
        assert_eq!(sql_operation("select1"), None);
        assert_eq!(sql_operation("/* unterminated"), None);
        assert_eq!(sql_operation(""), None);
    }

    #[test]
    fn redis() {
        let s = |cmd: &str, args: &[&str]| {
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
            sanitize_redis(cmd, &args)
        };
        assert_eq!(s("GET", &["user:1"]), "GET user:1");
        assert_eq!(s("set", &["k", "secret", "EX", "10"]), "SET k ? ? ?");
        assert_eq!(s("HSET", &["h", "f", "v"]), "HSET h ? ?");
        assert_eq!(s("MSET", &["a", "1", "b", "2"]), "MSET a ? b ?");
        assert_eq!(s("DEL", &["a", "b"]), "DEL a b");
        assert_eq!(s("BLPOP", &["q1", "q2", "0"]), "BLPOP q1 q2 ?");
        assert_eq!(s("AUTH", &["user", "pw"]), "AUTH ? ?");
        assert_eq!(
            s("EVAL", &["return 1", "2", "k1", "k2", "a"]),
            "EVAL ? ? k1 k2 ?"
        );
        assert_eq!(
            s("XREAD", &["COUNT", "2", "STREAMS", "s1", "s2", "0", "0"]),
            "XREAD ? ? ? s1 s2 ? ?"
        );
        assert_eq!(s("CLIENT", &["SETNAME", "app"]), "CLIENT SETNAME ?");
        assert_eq!(s("OBJECT", &["ENCODING", "k"]), "OBJECT ENCODING k");
        assert_eq!(s("CONFIG", &["get maxmemory"]), "CONFIG ?");
        assert_eq!(s("PING", &[]), "PING");
        assert_eq!(s("MYMODULE.CMD", &["a", "b"]), "MYMODULE.CMD ? ?");
        assert_eq!(s("RENAME", &["a", "b"]), "RENAME a b");
        let many: Vec<String> = (0..2000).map(|i| format!("key{i}")).collect();
        let out = sanitize_redis("DEL", &many);
        assert!(out.len() <= MAX_REDIS_TEXT + " …".len());
        assert!(out.ends_with(" …"));
    }
}
