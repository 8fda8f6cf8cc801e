"""What the pipeline relies on in Hydra's private API, held on its own.

pipeline.sweeps.hydra_internals is the only module that touches Hydra's privates: the basic
sweeper's cutting of a grid into jobs, and a failed job's exception in `JobReturn`.
pyproject.toml caps hydra-core at the minor version this test passed on.
"""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus

from pipeline.sweeps.hydra_internals import grid_jobs, job_error


def test_a_grid_is_cut_into_jobs_as_the_basic_sweeper_does():
    parsed = OverridesParser.create().parse_overrides(["optimizer=sgd,adam", "seed=1,2", "x=3"])
    batches = grid_jobs(parsed)
    jobs = [job for batch in batches for job in batch]
    assert len(jobs) == 4
    assert sorted(tuple(sorted(job)) for job in jobs) == sorted(
        tuple(sorted([f"optimizer={o}", f"seed={s}", "x=3"]))
        for o in ("sgd", "adam")
        for s in (1, 2)
    )
    assert [len(batch) for batch in grid_jobs(parsed, max_batch_size=3)] == [3, 1]


def test_a_failed_jobs_exception_is_read_without_raising_it():
    error = ValueError("bad lr")
    failed = JobReturn(status=JobStatus.FAILED, _return_value=error)
    assert job_error(failed) is error
    with pytest.raises(ValueError):
        failed.return_value  # noqa: B018  (the public property re-raises)
    assert job_error(JobReturn(status=JobStatus.COMPLETED, _return_value=0.9)) is None
