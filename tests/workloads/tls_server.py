"""An HTTPS server for the TLS capture test: Python's http.server over Python's ssl module
(OpenSSL, Debian's libssl3). GET /missing* answers 404, anything else 200 with a short body;
keep-alive (HTTP/1.1). Usage: tls_server.py PORT CERT KEY"""
import http.server
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes: without this, Nagle holds the body for the client's
    # delayed ACK (40 ms a request).
    disable_nagle_algorithm = True

    def do_GET(self):
        body = b"hello over tls\n"
        self.send_response(404 if self.path.startswith("/missing") else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
