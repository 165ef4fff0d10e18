"""Many generate/upscale jobs from a JSON-lines file, split across processes/GPUs/nodes by 🤗 Accelerate.

Each line is one job: ``{"type": "generate", "prompt": "...", "seed": 1, ...}`` (``generate`` /
``text_to_image`` keyword arguments; ``upscaler`` + ``size`` upscale the result) or
``{"type": "upscale", "input": "photo.jpg", "model": "realesrgan-x4plus", ...}`` (``upscale``
keyword arguments). An optional ``"id"`` names the outputs; without one the id is a hash of the
job's content, so it is stable across runs and line order. Outputs go to ``OUTDIR/<id>.png``
(``<id>-<i>.png`` for several images) and ``OUTDIR/<id>.json`` (the record that marks the job
done), each written atomically. A rerun skips jobs whose record exists (resumable); images
of a job without a record were left by an interrupted attempt and are made again.

Run it plainly (one process) or under ``accelerate launch`` (one process per GPU, any number of
nodes): Accelerate's ``split_between_processes`` gives each process its share; nothing here
schedules work itself.

>>> from pipeline_lib.batch import run_batch
>>> run_batch("jobs.jsonl", "out")                          # doctest: +SKIP
BatchReport(rank=0, processes=1, done=['generate-3f2a…'], skipped=[], failed=[])
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidParameterError, OutputExistsError

__all__ = ["JOB_TYPES", "Job", "BatchReport", "job_keys", "parse_job", "read_jobs", "record_path",
           "run_job", "run_batch"]

log = logging.getLogger(__name__)

JOB_TYPES = ("generate", "upscale")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# keywords the batch itself sets (or that make no sense in a file): never taken from a job
_RUNNER_KEYS = frozenset({"progress", "on_progress", "full_result", "output_type", "image"})


@dataclass(frozen=True)
class Job:
    id: str
    type: str
    kwargs: dict[str, Any]
    line: int


@dataclass
class BatchReport:
    """What one process did: job ids done now, skipped (done before) and failed (id: reason)."""

    rank: int
    processes: int
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _named_keywords(*functions) -> frozenset[str]:
    """The keyword arguments ``functions`` name in their signatures (not ``**kwargs``)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for f in functions for p in inspect.signature(f).parameters.values()
                     if p.kind in kinds)


@functools.lru_cache(maxsize=None)
def job_keys(kind: str) -> frozenset[str]:
    """Keys a job of ``kind`` may give, read from the library's own signatures so they cannot
    drift: ``generate()``'s and ``text_to_image()``'s for generate jobs; for upscale jobs
    ``input`` plus ``upscale()``'s named keywords (it also takes backend options, checked when
    the job runs)."""
    if kind == "generate":
        from . import text_to_image  # the package's own name for it, wherever it lives
        from .generate import generate

        return _named_keywords(generate, text_to_image) - _RUNNER_KEYS
    from .upscale import upscale

    return (_named_keywords(upscale) | {"input"}) - _RUNNER_KEYS


def _job_id(kind: str, kwargs: dict) -> str:
    canonical = json.dumps({"type": kind, **kwargs}, sort_keys=True, separators=(",", ":"))
    return f"{kind}-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"


def parse_job(text: str, line: int, where: str = "jobs") -> Job:
    """One JSON line → :class:`Job`; :class:`InvalidParameterError` names the line and the fix."""
    at = f"{where}:{line}"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidParameterError(f"{at}: not valid JSON ({exc.msg} at column {exc.colno}); each "
                                    "line must be one JSON object.") from None
    if not isinstance(obj, dict):
        raise InvalidParameterError(f"{at}: expected a JSON object like {{\"type\": \"upscale\", "
                                    f"\"input\": \"a.png\"}}, got {type(obj).__name__}.")
    kind = obj.pop("type", None)
    if kind not in JOB_TYPES:
        raise InvalidParameterError(f"{at}: \"type\" must be one of {', '.join(JOB_TYPES)}, got {kind!r}.")
    job_id = obj.pop("id", None)
    if job_id is None:
        job_id = _job_id(kind, obj)
    elif not isinstance(job_id, (str, int)) or isinstance(job_id, bool) or not _ID.match(str(job_id)):
        raise InvalidParameterError(f"{at}: \"id\" must be 1-100 letters, digits, '.', '_' or '-' "
                                    f"(it names the output files), got {job_id!r}.")
    if kind == "generate":
        if not isinstance(obj.get("prompt"), str):
            raise InvalidParameterError(f"{at}: a generate job needs \"prompt\" (text).")
        _refuse_keys(at, kind, set(obj) - job_keys(kind))
        if "seed" not in obj:  # reproducible: the same job line always makes the same picture
            obj["seed"] = int(hashlib.sha256(str(job_id).encode()).hexdigest()[:8], 16)
    elif not isinstance(obj.get("input"), str):
        raise InvalidParameterError(f"{at}: an upscale job needs \"input\" (an image path).")
    else:
        _refuse_keys(at, kind, set(obj) & _RUNNER_KEYS)
    return Job(str(job_id), kind, obj, line)


def _refuse_keys(at: str, kind: str, bad: set[str]) -> None:
    if bad:
        raise InvalidParameterError(f"{at}: unknown {kind} option(s) {', '.join(sorted(bad))}; "
                                    f"use {', '.join(sorted(job_keys(kind)))}.")


def read_jobs(path: str | os.PathLike) -> list[Job]:
    """All jobs of a JSON-lines file (blank lines and ``#`` comments skipped); ids must be unique.
    Relative ``input`` paths are taken relative to the jobs file."""
    src = Path(path)
    try:
        lines = src.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidParameterError(f"cannot read jobs file {src}: {exc.strerror or exc}.") from None
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    for n, text in enumerate(lines, 1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        job = parse_job(text, n, str(src))
        if job.id in seen:
            raise InvalidParameterError(f"{src}:{n}: job id {job.id!r} repeats line {seen[job.id]}; "
                                        "give each job its own \"id\" (identical jobs count once).")
        seen[job.id] = n
        if job.type == "upscale":
            inp = Path(job.kwargs["input"]).expanduser()
            job.kwargs["input"] = str(inp if inp.is_absolute() else src.parent / inp)
        jobs.append(job)
    return jobs


def record_path(outdir: Path, job: Job) -> Path:
    return outdir / f"{job.id}.json"


def _outputs(outdir: Path, job: Job, count: int) -> list[Path]:
    return [outdir / (f"{job.id}.png" if count == 1 else f"{job.id}-{i}.png") for i in range(count)]


def run_job(job: Job, outdir: Path, *, device=None, progress: bool = False) -> list[Path]:
    """Run one job, write its image(s) then its record (all atomic); return the image paths.

    The batch calls this only for jobs without a record, so an image of this job that exists
    already was left by an interrupted attempt (killed between two images of one job): it is
    replaced, as the record is what marks a job done."""
    kw = dict(job.kwargs)
    if device is not None:
        kw.setdefault("device", device)
    if job.type == "generate":
        from .compose import text_to_image
        from .generate import generate

        if kw.get("upscaler"):
            results = text_to_image(kw.pop("prompt"), progress=progress, **kw)
        else:
            kw.pop("size", None)
            kw.pop("upscaler", None)
            results = generate(kw.pop("prompt"), progress=progress, **kw)
        paths = _outputs(outdir, job, len(results))
        for res, dest in zip(results, paths):
            _note_leftover(dest)
            res.save(dest, overwrite=True)
    else:
        from .images import save_image
        from .upscale import upscale

        res = upscale(kw.pop("input"), progress=progress, full_result=True, **kw)
        paths = _outputs(outdir, job, 1)
        _note_leftover(paths[0])
        save_image(res.image, paths[0], metadata=res.as_metadata(), overwrite=True)
    return paths


def _note_leftover(dest: Path) -> None:
    if dest.exists():
        log.info("replacing %s, left by an interrupted run of the same job", dest)


def _state():
    try:
        from accelerate import PartialState
    except ImportError:  # plain single-process run without Accelerate installed
        return None
    import torch

    # Launched as several processes (torchrun / `accelerate launch --multi_gpu`) on a host without
    # CUDA: Accelerate only forms a CPU (gloo) group when told cpu=True, otherwise every process
    # would believe it is alone and run every job.
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=distributed and not torch.cuda.is_available())


def run_batch(jobs_file: str | os.PathLike, outdir: str | os.PathLike, *, overwrite: bool = False,
              progress: bool = True, device=None) -> BatchReport:
    """Run the jobs of ``jobs_file`` into ``outdir``; under ``accelerate launch`` every process
    runs its share. Jobs already done (their record exists) are skipped unless ``overwrite``.
    A failing job is logged and reported, the others still run."""
    from tqdm.auto import tqdm

    from .outputs import atomic_write

    out = Path(outdir)
    jobs = read_jobs(jobs_file)
    if device is not None:  # a bad device would fail every job the same way: refuse it once
        from .devices import resolve_device

        resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    state = _state()
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    if device is None and state is not None and state.device.type != "cpu":
        device = str(state.device)  # this process's own GPU
    # Every process reads the done-records before anyone writes (barrier below), so all of them
    # see the same pending list and Accelerate splits it identically.
    pending = [j for j in jobs if overwrite or not record_path(out, j).is_file()]
    waiting = {j.id for j in pending}
    report = BatchReport(rank, world, skipped=[j.id for j in jobs if j.id not in waiting and rank == 0])
    if state is not None:
        state.wait_for_everyone()
    share = pending
    if state is not None and world > 1:
        with state.split_between_processes(pending) as mine:
            share = list(mine)
    log.info("process %d/%d: %d of %d pending jobs (%d done before)", rank, world, len(share),
             len(pending), len(jobs) - len(pending))
    for job in tqdm(share, desc=f"batch [{rank}]", unit="job", disable=not progress):
        t0 = time.perf_counter()
        try:
            paths = run_job(job, out, device=device)
            record = {"id": job.id, "type": job.type, "line": job.line, "job": job.kwargs,
                      "outputs": [p.name for p in paths], "rank": rank,
                      "seconds": round(time.perf_counter() - t0, 3)}
            atomic_write(record_path(out, job), json.dumps(record, indent=1).encode(),
                         overwrite=overwrite)
            report.done.append(job.id)
        except OutputExistsError as exc:
            report.failed[job.id] = f"{exc} (pass overwrite=True / --overwrite to replace it)"
            log.error("job %s (line %d): %s", job.id, job.line, exc)
        except Exception as exc:  # one bad job must not stop the batch; it is reported
            report.failed[job.id] = f"{type(exc).__name__}: {exc}"
            log.error("job %s (line %d) failed: %s: %s", job.id, job.line, type(exc).__name__, exc)
    if state is not None:
        state.wait_for_everyone()
    return report
