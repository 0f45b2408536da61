"""The order trials start in: a Ray Tune ``Searcher`` that holds each branch back until its
prefix checkpoint exists (:mod:`harness.prefix`).

Tune asks :meth:`suggest` whenever a slot is free (``max_concurrent`` wraps it in Tune's
``ConcurrencyLimiter``). The answer is the first *ready* trial: a branch whose trunk has saved
the prefix checkpoint at the branch's cooldown start (or whose trunk has ended without it: the
branch then starts from the latest prefix checkpoint there is), else the next trunk or
unshared trial in the sweep's order. A branch waiting for its checkpoint holds no slot, so
branches of one arm run beside the trunks of others. Nothing ready: None, and Tune asks again
on its next step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.launch.worker import TrialSpec
from harness.prefix import PrefixStore


class BranchWait:
    """Which trials are ready to start (the Ray-free part of the searcher)."""

    def __init__(self, specs: list[TrialSpec], prefixes: PrefixStore) -> None:
        self.waiting = list(specs)
        self.prefixes = prefixes
        self.shares = {s.hash: s.prefix_share() for s in specs}  # parsed once: Tune polls
        self.ended: set[str] = set()

    def ready(self, spec: TrialSpec) -> bool:
        share = self.shares[spec.hash]
        if share is None or share.trunk is None:
            return True
        if share.trunk in self.ended or share.trunk not in self.shares:
            return True
        return self.prefixes.path(share.lineage, share.start).exists()

    def next(self) -> TrialSpec | None:
        """The next trial to start (ready branches first), taken off the list; None if none
        is ready now."""
        ready = [s for s in self.waiting if self.ready(s)]
        branch = [s for s in ready if (share := self.shares[s.hash]) and share.trunk is not None]
        pick = (branch or ready or [None])[0]
        if pick is not None:
            self.waiting.remove(pick)
        return pick


def branch_searcher(specs: list[TrialSpec], storage: Path) -> Any:
    """A ``ray.tune.search.Searcher`` that suggests ``specs`` as :class:`BranchWait` allows."""
    from ray.tune.search import Searcher

    class _BranchSearcher(Searcher):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.wait = BranchWait(specs, PrefixStore(storage))
            self.ids: dict[str, str] = {}

        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
            if not self.wait.waiting:
                return Searcher.FINISHED
            spec = self.wait.next()
            if spec is None:
                return None
            self.ids[trial_id] = spec.hash
            return {"spec": spec.to_param()}

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: a resubmit plans afresh from MLflow and the prefix store."""

        def restore(self, checkpoint_path: str) -> None:
            """Nothing to restore (see :meth:`save`)."""

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                              error: bool = False) -> None:
            if trial_id in self.ids:
                self.wait.ended.add(self.ids[trial_id])

    return _BranchSearcher()
