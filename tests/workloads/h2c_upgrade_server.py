"""An HTTP server that upgrades to HTTP/2 in clear text (`Upgrade: h2c`, RFC 7540 §3.2), the path
Debian's nghttpd does not offer, for the h2c upgrade span test (tests/tests/http2_spans.rs).

Usage: h2c_upgrade_server.py PORT

A request asking for `Upgrade: h2c` gets `101 Switching Protocols` and, in the same write, the
server's connection preface and its response on stream 1; later requests on the connection are
HTTP/2 streams. Any other request gets an HTTP/1.1 answer and the connection is closed.
GET /hello/ID answers 200 "hello ID", anything else 404. hyper-h2 is the HTTP/2 state machine.
"""

import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events


def answer(path):
    if path.startswith("/hello/"):
        return "200", ("hello " + path[len("/hello/"):]).encode()
    return "404", b"not found"


def respond(conn, stream, path):
    status, body = answer(path)
    conn.send_headers(
        stream,
        [(":status", status), ("content-type", "text/plain"), ("content-length", str(len(body)))],
    )
    conn.send_data(stream, body, end_stream=True)


def serve(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    tokens = [t.strip().lower() for t in headers.get("upgrade", "").split(",")]
    if "h2c" not in tokens:
        status, body = answer(path)
        sock.sendall(
            b"HTTP/1.1 %s X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status.encode(), len(body), body)
        )
        return
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
    )
    conn.initiate_upgrade_connection(headers.get("http2-settings", ""))
    respond(conn, 1, path)
    sock.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        + conn.data_to_send()
    )
    data = rest
    while True:
        if data:
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    respond(conn, event.stream_id, dict(event.headers)[":path"])
                elif isinstance(event, h2.events.ConnectionTerminated):
                    sock.sendall(conn.data_to_send())
                    return
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
        data = sock.recv(65536)
        if not data:
            return


def handle(sock):
    with sock:
        try:
            serve(sock)
        except (OSError, h2.exceptions.ProtocolError):
            pass


def main():
    port = int(sys.argv[1])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=handle, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    main()
