"""Records the HTTP/2 corpus: a TCP relay on loopback between a real client and server that
writes each read of either side as one `c2s`/`s2c` line, in the order they happened.

  record.py LISTEN_PORT SERVER_PORT OUT.txt COMMENT -- CLIENT COMMAND...

The relay accepts one connection, relays it until both sides close, and writes OUT.txt in the
corpus format (see ../../corpus.rs). The client command is started once the relay listens.
"""
import select
import socket
import subprocess
import sys


def main():
    listen_port, server_port, out, comment = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    client_cmd = sys.argv[sys.argv.index("--") + 1 :]
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", listen_port))
    lsock.listen(1)
    client = subprocess.Popen(client_cmd)
    c, _ = lsock.accept()
    s = socket.create_connection(("127.0.0.1", server_port))
    chunks = []
    open_ends = {c: s, s: c}
    while open_ends:
        ready, _, _ = select.select(list(open_ends), [], [], 5)
        if not ready:
            break
        for r in ready:
            data = r.recv(65536)
            if not data:
                peer = open_ends.pop(r)
                try:
                    peer.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                continue
            chunks.append(("c2s" if r is c else "s2c", data))
            open_ends[r].sendall(data)
    client.wait()
    with open(out, "w") as f:
        for line in comment.splitlines():
            f.write("# " + line + "\n")
        f.write("protocol http2\n")
        for flow, data in chunks:
            h = data.hex()
            f.write(flow + " " + h[:96] + "\n")
            for i in range(96, len(h), 96):
                f.write("  " + h[i : i + 96] + "\n")


main()
