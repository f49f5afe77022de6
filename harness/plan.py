"""What a grid needs done now: read every unit's state from storage and sort units into waves."""
from __future__ import annotations

import json
from dataclasses import dataclass

from drolt.data import missing_data
from drolt.packed import PER_UNIT, PER_UNIT_DATA
from drolt.sampling import parse_sampler

from .grid import Grid, Run, Unit, expand
from .storage import UnitState, read_state


def packs(units: list[Unit], size: int) -> list[list[Unit]]:
    """Returns the units as trials: units of one stage that differ only in their seed (stage 1: and in their
    method, CE or LDAM-DRW; stage 2: and in their mode, and so in the stage-1 unit and weights each starts
    from, and with the class-aware sampler in their rho) in packs of at most `size`: the fewest packs, their
    sizes evened out, each a run of the units in the grid's order (so when none of a group's units is done, a
    pack of a cell's size holds one cell)."""
    groups: dict[str, list[Unit]] = {}
    for unit in units:
        key = unit.id if size == 1 else json.dumps(_shared(unit), sort_keys=True)
        groups.setdefault(key, []).append(unit)
    out = []
    for group in groups.values():
        count = -(-len(group) // size)
        small, larger = divmod(len(group), count)  # the first `larger` packs hold one unit more
        ends = [i * small + min(i, larger) for i in range(count + 1)]
        out += [group[start:end] for start, end in zip(ends, ends[1:])]
    return out


def _shared(unit: Unit) -> dict:
    """A unit's settings without what may differ within a pack (drolt.packed.PER_UNIT, PER_UNIT_DATA): its seed
    and, in stage 1, its method; in stage 2, its mode with what follows from it (the handoff) and its stage-1
    unit, and its rho where its passes are as long at every rho (the class-aware sampler's)."""
    own = ("stage1_unit", "handoff", *(["method"] if "method" in PER_UNIT[unit.stage] else []))
    out = {key: value for key, value in unit.settings.items() if key not in own}
    for stage in ("stage1", "stage2"):
        if stage in out:
            out[stage] = {key: value for key, value in out[stage].items() if key not in PER_UNIT[int(stage[-1])]}
    if unit.stage == 2 and parse_sampler(unit.settings["stage2"]["sampler"])[0] == "resample":
        out["data"] = {key: value for key, value in out["data"].items() if key not in PER_UNIT_DATA[2]}
    return out


@dataclass
class Plan:
    grid: Grid
    runs: list[Run]
    units: dict[str, Unit]
    states: dict[str, UnitState]

    def todo(self, stage: int) -> list[Unit]:
        """Returns the units of `stage` that are not done yet."""
        return [u for u in self.units.values() if u.stage == stage and self.states[u.id].status != "done"]

    def count(self, status: str) -> int:
        """Returns how many units have this status."""
        return sum(1 for s in self.states.values() if s.status == status)

    def describe(self) -> str:
        """Returns a human summary of the plan: units to run, reused and done."""
        lines = [f"grid {self.grid.name}: {len(self.runs)} runs backed by {len(self.units)} units "
                 f"({sum(u.stage == 1 for u in self.units.values())} stage-1, "
                 f"{sum(u.stage == 2 for u in self.units.values())} stage-2); storage {self.grid.storage}"]
        if sum(u.stage == 1 for u in self.units.values()) < len(self.runs):
            lines.append("  stage-1 units are shared: runs of one cell and seed with the same stage-1 settings (e.g. CE "
                         "and both DRO-LT modes) start from the same one")
        if self.grid.pack_seeds > 1 and (todo := self.todo(1) + self.todo(2)):
            lines.append(f"  units that differ only in their seed (stage 1: or method; stage 2: or mode, or rho "
                         f"with the class-aware sampler) train packed, up to {self.grid.pack_seeds} per trial "
                         f"(pack_seeds): {len(todo)} to run in {len(packs(todo, self.grid.pack_seeds))} trial(s)")
        configs = {u.id: u.config() for u in self.units.values()}
        warnings = {w for u in self.units.values() if u.stage == 1 for w in configs[u.id].stage1.warnings()}
        # the run would stop at its start for want of data: said now, not after the plan looked fine
        warnings |= {problem for u in self.units.values() if self.states[u.id].status != "done"
                     and not (data := configs[u.id].data).synthetic
                     and (problem := missing_data(data.dataset, data.root, data.download))}
        lines += [f"  warning: {w}" for w in sorted(warnings)]
        for status in ("done", "partial", "failed", "pending"):
            units = [u for u in self.units.values() if self.states[u.id].status == status]
            if not units:
                continue
            verb = {"done": "done (reused, not run)", "partial": "to resume", "failed": "failed before (to retry)",
                    "pending": "to run"}[status]
            lines.append(f"  {len(units)} {verb}")
            for u in units:
                state = self.states[u.id]
                extra = f" after epoch {state.epochs_done}" if status == "partial" else ""
                extra += f": {state.detail}" if state.detail else ""
                lines.append(f"    {u.id}  {u.label}{extra}")
        return "\n".join(lines)


def make_plan(grid: Grid) -> Plan:
    """Returns the plan of a grid given what its storage already holds."""
    runs, units = expand(grid)
    return Plan(grid, runs, units, {uid: read_state(grid.storage, u) for uid, u in units.items()})
