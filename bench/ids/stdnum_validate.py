#!/usr/bin/env python3
"""Validates a file of identifiers with python-stdnum, the baseline of the kfr benchmark.

Same task as `kfr validate --file`: read every line, pick the validator by length (9 digits:
stdnum.no.orgnr, 11: stdnum.no.fodselsnummer, anything else invalid), count valid and invalid.
Prints "valid N invalid M".

Usage: stdnum_validate.py FILE
"""

import sys

from stdnum.no import fodselsnummer, orgnr


def main():
    valid = invalid = 0
    org_ok = orgnr.is_valid
    fnr_ok = fodselsnummer.is_valid
    with open(sys.argv[1], encoding="utf-8", buffering=1 << 20) as f:
        for line in f:
            s = line.strip()
            if not s:
                continue
            if len(s) == 9:
                ok = org_ok(s)
            elif len(s) == 11:
                ok = fnr_ok(s)
            else:
                ok = False
            if ok:
                valid += 1
            else:
                invalid += 1
    print(f"valid {valid} invalid {invalid}")


if __name__ == "__main__":
    main()
