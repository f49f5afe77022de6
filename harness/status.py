"""`drolt status`: what of a grid is done, running, failed or pending, read from storage alone."""
from __future__ import annotations

import fcntl
from pathlib import Path

from .grid import Grid
from .plan import make_plan


def run_by(grid_path: Path) -> str:
    """How the storage lock names the `drolt run` of the grid file `grid_path` (resolved, as load_grid has it)."""
    return f"drolt run {grid_path}"


def run_in_progress(storage: Path) -> str:
    """Returns who holds the storage lock ("pid N on host"), or "" when no `drolt run` is using it."""
    return lock_holder(storage / ".drolt-run.lock")


def lock_holder(path: Path) -> str:
    """Returns who holds the lock file `path` (what it says, e.g. "pid N on host"), or "" when nobody does."""
    if not path.exists():
        return ""
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip() or "another process"
        fcntl.flock(f, fcntl.LOCK_UN)
    return ""


def status_table(grid: Grid) -> str:
    """Returns one line per unit (status, epochs, label, reason) and the totals."""
    plan = make_plan(grid)
    holder = run_in_progress(grid.storage)
    ours = run_by(grid.path) in holder  # grids may share a storage folder: units of another grid's run differ
    lines = [f"grid {grid.name}, storage {grid.storage}: "
             + (f"a `drolt run` of this grid is in progress ({holder})" if ours
                else f"a `drolt run` of another grid uses this storage ({holder})" if holder
                else "no run in progress")]
    counts: dict[str, int] = {}
    for unit in sorted(plan.units.values(), key=lambda u: (u.stage, u.label)):
        state = plan.states[unit.id]
        status = state.status
        # A trial holds its unit's lock while it trains, from before its first epoch (a unit grids share may
        # be trained by another grid's run); a run's other started units wait for a slot.
        if status in ("partial", "pending") and lock_holder(grid.storage / unit.id / ".lock"):
            status = "running"
        elif status == "partial":
            status = "queued" if ours else "interrupted"
        elif status == "pending" and unit.depends_on and plan.states[unit.depends_on].status != "done":
            status = "waiting"  # for its stage-1 unit
        counts[status] = counts.get(status, 0) + 1
        key = "stage1" if unit.stage == 1 else "stage2"
        epochs = f"{state.epochs_done}/{unit.settings[key]['epochs']}"
        reason = f"  {state.detail}" if state.detail else ""
        lines.append(f"  {status:<11} {epochs:>9}  {unit.id}  {unit.label}{reason}")
    lines.append("total: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f" of {len(plan.units)} units")
    if not holder and not any((grid.storage / unit_id).exists() for unit_id in plan.units):
        lines.append(f"nothing of this grid is in {grid.storage} yet: start it with `drolt run`, or pass the "
                     "--storage that its `drolt run` used")
    return "\n".join(lines)
