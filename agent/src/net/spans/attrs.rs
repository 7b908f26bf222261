//! Span attributes after the OpenTelemetry semantic conventions (HTTP, database), and the
//! small text helpers they need: addresses, URL paths, hosts, SQL table names.

use std::borrow::Cow;
use std::net::Ipv6Addr;
use std::sync::Arc;

use foldhash::HashMap;

use loupe_collector::traces::{AttrValue, Attribute, Attributes, Text};
use loupe_common::socket::ConnTuple;

/// Longest `url.path` / `url.full` kept, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// Longest `user_agent.original` kept, in bytes.
pub const MAX_USER_AGENT_LEN: usize = 512;
/// Longest status message kept, in bytes.
pub const MAX_STATUS_MESSAGE_LEN: usize = 256;

/// Attributes of one span, in insertion order. Keys are the conventions' static names; values
/// are borrowed when static (`"GET"`, `"http"`), else owned.
#[derive(Debug, Default)]
pub struct Attrs(pub Attributes);

impl Attrs {
    pub fn with_capacity(n: usize) -> Self {
        Self(Attributes::with_capacity(n))
    }

    pub fn str(&mut self, key: &'static str, value: impl Into<Text>) {
        self.push(key, AttrValue::Str(value.into()));
    }

    pub fn int(&mut self, key: &'static str, value: i64) {
        self.push(key, AttrValue::Int(value));
    }

    fn push(&mut self, key: &'static str, value: AttrValue) {
        self.0.push(Attribute {
            key: Cow::Borrowed(key),
            value,
        });
    }
}

/// The text form of a connection address: dotted IPv4 for IPv4-mapped addresses, else IPv6.
pub fn addr_string(addr: &[u8; 16]) -> String {
    let v6 = Ipv6Addr::from(*addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => v6.to_string(),
    }
}

/// Addresses seen in text form, made once and shared by every span that carries them: a host
/// talks to few addresses, and formatting one for every span was a twentieth of the builder's
/// time. Bounded: past [`AddrNames::MAX`] entries it starts over.
#[derive(Debug, Default)]
pub struct AddrNames {
    map: HashMap<[u8; 16], Arc<str>>,
}

impl AddrNames {
    pub const MAX: usize = 4096;

    pub fn get(&mut self, addr: &[u8; 16]) -> Arc<str> {
        if let Some(name) = self.map.get(addr) {
            return name.clone();
        }
        if self.map.len() >= Self::MAX {
            self.map.clear();
        }
        let name: Arc<str> = addr_string(addr).into();
        self.map.insert(*addr, name.clone());
        name
    }

    /// The local end `(address, port)` when known.
    pub fn local_end(&mut self, t: &ConnTuple) -> Option<(Arc<str>, u16)> {
        (t.local_port != 0).then(|| (self.get(&t.local_addr), t.local_port))
    }

    /// The remote end `(address, port)` when known.
    pub fn remote_end(&mut self, t: &ConnTuple) -> Option<(Arc<str>, u16)> {
        (t.remote_port != 0 && t.remote_addr != [0; 16])
            .then(|| (self.get(&t.remote_addr), t.remote_port))
    }
}

/// The `http.route` and span name of server requests, made once per route and method and
/// shared by every span that carries them: inferring the route into a new string and formatting
/// the name for every span were a good part of the builder's allocations. Bounded: past
/// [`RouteNames::MAX`] routes it starts over.
#[derive(Debug, Default)]
pub struct RouteNames {
    /// The route of the current target, inferred in place.
    scratch: String,
    map: HashMap<Box<str>, RouteName>,
}

#[derive(Debug)]
struct RouteName {
    route: Arc<str>,
    /// `{method} {route}` by the name's method (`HTTP` for non-standard ones).
    names: Vec<(&'static str, Arc<str>)>,
}

impl RouteNames {
    pub const MAX: usize = 1024;

    /// The route inferred from `target` and the span name `{method} {route}`.
    pub fn get(&mut self, method: &'static str, target: &str) -> (Arc<str>, Arc<str>) {
        loupe_protocols::route::infer_route_into(target, &mut self.scratch);
        if !self.map.contains_key(self.scratch.as_str()) && self.map.len() >= Self::MAX {
            self.map.clear();
        }
        let entry = match self.map.get_mut(self.scratch.as_str()) {
            Some(e) => e,
            None => self
                .map
                .entry(self.scratch.as_str().into())
                .or_insert_with(|| RouteName {
                    route: self.scratch.as_str().into(),
                    names: Vec::new(),
                }),
        };
        let name = match entry.names.iter().find(|(m, _)| *m == method) {
            Some((_, name)) => name.clone(),
            None => {
                let name: Arc<str> = format!("{method} {}", entry.route).into();
                entry.names.push((method, name.clone()));
                name
            }
        };
        (entry.route.clone(), name)
    }
}

/// A number as text without allocating (`"200"`): status codes and ports in RED labels and
/// `error.type`, lengths in RED series keys.
#[derive(Debug, Clone, Copy)]
pub struct Decimal {
    digits: [u8; 20],
    start: u8,
}

impl Decimal {
    pub fn new(n: impl Into<u64>) -> Self {
        let mut digits = [b'0'; 20];
        let mut n: u64 = n.into();
        let mut start = digits.len();
        loop {
            start -= 1;
            if let Some(d) = digits.get_mut(start) {
                *d = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 || start == 0 {
                break;
            }
        }
        Self {
            digits,
            start: start as u8,
        }
    }

    pub fn as_str(&self) -> &str {
        let digits = self
            .digits
            .get(usize::from(self.start)..)
            .unwrap_or_default();
        std::str::from_utf8(digits).unwrap_or_default()
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The path of a request target, without query or fragment: origin-form `/a?b` → `/a`,
/// absolute-form `http://h/a?b` → `/a`, `*` → `*`; `None` for authority-form (`CONNECT`).
pub fn url_path(target: &str) -> Option<&str> {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let t = &target[..end];
    if t.starts_with('/') || t == "*" {
        return Some(cut(t, MAX_URL_LEN));
    }
    let rest = t
        .strip_prefix("http://")
        .or_else(|| t.strip_prefix("https://"))?;
    Some(match rest.find('/') {
        Some(i) => cut(&rest[i..], MAX_URL_LEN),
        None => "/",
    })
}

/// `Host` header → `(host, explicit port)`; brackets of IPv6 literals removed.
pub fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    let host = host.trim();
    if host.is_empty() || host.len() > 255 {
        return None;
    }
    if let Some(rest) = host.strip_prefix('[') {
        let close = rest.find(']')?;
        let name = &rest[..close];
        let port = rest[close + 1..]
            .strip_prefix(':')
            .and_then(|p| p.parse().ok());
        return Some((name, port));
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => Some((name, port.parse().ok())),
        _ => Some((host, None)),
    }
}

/// The `url.full` of an HTTP client request: `http://authority/path` (`https://` over TLS; no
/// query), from the absolute-form target, else the `Host` header, else the remote address.
pub fn url_full(
    target: &str,
    host: Option<&str>,
    remote: Option<(&str, u16)>,
    tls: bool,
) -> Option<String> {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let t = &target[..end];
    if t.starts_with("http://") || t.starts_with("https://") {
        return Some(cut(t, MAX_URL_LEN).to_owned());
    }
    let path = url_path(target).filter(|p| p.starts_with('/'))?;
    let host = host
        .map(str::trim)
        .filter(|h| !h.is_empty() && h.len() <= 255);
    let remote = match host {
        Some(_) => None,
        None => Some(remote?),
    };
    let scheme = if tls { "https" } else { "http" };
    // Written in one string (this runs for every client span): `{scheme}://{authority}{path}`.
    let mut url = String::with_capacity(scheme.len() + 3 + host.map_or(48, str::len) + path.len());
    url.push_str(scheme);
    url.push_str("://");
    if let Some(h) = host {
        url.push_str(h);
    } else if let Some((addr, port)) = remote {
        let v6 = addr.contains(':');
        if v6 {
            url.push('[');
        }
        url.push_str(addr);
        if v6 {
            url.push(']');
        }
        if port != if tls { 443 } else { 80 } {
            url.push(':');
            url.push_str(Decimal::new(port).as_str());
        }
    }
    url.push_str(path);
    if url.len() > MAX_URL_LEN {
        let keep = cut(&url, MAX_URL_LEN).len();
        url.truncate(keep);
    }
    Some(url)
}

/// The table of a simple SQL statement (`db.collection.name`): `SELECT … FROM t [alias]
/// [WHERE|GROUP|ORDER|LIMIT|HAVING|FOR|LOCK|UNION …]`, `INSERT [INTO] t`, `REPLACE [INTO] t`,
/// `UPDATE t SET`, `DELETE FROM t`. `None` for joins, subqueries, several tables, or anything
/// less obvious. Takes sanitized SQL (comments gone, whitespace collapsed).
pub fn sql_collection(sql: &str) -> Option<String> {
    let tokens: Vec<&str> = sql.split_ascii_whitespace().take(256).collect();
    let upper = |i: usize| tokens.get(i).map(|t| t.to_ascii_uppercase());
    let first = upper(0)?;
    let mut i = 1;
    let skip = |i: &mut usize, words: &[&str]| {
        while let Some(t) = upper(*i) {
            if words.contains(&t.as_str()) {
                *i += 1;
            } else {
                break;
            }
        }
    };
    let table_at = match first.as_str() {
        "SELECT" => {
            let from = tokens.iter().position(|t| t.eq_ignore_ascii_case("FROM"))?;
            // A subquery before FROM (in the select list) makes the statement not simple.
            if tokens[..from]
                .iter()
                .any(|t| t.to_ascii_uppercase().contains("SELECT") && *t != tokens[0])
            {
                return None;
            }
            from + 1
        }
        "INSERT" | "REPLACE" => {
            skip(
                &mut i,
                &["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE"],
            );
            skip(&mut i, &["INTO"]);
            i
        }
        "UPDATE" => {
            skip(&mut i, &["LOW_PRIORITY", "IGNORE"]);
            i
        }
        "DELETE" => {
            skip(&mut i, &["LOW_PRIORITY", "QUICK", "IGNORE"]);
            if upper(i).as_deref() != Some("FROM") {
                return None;
            }
            i + 1
        }
        _ => return None,
    };
    let raw = *tokens.get(table_at)?;
    // `t(a, b)` in INSERT: the column list follows the name directly.
    let (name, glued) = match raw.find('(') {
        Some(0) => return None,
        Some(p) => (&raw[..p], true),
        None => (raw.trim_end_matches(';'), false),
    };
    if name.ends_with(',') {
        return None;
    }
    let name = name.replace('`', "");
    let valid = !name.is_empty()
        && name.len() <= 129
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c == b'.')
        && !name.starts_with('.')
        && !name.ends_with('.');
    if !valid {
        return None;
    }
    if !glued {
        // What follows the table must end the table list.
        let mut j = table_at + 1;
        const ENDS: &[&str] = &[
            "WHERE",
            "GROUP",
            "ORDER",
            "LIMIT",
            "HAVING",
            "FOR",
            "LOCK",
            "UNION",
            "SET",
            "VALUES",
            "VALUE",
            "SELECT",
            "ON",
            "PARTITION",
            "(",
            "WINDOW",
            "INTO",
        ];
        let next = upper(j);
        let is_end = |t: &Option<String>| {
            t.as_deref()
                .is_none_or(|t| ENDS.contains(&t) || t == ";" || t.starts_with('('))
        };
        if !is_end(&next) {
            // One alias (`t`, `AS t`) may sit between.
            if next.as_deref() == Some("AS") {
                j += 1;
            }
            let alias = upper(j)?;
            if alias.contains(',') || alias.contains('(') || is_join_word(&alias) {
                return None;
            }
            if !is_end(&upper(j + 1)) {
                return None;
            }
        }
        if first == "UPDATE" && upper(table_at + 1).as_deref() != Some("SET") {
            // Only `UPDATE t SET`, or `UPDATE t alias SET`.
            let alias_then_set = upper(table_at + 2).as_deref() == Some("SET");
            if !alias_then_set {
                return None;
            }
        }
    }
    Some(name)
}

fn is_join_word(t: &str) -> bool {
    matches!(
        t,
        "JOIN"
            | "LEFT"
            | "RIGHT"
            | "INNER"
            | "OUTER"
            | "CROSS"
            | "NATURAL"
            | "STRAIGHT_JOIN"
            | "USING"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        for n in [0u16, 7, 10, 200, 404, 999, 8080, 65535] {
            assert_eq!(Decimal::new(n).as_str(), n.to_string());
        }
    }

    #[test]
    fn route_names_are_shared() {
        let mut r = RouteNames::default();
        let (route, name) = r.get("GET", "/users/42?x=1");
        assert_eq!((&*route, &*name), ("/users/{id}", "GET /users/{id}"));
        let (route2, name2) = r.get("GET", "/users/7");
        assert!(Arc::ptr_eq(&route, &route2) && Arc::ptr_eq(&name, &name2));
        let (_, post) = r.get("POST", "/users/7");
        assert_eq!(&*post, "POST /users/{id}");
        for i in 0..RouteNames::MAX + 10 {
            r.get("GET", &format!("/r{i}"));
        }
        assert!(r.map.len() <= RouteNames::MAX);
        assert_eq!(&*r.get("HTTP", "*").1, "HTTP *");
    }

    #[test]
    fn addresses() {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(addr_string(&a), "127.0.0.1");
        let v6: [u8; 16] = "fe80::1".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(addr_string(&v6), "fe80::1");
        assert_eq!(addr_string(&Ipv6Addr::LOCALHOST.octets()), "::1");
    }

    #[test]
    fn paths_hosts_and_urls() {
        assert_eq!(url_path("/a/b?x=1#f"), Some("/a/b"));
        assert_eq!(url_path("http://h:8/a?x"), Some("/a"));
        assert_eq!(url_path("http://h"), Some("/"));
        assert_eq!(url_path("*"), Some("*"));
        assert_eq!(url_path("h:443"), None);
        assert_eq!(split_host("shop:8080"), Some(("shop", Some(8080))));
        assert_eq!(split_host("shop"), Some(("shop", None)));
        assert_eq!(split_host("[::1]:81"), Some(("::1", Some(81))));
        assert_eq!(split_host(""), None);
        let remote = ("10.0.0.2", 8080);
        assert_eq!(
            url_full("/a?secret=1", Some("api:81"), Some(remote), false).as_deref(),
            Some("http://api:81/a")
        );
        assert_eq!(
            url_full("/a", None, Some(remote), false).as_deref(),
            Some("http://10.0.0.2:8080/a")
        );
        assert_eq!(
            url_full("/a", None, Some(("::1", 80)), false).as_deref(),
            Some("http://[::1]/a")
        );
        assert_eq!(
            url_full("http://x/y?z", None, None, false).as_deref(),
            Some("http://x/y")
        );
        // Over TLS: https, and 443 is the default port.
        assert_eq!(
            url_full("/a", None, Some(("10.0.0.2", 443)), true).as_deref(),
            Some("https://10.0.0.2/a")
        );
        assert_eq!(
            url_full("/a", Some("api:8443"), None, true).as_deref(),
            Some("https://api:8443/a")
        );
    }

    #[test]
    fn collections_of_simple_sql() {
        let c = |s: &str| sql_collection(s);
        assert_eq!(
            c("SELECT * FROM users WHERE id = ?").as_deref(),
            Some("users")
        );
        assert_eq!(
            c("select id, name from shop.users u where u.id = ?").as_deref(),
            Some("shop.users")
        );
        assert_eq!(
            c("SELECT COUNT(*) FROM `orders`").as_deref(),
            Some("orders")
        );
        assert_eq!(
            c("SELECT a FROM t AS x ORDER BY a LIMIT ?").as_deref(),
            Some("t")
        );
        assert_eq!(
            c("INSERT INTO orders (a, b) VALUES (?)").as_deref(),
            Some("orders")
        );
        assert_eq!(
            c("INSERT INTO orders(a, b) VALUES (?)").as_deref(),
            Some("orders")
        );
        assert_eq!(c("insert ignore into t values (?)").as_deref(), Some("t"));
        assert_eq!(c("REPLACE INTO t SET a = ?").as_deref(), Some("t"));
        assert_eq!(
            c("UPDATE items SET stock = stock - ? WHERE id = ?").as_deref(),
            Some("items")
        );
        assert_eq!(
            c("DELETE FROM carts WHERE id = ?").as_deref(),
            Some("carts")
        );
        assert_eq!(c("SELECT * FROM a JOIN b ON a.id = b.id"), None);
        assert_eq!(c("SELECT * FROM a, b"), None);
        assert_eq!(c("SELECT * FROM a x, b y"), None);
        assert_eq!(c("SELECT * FROM (SELECT ?) t"), None);
        assert_eq!(c("SELECT (SELECT max(id) FROM t) FROM u"), None);
        assert_eq!(c("UPDATE a, b SET a.x = ?"), None);
        assert_eq!(c("SELECT ?"), None);
        assert_eq!(c("BEGIN"), None);
        assert_eq!(c(""), None);
    }
}
