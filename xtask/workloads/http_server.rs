//! The HTTP service of `cargo xtask bench --only network`: a small, fast HTTP/1.1 server, std only,
//! one thread per connection (blocking reads, like a thread-pool server whose pool is as large as
//! the client's connection count). Keep-alive and pipelining; `GET /api/users/{id}` answers a small
//! JSON document, anything else 404. Request bodies with `Content-Length` are read and discarded.
//!
//! Usage: `http_server [ADDR]` (default `127.0.0.1:0`); prints the bound address on stdout, then
//! serves until killed. Built by xtask with rustc and frame pointers (readable profiles).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

const BUFFER: usize = 16 * 1024;

fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = TcpListener::bind(&addr)?;
    println!("{}", listener.local_addr()?);
    io::stdout().flush()?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = serve(stream);
            })?;
    }
    Ok(())
}

/// Serves one connection until the peer closes it or asks to.
fn serve(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; BUFFER];
    let mut len = 0;
    let mut out = Vec::with_capacity(4096);
    // Body bytes of the last request still to discard.
    let mut skip = 0usize;
    loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut start = 0;
        let mut close = false;
        loop {
            if skip > 0 {
                let k = skip.min(len - start);
                skip -= k;
                start += k;
                if skip > 0 {
                    break;
                }
            }
            let Some(end) = find(&buf[start..len], b"\r\n\r\n") else {
                break;
            };
            let head = &buf[start..start + end + 4];
            let (body, wants_close) = respond(head, &mut out);
            close |= wants_close;
            start += end + 4;
            skip = body;
            if close {
                break;
            }
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
        if close {
            return Ok(());
        }
        buf.copy_within(start..len, 0);
        len -= start;
        if len == buf.len() {
            // A head larger than the buffer: not for this server.
            return Ok(());
        }
    }
}

/// Appends the response to `head` to `out`; returns the request's body length and whether the
/// connection closes after it.
fn respond(head: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
    let text = std::str::from_utf8(head).unwrap_or("");
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, target, version) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let mut body = 0usize;
    let mut close = version != "HTTP/1.1";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            body = value.parse().unwrap_or(0);
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let path = target.split('?').next().unwrap_or("");
    let user = path
        .strip_prefix("/api/users/")
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()));
    let (status, json) = match (method, user) {
        ("GET", Some(id)) => (
            "200 OK",
            format!("{{\"id\":{id},\"name\":\"user {id}\",\"plan\":\"pro\",\"active\":true}}\n"),
        ),
        _ => ("404 Not Found", "{\"error\":\"not found\"}\n".to_string()),
    };
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{json}",
        json.len(),
        if close { "Connection: close\r\n" } else { "" },
    );
    (body, close)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
