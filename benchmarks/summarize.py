"""Print the rows of a results CSV as a compact table: python benchmarks/summarize.py [FILE]."""

from __future__ import annotations

import collections
import pathlib
import sys

from results_csv import DEFAULT_PATH, read_rows


def main(path: pathlib.Path) -> None:
    table = collections.defaultdict(dict)
    for r in read_rows(path):
        key = (r["op"], r["mode"], int(r["n_positions"]), r["hidden"], r["dtype"], r["provider"])
        table[key][r["metric"]] = float(r["value"])
        table[key]["device"] = r["device"]
    print(f"{'op':<14}{'mode':<16}{'N':>7} {'dtype':<9}{'provider':<30}"
          f"{'ms':>9}{'GB/s':>8}{'TFLOP/s':>9}{'peak MB':>10}")  # fmt: skip
    for key in sorted(table):
        m = table[key]
        op, mode, n, _, dtype, provider = key
        columns = (("ms", 9, 3), ("gbps", 8, 0), ("tflops", 9, 1), ("peak_mem_mb", 10, 0))
        cells = [f"{m[k]:>{w}.{p}f}" if k in m else " " * w for k, w, p in columns]
        print(f"{op:<14}{mode:<16}{n:>7} {dtype:<9}{provider:<30}" + "".join(cells))


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH)
