"""Worker processes of the comparison and the study (laid_workflows/jobs.py): a line per finished job,
results back by key, and a failing job stops the pool naming itself."""

from __future__ import annotations

import pytest

from laid_workflows.jobs import Job, run_jobs


def square(x: int) -> dict:
    return {"y": x * x}


def fails() -> dict:
    raise ValueError("a malformed file: fix it")


@pytest.mark.parametrize("workers", [1, 2])
def test_jobs_run_report_and_fail_by_name(workers):
    lines: list[str] = []
    out = run_jobs([Job(f"job {i}", square, {"x": i}) for i in range(3)], workers=workers, log=lines.append)
    assert {k: v["y"] for k, v in out.items()} == {"job 0": 0, "job 1": 1, "job 2": 4}
    assert len(lines) == 3 and all("job" in line and " s" in line for line in lines)
    with pytest.raises(RuntimeError, match="^bad job: a malformed file: fix it$"):
        run_jobs([Job("bad job", fails), Job("job 1", square, {"x": 1})], workers=workers, log=lines.append)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_finished_job_is_reported_before_a_later_one_fails(workers):
    """on_done sees each job as it finishes, so a study killed (here: failed) mid-grid keeps the times
    of the runs it finished; collecting them from run_jobs' return, as before, lost them."""
    done: dict[str, dict] = {}
    with pytest.raises(RuntimeError, match="^bad job"):
        run_jobs([Job("job 1", square, {"x": 1}), Job("bad job", fails)], workers=1,
                 log=lambda line: None, on_done=lambda key, result: done.setdefault(key, result))
    assert done["job 1"]["y"] == 1 and done["job 1"]["seconds"] >= 0 and "bad job" not in done
    done.clear()
    run_jobs([Job(f"job {i}", square, {"x": i}) for i in range(3)], workers=workers, log=lambda line: None,
             on_done=lambda key, result: done.setdefault(key, result))
    assert {k: v["y"] for k, v in done.items()} == {"job 0": 0, "job 1": 1, "job 2": 4}
