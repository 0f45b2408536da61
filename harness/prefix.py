"""Several token budgets from one run: WSD cooldowns branched off a shared stable prefix.

Under a warmup-stable-decay schedule, runs that differ only in ``train.tokens`` take the same
steps up to the start of the shorter run's cooldown (Hagele et al. 2024, "Scaling Laws and
Compute-Optimal Training Beyond Fixed Training Durations", sec. 3: the cooldown alone depends on
the budget). So the harness trains that prefix once:

- a *lineage* is the set of trials whose configs are equal but for ``train.tokens`` (its key
  hashes the config without it) and whose schedule shares (:func:`why_not_shared` is None);
- among a lineage's trials to run, the one with the latest cooldown start is the *trunk*: it
  saves a *prefix checkpoint* (the whole resumable state) at every other trial's cooldown start
  and at its own, under ``<storage>/prefixes/<lineage>/step-<N>.pt``;
- every other trial is a *branch*: it starts from the prefix checkpoint at its cooldown start
  and trains its cooldown only. Starting from a saved state is the trainer's resume, which is
  exact, so a branch's curve and final loss equal those of the same trial run alone;
- any trial with no checkpoint of its own starts from the latest prefix checkpoint of its
  lineage at or before its cooldown start, so a longer budget added later extends the old
  trunk from its last stable checkpoint, and a branch whose trunk failed early trains on from
  whatever the trunk reached.

Prefix checkpoints are kept after a sweep ends (a later, longer budget extends from them);
deleting ``<storage>/prefixes`` costs only recomputation.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.config import TrainConfig, TrialConfig
from harness.naming import human
from harness.schedule import decay_start, warmup_steps

PREFIX_DIR = "prefixes"
"""Folder under the storage that holds each lineage's prefix checkpoints."""


def why_not_shared(train: TrainConfig) -> str | None:
    """Why trials with this ``train`` cannot share a stable prefix, or None when they can."""
    if train.schedule != "wsd":
        return f"schedule {train.schedule}: the lr depends on the budget from the first step"
    if train.warmup_steps is None and train.warmup_frac > 0:
        return "warmup_frac: the warmup scales with the budget (set train.warmup_steps)"
    start = decay_start(train)
    if start == train.steps:
        return "no cooldown (decay_frac rounds to 0 steps)"
    if start == 0:
        return "no stable phase (the cooldown starts at step 0)"
    if warmup_steps(train) > start:
        return "the warmup runs into the cooldown"
    return None


def lineage_key(trial: TrialConfig) -> str:
    """12-hex hash of the trial's config without ``train.tokens``: equal for trials that differ
    only in their budget."""
    body = trial.model_dump(mode="json")
    del body["train"]["tokens"]
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Share:
    """One trial's part in its lineage: where its stable phase ends, where it saves prefix
    checkpoints, and the trunk it branches from (None: it is a trunk, or alone)."""

    lineage: str
    start: int  # its cooldown start: steps before it are the shared stable prefix
    saves: tuple[int, ...]  # steps where it saves a prefix checkpoint (its own start included)
    trunk: str | None = None  # hash of the trial whose prefix checkpoint it starts from
    role: str = "alone"  # trunk (others branch from it) | branch | alone

    def to_param(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, d: dict[str, Any]) -> Share:
        return cls(d["lineage"], int(d["start"]), tuple(int(s) for s in d["saves"]),
                   d.get("trunk"), d.get("role", "alone"))


class PrefixStore:
    """The prefix checkpoints of every lineage under one storage folder."""

    def __init__(self, storage: Path) -> None:
        self.root = Path(storage) / PREFIX_DIR

    def path(self, lineage: str, step: int) -> Path:
        return self.root / lineage / f"step-{step}.pt"

    def steps(self, lineage: str) -> list[int]:
        """Steps with a prefix checkpoint, ascending (temporaries and set-aside files skipped)."""
        folder = self.root / lineage
        if not folder.is_dir():
            return []
        found = []
        for p in folder.glob("step-*.pt"):
            tail = p.name[len("step-"):-len(".pt")]
            if tail.isdigit():
                found.append(int(tail))
        return sorted(found)

    def latest(self, lineage: str, at_most: int) -> list[int]:
        """Steps of prefix checkpoints at or before ``at_most``, newest first."""
        return [s for s in reversed(self.steps(lineage)) if s <= at_most]


@dataclass(frozen=True)
class SharePlan:
    """How the trials to run share prefixes: ``shares`` for those that can, ``reasons`` for
    those that cannot, ``inherited`` the steps each is planned to start from."""

    shares: dict[str, Share]
    reasons: dict[str, str]
    inherited: dict[str, int]

    def inherited_tokens(self, trials: list[TrialConfig]) -> dict[str, int]:
        """Per trial hash, the tokens it is planned to start with from a prefix checkpoint."""
        return {t.hash: self.inherited.get(t.hash, 0) * t.train.batch_tokens for t in trials}

    def tokens(self, trials: list[TrialConfig]) -> tuple[int, int]:
        """Tokens of the budgets, and tokens trained with the plan."""
        budgets = sum(t.train.tokens_trained for t in trials)
        return budgets, budgets - sum(self.inherited_tokens(trials).values())


def plan_sharing(trials: list[TrialConfig], store: PrefixStore | None,
                 enabled: bool = True) -> SharePlan:
    """The sharing plan of ``trials`` (those to run), given the prefix checkpoints on disk.

    ``reasons`` names why trials of one lineage (several budgets) cannot share; a trial with no
    other budget and a schedule that cannot share is simply not in the plan."""
    reasons: dict[str, str] = {}
    groups: dict[str, list[TrialConfig]] = defaultdict(list)
    for t in trials:
        groups[lineage_key(t)].append(t)
    shares: dict[str, Share] = {}
    inherited: dict[str, int] = {}
    for key, group in groups.items():
        members = []
        for t in group:
            why = "share_prefixes is false" if not enabled else why_not_shared(t.train)
            if why is None:
                members.append(t)
            elif len(group) > 1:
                reasons[t.hash] = why
        if not members:
            continue
        members.sort(key=lambda t: (decay_start(t.train), t.train.tokens))
        trunk = members[-1]
        starts = sorted({decay_start(t.train) for t in members})
        role = "trunk" if len(members) > 1 else "alone"
        shares[trunk.hash] = Share(key, decay_start(trunk.train), tuple(starts), None, role)
        on_disk = store.steps(key) if store is not None else []
        inherited[trunk.hash] = _latest(on_disk, decay_start(trunk.train))
        for t in members[:-1]:
            start = decay_start(t.train)
            if start in on_disk or start > inherited[trunk.hash]:
                shares[t.hash] = Share(key, start, (start,), trunk.hash, "branch")
                inherited[t.hash] = start
            else:  # below where the trunk starts, with no checkpoint there: it trains on
                # from the latest one below (a budget added after its trunk went past it)
                shares[t.hash] = Share(key, start, (start,), None, "alone")
                inherited[t.hash] = _latest(on_disk, start)
    return SharePlan(shares, reasons, inherited)


def _latest(steps: list[int], at_most: int) -> int:
    """The largest of ``steps`` at or below ``at_most`` (0: none)."""
    return max((s for s in steps if s <= at_most), default=0)


def describe(plan: SharePlan, trials: list[TrialConfig], index: dict[str, int]) -> dict[str, str]:
    """The dry-run's ``prefix`` cell per trial hash: ``trunk``, ``branch of #i at 393k``,
    ``trunk, extends at 1.5M``, ``alone`` or ``-`` (cannot share)."""
    cells = {}
    for t in trials:
        share = plan.shares.get(t.hash)
        at = plan.inherited.get(t.hash, 0) * t.train.batch_tokens
        if share is None:
            cells[t.hash] = "-"
        elif share.trunk is not None:
            cells[t.hash] = f"branch of #{index[share.trunk]} at {human(at)}"
        elif at:
            cells[t.hash] = f"{share.role}, extends at {human(at)}"
        else:
            cells[t.hash] = share.role
    return cells


def summary_lines(plan: SharePlan, trials: list[TrialConfig]) -> list[str]:
    """What the dry-run says under the table: trunks, branches, tokens saved, and why the
    others do not share."""
    budgets, trained = plan.tokens(trials)
    roles = [s.role for s in plan.shares.values()]
    trunks, branches = roles.count("trunk"), roles.count("branch")
    if trained == budgets:
        lines = ["prefix sharing: none (every trial trains its whole budget)"]
        if not branches and not plan.reasons:
            return ["prefix sharing: none (no trials differ only in train.tokens)"]
    else:
        lines = [f"prefix sharing: {plural(trunks, 'trunk')}, {plural(branches, 'branch')}; "
                 f"trains {human(trained)} of the budgets' {human(budgets)} tokens "
                 f"({trained / budgets:.2f}x, {human(budgets - trained)} saved)"]
    by_reason: dict[str, int] = defaultdict(int)
    for why in plan.reasons.values():
        by_reason[why] += 1
    lines += [f"  {n} trials do not share: {why}" for why, n in sorted(by_reason.items())]
    return lines


def plural(n: int, word: str) -> str:
    """``1 trunk``, ``2 trunks``, ``2 branches``."""
    if n == 1:
        return f"1 {word}"
    return f"{n} {word}{'es' if word.endswith(('s', 'ch')) else 's'}"
