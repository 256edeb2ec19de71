"""A whole evaluation run as the command line does it, from Python: :func:`run_job` takes a
:class:`Job` (the command, the files, the options, the output files) through statistics and
result to the output files, and returns a :class:`JobResult` (:mod:`.run`)."""

from embeval.jobs.run import Hooks, Job, JobResult, finish, run_job

__all__ = ["Job", "JobResult", "Hooks", "run_job", "finish"]
