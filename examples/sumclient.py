#!/usr/bin/env python3
"""Run with: python3 examples/sumclient.py CLIENTS [PORT]

The seed's client, ported to Python 3: 1000 requests in total, split across
CLIENTS threads, one fresh connection per request, each sending n = 25000 and
reading the answer until the server closes the connection. Prints the wall
time in seconds, like the seed. Unlike the seed it also checks every answer,
and exits with status 1 if one is wrong or a request failed.
"""

import socket
import sys
import threading
import time

REQUESTS = 1000
N = 25000
EXPECTED = N * (N + 1) // 2


def client(port, count, failures):
    for _ in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", port))
            try:
                s.sendall(str(N).encode("ascii"))
                chunks = []
                while True:
                    data = s.recv(64)
                    if not data:
                        break
                    chunks.append(data)
            finally:
                s.close()
            if int(b"".join(chunks)) != EXPECTED:
                failures.append("wrong answer: %r" % b"".join(chunks))
        except (OSError, ValueError) as e:
            failures.append("request failed: %s" % e)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: sumclient.py CLIENTS [PORT]")
    clients = int(sys.argv[1])
    port = int(sys.argv[2]) if len(sys.argv) == 3 else 10000
    if clients < 1:
        sys.exit("CLIENTS must be at least 1")
    # The seed gave each thread 1000 / CLIENTS requests; the remainder goes
    # to the first threads so the total is always exactly 1000.
    shares = [REQUESTS // clients + (i < REQUESTS % clients) for i in range(clients)]
    failures = []
    start = time.time()
    threads = [
        threading.Thread(target=client, args=(port, share, failures))
        for share in shares
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(time.time() - start)
    if failures:
        print("%d of %d requests failed, first: %s" % (len(failures), REQUESTS, failures[0]),
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
