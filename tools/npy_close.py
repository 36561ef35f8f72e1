#!/usr/bin/env python3
"""Compares two float .npy files elementwise: |got - want| <= 1e-4 (1 + |want|) by default.

    python3 tools/npy_close.py GOT.npy WANT.npy [--tol 1e-4] [--rows N]

--rows N compares only the first N rows (axis 0) of both, e.g. the first 1,000 CIFAR-10 test
images of a run over more (or fewer: then both are cut to the shorter).

Prints one JSON object (shape, count, max |got - want|, worst difference / allowed) and exits 0
when every element is within the tolerance, 1 otherwise. Needs no numpy (it reads the .npy
format itself), so it runs on machines that have only python3 — the device machine of
tools/gpu_check.sh among them.
"""

import argparse
import ast
import json
import math
import struct
import sys


def read_npy(path):
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            sys.exit(f"{path}: not a .npy file")
        major = f.read(2)[0]
        size = struct.unpack("<H" if major == 1 else "<I", f.read(2 if major == 1 else 4))[0]
        header = ast.literal_eval(f.read(size).decode("latin1"))
        codes = {"<f4": "f", "<f8": "d", "<i4": "i", "<i8": "q"}
        descr = header["descr"]
        if descr not in codes or header["fortran_order"]:
            sys.exit(f"{path}: dtype {descr} (fortran_order {header['fortran_order']}) is not handled")
        shape = tuple(header["shape"])
        count = math.prod(shape)
        data = f.read(count * struct.calcsize(codes[descr]))
        return shape, struct.unpack(f"<{count}{codes[descr]}", data)


def cut(shape, values, rows):
    """The first `rows` rows of a row-major array."""
    per_row = math.prod(shape[1:])
    return (rows, *shape[1:]), values[: rows * per_row]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("got")
    p.add_argument("want")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--rows", type=int)
    args = p.parse_args()
    got_shape, got = read_npy(args.got)
    want_shape, want = read_npy(args.want)
    if args.rows is not None and got_shape and want_shape:
        rows = min(args.rows, got_shape[0], want_shape[0])
        got_shape, got = cut(got_shape, got, rows)
        want_shape, want = cut(want_shape, want, rows)
    if got_shape != want_shape:
        print(json.dumps({"ok": False, "why": f"shape {list(got_shape)} vs expected {list(want_shape)}"}))
        return 1
    max_abs, worst = 0.0, 0.0
    for g, w in zip(got, want):
        d = abs(g - w)
        if math.isnan(d):
            d = math.inf
        max_abs = max(max_abs, d)
        worst = max(worst, d / (args.tol * (1 + abs(w))))
    ok = worst <= 1.0
    print(json.dumps({"ok": ok, "shape": list(got_shape), "count": len(got),
                      "max_abs_diff": max_abs, "worst_over_tolerance": worst}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
