"""Names of the run tags that more than one part of the pipeline writes or reads."""

DIVERGED_TAG = "diverged"  # "true" on a run stopped by a diverged loss (status FAILED)
ERROR_TAG = "error"  # the exception that failed a run, one line
