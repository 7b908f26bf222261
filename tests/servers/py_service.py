#!/usr/bin/env python3
"""A small threaded HTTP service for Loupe's network-span tests: a real server (Python's http.server)
talking to real MariaDB (PyMySQL, text protocol) and Redis (redis-py), and calling another HTTP
service (urllib), one thread per request, like many production services.

Routes:
  GET /users/<id>      Redis GET user:<id>; on a miss SELECT from MariaDB and SET in Redis; then
                       GET http://<downstream>/stock/<id> (when --downstream is given). 200 JSON.
  GET /missing         MariaDB query on a table that does not exist: 500.
  GET /stock/<id>      200 JSON computed from the id, no database (the downstream role).
  GET /health          200, no database.
Usage: py_service.py --port P [--mysql-port M --redis-port R] [--downstream host:port]
"""
import argparse
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pymysql
import redis

ARGS = None
LOCAL = threading.local()


def db():
    if not hasattr(LOCAL, "db"):
        LOCAL.db = pymysql.connect(host="127.0.0.1", port=ARGS.mysql_port, user=ARGS.mysql_user,
                                   password=ARGS.mysql_password, database=ARGS.mysql_database,
                                   autocommit=True)
    return LOCAL.db


def cache():
    if not hasattr(LOCAL, "cache"):
        LOCAL.cache = redis.Redis(host="127.0.0.1", port=ARGS.redis_port)
    return LOCAL.cache


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if parts == ["health"]:
            return self.reply(200, {"ok": True})
        if len(parts) == 2 and parts[0] == "stock" and parts[1].isdigit():
            return self.reply(200, {"id": int(parts[1]), "stock": int(parts[1]) * 2})
        if parts == ["missing"]:
            try:
                with db().cursor() as c:
                    c.execute("SELECT * FROM no_such_table WHERE id = 1")
            except pymysql.MySQLError as e:
                return self.reply(500, {"error": str(e)})
            return self.reply(200, {})
        if len(parts) == 2 and parts[0] == "users" and parts[1].isdigit():
            uid = int(parts[1])
            name = cache().get(f"user:{uid}")
            if name is None:
                with db().cursor() as c:
                    c.execute("SELECT name FROM users WHERE id = %s", (uid,))
                    row = c.fetchone()
                if row is None:
                    return self.reply(404, {"error": "no such user"})
                name = row[0].encode()
                cache().set(f"user:{uid}", name, ex=60)
            stock = None
            if ARGS.downstream:
                with urllib.request.urlopen(f"http://{ARGS.downstream}/stock/{uid}") as r:
                    stock = json.loads(r.read())
            return self.reply(200, {"id": uid, "name": name.decode(), "stock": stock})
        return self.reply(404, {"error": "not found"})


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mysql-port", type=int, default=0)
    p.add_argument("--redis-port", type=int, default=0)
    p.add_argument("--mysql-user", default="shop")
    p.add_argument("--mysql-password", default="shop")
    p.add_argument("--mysql-database", default="loupe_test")
    p.add_argument("--downstream")
    ARGS = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
