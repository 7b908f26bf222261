"""A gRPC server and client on grpcio (gRPC's C core: its own HTTP/2 and HPACK), for the gRPC span
tests. Messages are raw bytes (generic handlers, no generated code).

  grpc_pair.py server PORT [--tls CERT KEY]
      shop.Inventory: Reserve (unary, OK), Check (unary, NOT_FOUND), Slow (unary, sleeps 2 s),
      List (server streaming, 3 messages).
  grpc_pair.py client PORT PLAN [--tls CA] [--wait FILE]
      One channel (one HTTP/2 connection) for every call. With --wait, one Reserve call is made,
      then the client waits for FILE to exist before the plan (the agent is started in between).
      Prints one line per call: METHOD CODE.
      PLAN is a comma-separated list of: reserve, check, slow (deadline 300 ms), list,
      concurrent (8 Reserve calls in flight at once), loop (until killed: Reserve and Check
      every 50 ms, Slow every 20th time).
"""
import concurrent.futures
import os
import sys
import time

import grpc


def serve(port, tls):
    def reserve(request, context):
        return b"reserved:" + request

    def check(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such item")

    def slow(request, context):
        time.sleep(2)
        return b"late"

    def list_items(request, context):
        for i in range(3):
            yield b"item-%d" % i

    handler = grpc.method_handlers_generic_handler(
        "shop.Inventory",
        {
            "Reserve": grpc.unary_unary_rpc_method_handler(reserve),
            "Check": grpc.unary_unary_rpc_method_handler(check),
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
            "List": grpc.unary_stream_rpc_method_handler(list_items),
        },
    )
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    address = "127.0.0.1:%d" % port
    if tls:
        with open(tls[0], "rb") as c, open(tls[1], "rb") as k:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        server.add_secure_port(address, creds)
    else:
        server.add_insecure_port(address)
    server.start()
    server.wait_for_termination()


def client(port, plan, tls_ca, wait):
    address = "127.0.0.1:%d" % port
    if tls_ca:
        with open(tls_ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(f.read())
        channel = grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "localhost")])
    else:
        channel = grpc.insecure_channel(address)
    call = {
        name: channel.unary_unary("/shop.Inventory/" + name)
        for name in ("Reserve", "Check", "Slow")
    }
    list_items = channel.unary_stream("/shop.Inventory/List")

    def unary(name, timeout=10):
        try:
            call[name](b"item-42", timeout=timeout)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
        print(name, code.name, flush=True)

    if wait:
        unary("Reserve")
        while not os.path.exists(wait):
            time.sleep(0.05)
    for step in plan.split(","):
        if step == "reserve":
            unary("Reserve")
        elif step == "check":
            unary("Check")
        elif step == "slow":
            unary("Slow", timeout=0.3)
        elif step == "list":
            items = list(list_items(b"all", timeout=10))
            assert len(items) == 3, items
            print("List OK", flush=True)
        elif step == "loop":
            i = 0
            while True:
                unary("Reserve")
                unary("Check")
                if i % 20 == 0:
                    unary("Slow", timeout=0.3)
                i += 1
                time.sleep(0.05)
        elif step == "concurrent":
            futures = [call["Reserve"].future(b"item-%d" % i, timeout=10) for i in range(8)]
            for f in futures:
                f.result()
                print("Reserve OK", flush=True)
        else:
            raise SystemExit("unknown step " + step)
    channel.close()


def main():
    args = sys.argv[1:]
    mode, port = args[0], int(args[1])
    if mode == "server":
        tls = args[3:5] if len(args) > 2 and args[2] == "--tls" else None
        serve(port, tls)
        return
    plan = args[2]
    rest = args[3:]
    tls_ca = rest[rest.index("--tls") + 1] if "--tls" in rest else None
    wait = rest[rest.index("--wait") + 1] if "--wait" in rest else None
    client(port, plan, tls_ca, wait)


main()
