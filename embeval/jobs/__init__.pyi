# The public names of embeval.jobs, listed once: type checkers read them, and __init__.py hands
# them to lazy_loader.attach_stub (each loads from its submodule on first use).
from .job import Hooks as Hooks
from .job import Job as Job
from .job import JobResult as JobResult
from .outputs import finish as finish
from .run import run_job as run_job
