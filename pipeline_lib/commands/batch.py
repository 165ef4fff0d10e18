"""``python -m pipeline_lib batch JOBS.jsonl -o OUTDIR``: many generate/upscale jobs, resumable.

Multi-GPU / multi-node: ``accelerate launch [--num_processes N] -m pipeline_lib batch JOBS.jsonl -o OUT``.
"""
from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("jobs", help="JSON-lines file: one {\"type\": \"generate\"|\"upscale\", ...} per line")
    p.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    p.add_argument("--overwrite", action="store_true", help="re-run jobs already done, replacing outputs")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: this process's own device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..batch import run_batch

    rep = run_batch(args.jobs, args.output, overwrite=args.overwrite, device=args.device,
                    progress=not (args.no_progress or getattr(args, "quiet", False)))
    tag = f"[process {rep.rank}/{rep.processes}] " if rep.processes > 1 else ""
    print(f"{tag}done {len(rep.done)}, skipped {len(rep.skipped)} (done before), "
          f"failed {len(rep.failed)}")
    for job_id, why in rep.failed.items():
        print(f"{tag}failed {job_id}: {why}")
    return 1 if rep.failed else 0
