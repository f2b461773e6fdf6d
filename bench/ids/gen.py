#!/usr/bin/env python3
"""Writes N synthetic customer identifiers, one per line, for the `kfr validate` benchmark.

The mix is what a test-environment initial-load file could hold: fødselsnumre, D-numbers,
Tenor synthetic persons (+80 month, also as D-numbers), real-series and 2/3-prefixed test
organisation numbers, all valid under kfr's test policy, plus about 1 % invalid lines (a wrong
check digit or an impossible date). Every number is generated, none is taken from a register.
Check digits follow the pre-2032 rule (K1 remainder 0), as every number issued today does.

Usage: gen.py N OUT [SEED]
"""

import random
import sys

K1 = (3, 7, 6, 1, 8, 9, 4, 5, 2)
K2 = (5, 4, 3, 2, 7, 6, 5, 4, 3, 2)
ORG = (3, 2, 7, 6, 5, 4, 3, 2)
DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def weighted(digits, weights):
    return sum(d * w for d, w in zip(digits, weights))


def person(rng, day_offset, month_offset):
    while True:
        month = rng.randint(1, 12)
        yy = rng.randint(0, 99)
        last = DAYS[month - 1] if month != 2 or yy % 4 == 0 else 28
        day = rng.randint(1, last)
        d = [*divmod(day + day_offset, 10), *divmod(month + month_offset, 10), *divmod(yy, 10)]
        d += [rng.randint(0, 9) for _ in range(3)]
        k1 = (11 - weighted(d, K1) % 11) % 11
        if k1 == 10:
            continue
        d.append(k1)
        k2 = (11 - weighted(d, K2) % 11) % 11
        if k2 == 10:
            continue
        d.append(k2)
        return "".join(map(str, d))


def org(rng, firsts):
    while True:
        d = [rng.choice(firsts)] + [rng.randint(0, 9) for _ in range(7)]
        r = weighted(d, ORG) % 11
        if r == 1:
            continue
        d.append(0 if r == 0 else 11 - r)
        return "".join(map(str, d))


# (share, generator) — shares sum to 0.99; the remaining 1 % are invalid.
MIX = (
    (0.34, lambda rng: person(rng, 0, 0)),
    (0.10, lambda rng: person(rng, 40, 0)),
    (0.20, lambda rng: person(rng, 0, 80)),
    (0.05, lambda rng: person(rng, 40, 80)),
    (0.20, lambda rng: org(rng, (8, 9))),
    (0.10, lambda rng: org(rng, (2, 3))),
)


def invalid(rng):
    valid = person(rng, 0, 0) if rng.random() < 0.7 else org(rng, (8, 9))
    if rng.random() < 0.2 and len(valid) == 11:
        return "3002" + valid[4:]  # 30.02: not a date
    last = int(valid[-1])
    return valid[:-1] + str((last + rng.randint(1, 9)) % 10)  # wrong final check digit


def main():
    n = int(sys.argv[1])
    out = sys.argv[2]
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 2032)
    gens = [g for _, g in MIX]
    weights = [s for s, _ in MIX]
    with open(out, "w", buffering=1 << 20) as f:
        for _ in range(n):
            if rng.random() < 0.01:
                f.write(invalid(rng))
            else:
                f.write(rng.choices(gens, weights)[0](rng))
            f.write("\n")


if __name__ == "__main__":
    main()
