#!/usr/bin/env python3
"""Client and analysis side of the sync agent benchmarks (bench/sync/*.sh).

Events are `add`s of generated, unique, synthetic customers (the generator of bench/load/gen.py:
fødselsnumre, D-numbers and Tenor +80 persons, valid under kfr's test policy), without a start
date, so each goes to KFR as one single add. Nothing is taken from a register.

Subcommands (URL is the agent's http://ADDR/events, KEY its bearer key file):
  preload N URL KEY [CHUNK] [PREFIX]   POST N events as NDJSON, CHUNK a request (default 5000),
                                       one request at a time; prints the time of the first and
                                       last 202 (Unix seconds) and the intake rate
  steady RATE SECONDS URL KEY OUT      offer RATE events a second, one per request, for SECONDS;
                                       writes `event_id t_202` lines to OUT
  latency STORE TIMES                  p50/p90/p99/max from each event's 202 (TIMES) to its
                                       finished_at in the store, and from received_at
  rate STORE FROM SECONDS              deliveries per second (finished_at) in [FROM, FROM+SECONDS):
                                       mean, min and max per calendar second, max in any sliding 1 s
  span STORE                           first received_at, last finished_at, counts by state
"""

import http.client
import importlib.util
import json
import os
import random
import sqlite3
import sys
import time
import urllib.parse
from datetime import datetime

HERE = os.path.dirname(os.path.abspath(__file__))


def _gen():
    spec = importlib.util.spec_from_file_location("loadgen", os.path.join(HERE, "..", "load", "gen.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def customers(seed=7):
    """Unique synthetic person identifiers, interleaved from four generators."""
    g = _gen()
    rng = random.Random(seed)
    srcs = [g.persons(rng, 0, 0), g.persons(rng, 40, 0), g.persons(rng, 0, 80), g.persons(rng, 40, 80)]
    while srcs:
        for s in list(srcs):
            try:
                yield next(s)
            except StopIteration:
                srcs.remove(s)


class Agent:
    def __init__(self, url, keyfile):
        u = urllib.parse.urlparse(url)
        self.host, self.port, self.path = u.hostname, u.port, u.path
        with open(keyfile) as f:
            self.key = f.read().strip()
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def post(self, body):
        headers = {"Authorization": "Bearer " + self.key, "Content-Type": "application/x-ndjson"}
        for attempt in range(3):
            try:
                self.conn.request("POST", self.path, body=body, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
                t = time.time()
                if r.status != 202:
                    sys.exit(f"POST /events answered {r.status}: {data[:300]!r}")
                return t
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                if attempt == 2:
                    raise


def event(cid, eid):
    return json.dumps({"op": "add", "customer_id": cid, "event_id": eid}, separators=(",", ":"))


def preload(n, url, key, chunk=5000, prefix="pre"):
    a = Agent(url, key)
    ids = customers()
    first = last = None
    sent = 0
    while sent < n:
        k = min(chunk, n - sent)
        body = "\n".join(event(next(ids), f"{prefix}-{sent + i}") for i in range(k)) + "\n"
        last = a.post(body.encode())
        first = first or last
        sent += k
    print(f"first_202 {first:.6f}")
    print(f"last_202 {last:.6f}")
    print(f"intake {n} events in {last - first:.2f} s after the first 202")


def steady(rate, seconds, url, key, out):
    a = Agent(url, key)
    ids = customers(seed=11)
    n = int(rate * seconds)
    start = time.monotonic() + 0.2
    late = 0
    with open(out, "w") as f:
        for i in range(n):
            due = start + i / rate
            d = due - time.monotonic()
            if d > 0:
                time.sleep(d)
            else:
                late += 1
            eid = f"lat-{i}"
            t = a.post((event(next(ids), eid) + "\n").encode())
            f.write(f"{eid} {t:.6f}\n")
    took = time.monotonic() - start
    print(f"offered {n} events in {took:.2f} s ({n / took:.1f}/s), {late} sent late")


def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * len(xs))) - 1))]


def latency(store, times):
    t202 = {}
    with open(times) as f:
        for line in f:
            eid, t = line.split()
            t202[eid] = float(t)
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    rows = db.execute(
        "SELECT event_id, received_at, finished_at FROM outbox WHERE event_id LIKE 'lat-%'"
    ).fetchall()
    done = [(e, ts(r), ts(f)) for e, r, f in rows if f]
    print(f"events {len(t202)} offered, {len(rows)} stored, {len(done)} delivered")
    for name, xs in (
        ("202 -> delivered", [(f - t202[e]) * 1000 for e, _, f in done if e in t202]),
        ("received_at -> delivered", [(f - r) * 1000 for e, r, f in done]),
    ):
        print(
            f"{name}: p50 {pct(xs, 50):.1f} ms  p90 {pct(xs, 90):.1f} ms  p99 {pct(xs, 99):.1f} ms  "
            f"max {max(xs):.1f} ms  (n={len(xs)})"
        )


def rate(store, start, seconds):
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    fin = sorted(ts(f) for (f,) in db.execute("SELECT finished_at FROM outbox WHERE finished_at IS NOT NULL"))
    start = float(start)
    win = [t for t in fin if start <= t < start + seconds]
    per = [0] * int(seconds)
    for t in win:
        per[int(t - start)] += 1
    j = 0
    best = 0
    for i, t in enumerate(win):
        while win[j] <= t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    print(f"window {seconds} s from {start:.3f}: {len(win)} delivered, {len(win) / seconds:.2f}/s")
    print(f"per calendar second: min {min(per)} max {max(per)}; most in any sliding 1 s: {best}")


def span(store):
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    r0, f1 = db.execute("SELECT MIN(received_at), MAX(finished_at) FROM outbox").fetchone()
    states = dict(db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
    print(f"first_received {ts(r0):.6f}")
    print(f"last_finished {ts(f1) if f1 else 0:.6f}")
    print("states " + " ".join(f"{k}={v}" for k, v in sorted(states.items())))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "preload":
        preload(int(args[0]), args[1], args[2], *(int(x) if x.isdigit() else x for x in args[3:]))
    elif cmd == "steady":
        steady(float(args[0]), float(args[1]), args[2], args[3], args[4])
    elif cmd == "latency":
        latency(args[0], args[1])
    elif cmd == "rate":
        rate(args[0], args[1], int(args[2]))
    elif cmd == "span":
        span(args[0])
    else:
        sys.exit(__doc__)
