"""``ledger work``: claim → submit → record → poll → download, crash-safe and paid once.

``scheduler.py`` runs the loop, ``steps.py`` holds a job's life top to bottom, ``decide.py`` says
what an error means, ``budget.py`` keeps ``--max-spend``.
"""
from .plan import WorkPlan, plan_work
from .scheduler import Scheduler
from .types import Action, EventKind, MILESTONES, Outcome, Stop, WorkOptions, WorkSummary

__all__ = ["Action", "EventKind", "MILESTONES", "Outcome", "Scheduler", "Stop", "WorkOptions", "WorkPlan",
           "WorkSummary", "plan_work"]
