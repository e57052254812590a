"""Rows of a results CSV as tables: python benchmarks/summarize.py [FILE].

format_table is also what benchmarks/conftest.py prints at the end of a pytest run of the
benches: one table per op and device, one line per (mode, size, provider), one column per
metric measured.
"""

from __future__ import annotations

import collections
import math
import pathlib
import sys

from results_csv import DEFAULT_PATH, read_rows

#: metric -> column header, in the order the columns appear.
METRICS = {
    "ms": "ms",
    "gbps": "GB/s",
    "tflops": "TFLOP/s",
    "tokens_per_s": "tok/s",
    "peak_mem_mb": "peak MiB",
    "resident_mem_mb": "resident MiB",
    "step_mem_mb": "step MiB",
    "floor_fraction": "of floor",
}
#: What the size column holds, by op.
SIZE = {"end_to_end": "R", "fused_linear": "P"}


def _number(value: float) -> str:
    """Four significant digits, no exponent: 23484, 4.322, 0.7405, 0.001465."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, 3 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def format_table(rows: list[dict[str, str]]) -> list[str]:
    """Lines of one table per (op, device, torch, triton): rows (mode, size, dtype, provider)."""
    groups: dict[tuple, dict[tuple, dict[str, float]]] = collections.defaultdict(
        lambda: collections.defaultdict(dict)
    )
    for r in rows:
        group = (r["op"], r["device"], r["torch"], r["triton"])
        key = (r["mode"], int(r["n_positions"]), r["hidden"], r["vocab"], r["dtype"], r["provider"])
        groups[group][key][r["metric"]] = float(r["value"])
    lines = []
    for (op, device, torch_version, triton_version), table in sorted(groups.items()):
        metrics = [m for m in METRICS if any(m in values for values in table.values())]
        metrics += sorted({m for values in table.values() for m in values} - set(METRICS))
        shapes = {key[2:5] for key in table}
        title = f"{op} on {device} (torch {torch_version}, triton {triton_version})"
        header = ["mode", SIZE.get(op, "N"), "provider"]
        if len(shapes) == 1:  # one shape and dtype: in the title, not on every line
            title += ": " + _shape(*shapes.pop())
        else:
            header.insert(2, "shape")
        cells = []
        for (mode, n, hidden, vocab, dtype, provider), values in sorted(table.items()):
            row = [mode, str(n), provider]
            if len(header) == 4:
                row.insert(2, _shape(hidden, vocab, dtype))
            cells.append(row + [_number(values[m]) if m in values else "" for m in metrics])
        n_text = len(header)  # text columns left-aligned (but the size), numbers right-aligned
        header += [METRICS.get(m, m) for m in metrics]
        widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]

        def line(cols, widths=widths, n_text=n_text):
            return "  ".join(
                c.ljust(w) if i < n_text and i != 1 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cols, widths, strict=True))
            ).rstrip()

        lines += [title, line(header), *(line(c) for c in cells), ""]
    return lines[:-1]


def _shape(hidden: str, vocab: str, dtype: str) -> str:
    return f"V={vocab}" + (f" H={hidden}" if hidden != "0" else "") + f" {dtype}"


def main(path: pathlib.Path) -> None:
    print("\n".join(format_table(read_rows(path))))


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH)
