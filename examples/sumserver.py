#!/usr/bin/env python3
"""Run with: python3 examples/sumserver.py [PORT]

The seed's plain threaded server, ported to Python 3, to check that the Rust
programs speak its protocol: one thread per connection reads up to 16 bytes
holding n, answers sumn(n) and closes the connection.
"""

import socket
import sys
import threading


def sumn(n):
    total = 0
    for i in range(n + 1):
        total += i
    return total


def handle(conn):
    with conn:
        data = conn.recv(16)
        conn.sendall(str(sumn(int(data))).encode("ascii"))


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(128)
    print("sumserver.py listening on 127.0.0.1:%d" % port, flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
