"""Run every registered benchmark, print one table and merge the figures into bench/results.json.

Usage: `python -m bench [name ...]` — with names (module names such as `core_spine`), only those run.
"""

from __future__ import annotations

import math
import sys
import time
import traceback

from rich.console import Console
from rich.table import Table

from bench import (
    RESULTS_PATH,
    Benchmark,
    Row,
    core_spine,
    editor_ops,
    hardening_auth,
    hardening_bodies,
    hardening_decode,
    hardening_fuzz,
    hardening_headers,
    hardening_jobs,
    interactive,
    interactive_serving,
    merge_results,
    model_workers,
    monailabel,
    review_scale,
    viewer,
)
from bench import dicom_seg as dicom_seg_bench
from bench import editor_browser as editor_browser_bench
from bench import evaluation as evaluation_bench
from bench import exports as exports_bench
from bench import imports as imports_bench
from bench import loop as loop_bench
from bench import pacs as pacs_bench
from bench import s3 as s3_bench

# The registry: add a module's entry point here to have `make bench` run it.
BENCHMARKS: list[Benchmark] = [
    core_spine.run,
    model_workers.run,
    viewer.run,
    exports_bench.run,
    review_scale.run,
    evaluation_bench.run,
    hardening_jobs.run,
    hardening_decode.run,
    hardening_bodies.run,
    hardening_auth.run,
    hardening_headers.run,
    hardening_fuzz.run,
    monailabel.run,
    imports_bench.run,
    interactive.run,
    interactive_serving.run,
    s3_bench.run,
    editor_ops.run,
    editor_browser_bench.run,
    dicom_seg_bench.run,
    pacs_bench.run,
    loop_bench.run,
]


def _name(benchmark: Benchmark) -> str:
    """A benchmark's short name: its module name without the package."""
    return benchmark.__module__.rsplit(".", 1)[-1]


def _fmt(value: float) -> str:
    """A value with a sensible number of digits."""
    if math.isnan(value):
        return "n/a"
    if value == int(value) and abs(value) >= 1:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def render(rows: list[tuple[str, Row]]) -> Table:
    """The table of every row: figure, value, unit, goal, met?"""
    table = Table(title="maskloop benchmarks")
    table.add_column("bench")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("goal")
    table.add_column("met?")
    for name, row in rows:
        met = "" if row.met is None else ("[green]yes[/green]" if row.met else "[red]NO[/red]")
        table.add_row(name, row.figure, _fmt(row.value), row.unit, row.goal, met)
    return table


def main(argv: list[str]) -> int:
    """Run the selected (default: all) benchmarks; exit status 1 if any failed."""
    console = Console() if sys.stdout.isatty() else Console(width=150)
    known = {_name(b): b for b in BENCHMARKS}
    unknown = [a for a in argv if a not in known]
    if unknown:
        console.print(f"[red]unknown benchmark(s):[/red] {', '.join(unknown)}; known: {', '.join(known)}")
        return 2
    selected = [known[a] for a in argv] if argv else BENCHMARKS
    collected: list[tuple[str, Row]] = []
    failed: list[str] = []
    for benchmark in selected:
        name = _name(benchmark)
        console.rule(f"[bold]{name}")
        started = time.perf_counter()
        try:
            rows = benchmark()
        except Exception:
            console.print(f"[red]benchmark {name} FAILED[/red]")
            console.print(traceback.format_exc())
            failed.append(name)
            continue
        console.print(f"{name}: {len(rows)} figures in {time.perf_counter() - started:.1f} s")
        collected += [(name, row) for row in rows]
    if collected:
        console.print(render(collected))
        merge_results([row for _, row in collected])
        console.print(f"results merged into {RESULTS_PATH}")
    if failed:
        console.print(f"[red]failed:[/red] {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
