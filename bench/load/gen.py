#!/usr/bin/env python3
"""Writes N unique synthetic customer relationships, `ID;YYYY-MM-DD` per line, for the `kfr load`
benchmarks and manual rehearsals against `kfr mock`.

Every identifier is generated (fødselsnumre, D-numbers, Tenor +80 persons, 2/3-prefixed test
organisations), valid under kfr's test policy, and unique; start dates fall between 1990 and
2024. Nothing is taken from a register. Generation walks the number space in order with a
random stride, so 10 M lines need no dedupe set.

Usage: gen.py N OUT [SEED]
"""

import random
import sys

K1 = (3, 7, 6, 1, 8, 9, 4, 5, 2)
K2 = (5, 4, 3, 2, 7, 6, 5, 4, 3, 2)
ORG = (3, 2, 7, 6, 5, 4, 3, 2)
DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def persons(rng, day_offset, month_offset):
    """Valid person numbers in increasing order of (date, individual number): unique."""
    for yy in range(100):
        for month in range(1, 13):
            for day in range(1, DAYS[month - 1] + 1):
                head = [*divmod(day + day_offset, 10), *divmod(month + month_offset, 10), *divmod(yy, 10)]
                ind = rng.randint(0, 20)
                while ind < 1000:
                    d = head + [ind // 100, ind // 10 % 10, ind % 10]
                    ind += rng.randint(1, 10)
                    s1 = sum(a * b for a, b in zip(d, K1)) % 11
                    k1 = (11 - s1) % 11
                    if k1 == 10:
                        continue
                    d.append(k1)
                    k2 = (11 - sum(a * b for a, b in zip(d, K2)) % 11) % 11
                    if k2 == 10:
                        continue
                    d.append(k2)
                    yield "".join(map(str, d))


def orgs(rng, first):
    n = first * 10_000_000 + rng.randint(0, 100)
    while n < (first + 1) * 10_000_000:
        d = list(map(int, f"{n:08d}"))
        n += rng.randint(1, 6)
        r = sum(a * b for a, b in zip(d, ORG)) % 11
        if r == 1:
            continue
        yield "".join(map(str, d)) + str(0 if r == 0 else 11 - r)


def main():
    n = int(sys.argv[1])
    out = sys.argv[2]
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    sources = [persons(rng, 0, 0), persons(rng, 40, 0), persons(rng, 0, 80), persons(rng, 40, 80), orgs(rng, 2), orgs(rng, 3)]
    weights = [0.45, 0.10, 0.25, 0.05, 0.10, 0.05]
    with open(out, "w") as f:
        written = 0
        buf = []
        while written < n:
            src = rng.choices(range(len(sources)), weights)[0]
            try:
                ident = next(sources[src])
            except StopIteration:
                weights[src] = 0
                continue
            y = rng.randint(1990, 2024)
            buf.append(f"{ident};{y}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}\n")
            written += 1
            if len(buf) >= 100_000:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))


if __name__ == "__main__":
    main()
