#!/usr/bin/env python3
"""Exclusive (self) instructions per function in a callgrind dump, divided by N.

Usage: callgrind_self.py FILE N [TOP]
Prints "total" and the TOP (40) most expensive functions, one per line:
"<Ir per request>  <function>". The dump must be written with
--compress-strings=no --compress-pos=no (bench/cost.sh does): callgrind_annotate
attributes a dump taken mid-run (callgrind_control -d) to the active frames
(`__libc_start_main`) and cannot give self costs for it.
"""
import collections
import sys

path, n = sys.argv[1], float(sys.argv[2])
top = int(sys.argv[3]) if len(sys.argv) > 3 else 40
cost = collections.Counter()
fn, after_call = None, False
with open(path, errors="replace") as f:
    for line in f:
        if line.startswith("fn="):
            fn, after_call = line[3:].strip(), False
        elif line.startswith("calls="):
            after_call = True  # the next cost line is the call's inclusive cost
        elif fn and (line[:1].isdigit() or line[:1] in "+-*"):
            parts = line.split()
            if len(parts) >= 2 and not after_call:
                cost[fn] += int(parts[1])
            after_call = False
print(f"{sum(cost.values()) / n:8.0f}  total")
for name, v in cost.most_common(top):
    print(f"{v / n:8.0f}  {name[:160]}")
