"""`fer-search data check`, `data synth`: a real dataset as the reader sees it, a synthetic one.
The trainer's data code only: no Optuna, no MLflow, no TensorFlow."""

from __future__ import annotations

import json

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

import trainer
from search.cli.common import err, out
from search.contracts import EXIT_OK
from search.errors import InputError


def cmd_data_check(args) -> int:
    config = trainer.DataConfig(root=args.root, label_file=args.label_file,
                                image_dir=args.image_dir, strict=args.strict,
                                cache_dir=args.cache_dir)
    # Every image is decoded: a bar on stderr (gone when done) says how far it is.
    columns = (TextColumn("checking images"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("", total=None)
        report = trainer.inspect_dataset(
            config, on_progress=lambda done, total: bar.update(task, completed=done, total=total))
    if args.json:
        out.print_json(json.dumps(report.to_dict()))
        return EXIT_OK
    table = data_report_table(report)
    table.caption = None  # the footer is printed below, unwrapped, whatever the width
    out.print(table)
    for line in report_lines(report):
        out.print(line, markup=False, soft_wrap=True)
    return EXIT_OK


def cmd_data_synth(args) -> int:
    if args.faces < 7:
        raise InputError(f"--faces: expected an integer >= 7 (a face per class), but got "
                         f"{args.faces}")
    root = trainer.generate_synthetic_expw(args.out, args.faces, args.seed,
                                           imbalance=args.imbalance)
    out.print(f"wrote {args.faces} faces in ExpW's layout to {root}")
    return EXIT_OK


def data_report_table(report) -> Table:
    table = Table(title=f"dataset: {report.label_file}")
    table.add_column("class")
    table.add_column("faces", justify="right")
    for split in report.split_sizes:
        table.add_column(split, justify="right")
    for name, count in report.class_counts.items():
        table.add_row(name, str(count),
                      *[str(report.split_class_counts[s].get(name, 0)) for s in report.split_sizes])
    table.add_row("[bold]all[/]", f"[bold]{report.faces}[/]",
                  *[str(v) for v in report.split_sizes.values()])
    table.caption = (
        f"images in {report.image_dir}; skipped: {report.duplicate_lines} duplicate lines, "
        f"{report.skipped_lines} conflicting lines, {report.empty_boxes} empty boxes, "
        f"{report.low_confidence} below min_confidence, {len(report.skipped_files)} unreadable "
        f"images ({report.skipped_faces} faces)"
        + (f": {', '.join(report.skipped_files[:5])}" if report.skipped_files else "")
    )
    return table


def report_lines(report: trainer.DataReport) -> list[str]:
    """``data check``'s footer: where the images are, what the reader dropped from label.lst,
    and each kind of problem found in the images, with counts and the first file names."""
    lines = [
        f"images in {report.image_dir}",
        f"label.lst: {report.duplicate_lines} duplicate lines, {report.skipped_lines} "
        f"conflicting lines, {report.low_confidence} faces below min_confidence",
    ]
    if not report.problems:
        lines.append("every image opened and every box lies on its image")
    for kind, problem in report.problems.items():
        lines.append(f"{kind}: {_count(problem['faces'], 'face')} in "
                     f"{_count(problem['files'], 'file')} (first: "
                     f"{', '.join(problem['examples'])})")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
