"""A job's status: the one list of their names. Everything else (the runner, the domain, the pages, the
job page's script, the chat messages) imports them from here.

A launch is queued -> running -> one of FINAL; a launch that waits for an approval (config:
environments.<name>.approval) is first pending -> queued, rejected or expired.
"""

from __future__ import annotations

# Waits for a second person's approval (Environment.approval_actions): it holds no lock and runs nothing.
PENDING = "pending"
QUEUED = "queued"
RUNNING = "running"
SUCCESSFUL = "successful"
FAILED = "failed"
CANCELED = "canceled"
# The console stopped (or crashed) while the job ran.
INTERRUPTED = "interrupted"
# The console could not run the playbook at all.
ERROR = "error"
REJECTED = "rejected"
EXPIRED = "expired"

# The statuses a job ends in: nothing changes a job once it has one.
FINAL = (SUCCESSFUL, FAILED, CANCELED, INTERRUPTED, ERROR, REJECTED, EXPIRED)
# A job that holds its environment: it has a process to cancel, now or soon.
ACTIVE = (QUEUED, RUNNING)
# Every status, in the order a job goes through them (the history page's filter lists them so).
ALL = (PENDING, *ACTIVE, *FINAL)
