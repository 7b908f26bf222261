//! Low-cardinality `http.route` guesses from request targets.
//!
//! Without the application's router, the route is inferred: the query string and fragment are
//! dropped, and every path segment that looks like an identifier becomes `{id}`:
//!
//! - all digits (`42`), or digits with separators `-_.:,~` (`2024-01-15`, `1.2.3`);
//! - a UUID (`8-4-4-4-12` hex, any case);
//! - hex of 16+ characters, or 8+ characters holding at least one digit (`9f1c2e7a`, object ids);
//! - a token of 16+ URL-safe/base64 characters (`A-Z a-z 0-9 - _ = + . ~`) mixing letters and digits.
//!
//! Words (`users`, `v1`, `getUserProfileSettings`) are kept. The result is at most
//! [`MAX_ROUTE_LEN`] bytes and [`MAX_SEGMENTS`] segments; longer paths end in `/…`.

/// Longest route returned, in bytes (plus the trailing `/…` marker when cut).
pub const MAX_ROUTE_LEN: usize = 256;
/// Most path segments kept.
pub const MAX_SEGMENTS: usize = 32;

/// The placeholder for collapsed segments.
pub const ID: &str = "{id}";

/// Infers a route from a request target (origin-form `/a/b?q`, absolute-form `http://h/a`,
/// `*`, or authority-form `host:port`, which has no path and yields `/`).
pub fn infer_route(target: &str) -> String {
    let mut out = String::new();
    infer_route_into(target, &mut out);
    out
}

/// [`infer_route`] written into `out` (cleared first), so that a caller reusing one buffer
/// makes no allocation.
pub fn infer_route_into(target: &str, out: &mut String) {
    out.clear();
    let path = path_of(target);
    if path == "*" {
        out.push('*');
        return;
    }
    out.reserve(path.len().min(MAX_ROUTE_LEN) + 4);
    let mut segments = 0usize;
    let mut cut = false;
    // `split('/')` on "/a/b" yields "", "a", "b": the leading empty item is the root.
    for (i, seg) in path.split('/').enumerate() {
        if i == 0 {
            continue;
        }
        let piece = if is_id(seg) { ID } else { seg };
        if segments >= MAX_SEGMENTS || out.len() + 1 + piece.len() > MAX_ROUTE_LEN {
            cut = true;
            break;
        }
        out.push('/');
        out.push_str(piece);
        segments += 1;
    }
    if cut {
        out.push_str("/…");
    }
    if out.is_empty() {
        out.push('/');
    }
}

/// The path part of a request target, without query or fragment.
fn path_of(target: &str) -> &str {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let t = target.get(..end).unwrap_or("");
    if t.starts_with('/') || t == "*" {
        return t;
    }
    // absolute-form: scheme "://" authority path
    if let Some(idx) = t.find("://") {
        let after = t.get(idx + 3..).unwrap_or("");
        return match after.find('/') {
            Some(p) => after.get(p..).unwrap_or("/"),
            None => "/",
        };
    }
    // authority-form (CONNECT) or garbage: no path.
    "/"
}

fn is_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    if digits > 0
        && b.iter()
            .all(|&c| c.is_ascii_digit() || b"-_.:,~".contains(&c))
    {
        return true;
    }
    if is_uuid(b) {
        return true;
    }
    if b.iter().all(u8::is_ascii_hexdigit) && (b.len() >= 16 || (b.len() >= 8 && digits > 0)) {
        return true;
    }
    let letters = b.iter().filter(|c| c.is_ascii_alphabetic()).count();
    b.len() >= 16
        && digits > 0
        && letters > 0
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"-_=+.~".contains(&c))
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_ids() {
        let cases = [
            ("/users/42/orders/9f1c2e7a", "/users/{id}/orders/{id}"),
            (
                "/users/42/orders/9f1c2e7ab3d44c1e8f00aa11bb22cc33?x=1",
                "/users/{id}/orders/{id}",
            ),
            ("/a/123e4567-e89b-12d3-a456-426614174000/b", "/a/{id}/b"),
            ("/a/123E4567-E89B-12D3-A456-426614174000", "/a/{id}"),
            ("/obj/507f1f77bcf86cd799439011", "/obj/{id}"),
            ("/t/dGhpcyBpcyBhIHRva2VuMTIz", "/t/{id}"),
            ("/t/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0", "/t/{id}"),
            ("/day/2024-01-15/x", "/day/{id}/x"),
            ("/api/v1/users", "/api/v1/users"),
            (
                "/api/v2/getUserProfileSettings",
                "/api/v2/getUserProfileSettings",
            ),
            ("/cafebabe", "/cafebabe"),
            ("/deadbeefdeadbeef", "/{id}"),
            ("/", "/"),
            ("", "/"),
            ("?q=1", "/"),
            ("/a//b/", "/a//b/"),
            ("/search#frag", "/search"),
            ("http://example.com/users/7?x", "/users/{id}"),
            ("https://example.com", "/"),
            ("example.com:443", "/"),
            ("*", "*"),
            ("/ünï/42", "/ünï/{id}"),
        ];
        for (input, want) in cases {
            assert_eq!(infer_route(input), want, "{input}");
        }
    }

    #[test]
    fn bounded() {
        let long: String = "/segment".repeat(100);
        let r = infer_route(&long);
        assert!(r.len() <= MAX_ROUTE_LEN + "/…".len());
        assert!(r.ends_with("/…"));
        let huge = format!("/{}", "x".repeat(10_000));
        let r = infer_route(&huge);
        assert_eq!(r, "/…");
        let many = "/a".repeat(40);
        assert_eq!(infer_route(&many).matches('/').count(), MAX_SEGMENTS + 1);
    }

    #[test]
    fn idempotent_on_examples() {
        for p in ["/users/42/orders/9f1c2e7a", "/a/b/c", "/x/{id}"] {
            let once = infer_route(p);
            assert_eq!(infer_route(&once), once);
        }
    }

    #[test]
    fn into_a_reused_buffer() {
        let mut buf = String::from("/left/over/from/before");
        for t in ["/users/42?x=1", "*", "host:443", "/a/b/c", ""] {
            infer_route_into(t, &mut buf);
            assert_eq!(buf, infer_route(t), "{t}");
        }
    }
}
