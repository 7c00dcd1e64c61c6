"""Periodic jobs (analytics fold, agent sweeper, lease reaper, …): a schedule each, and
one replica at a time running each of them (see runner.py and leadership.py)."""

from dashboard_api.jobs.leadership import Leadership, leadership_for
from dashboard_api.jobs.runner import Job, JobRunner, JobStats

__all__ = ["Job", "JobRunner", "JobStats", "Leadership", "leadership_for"]
