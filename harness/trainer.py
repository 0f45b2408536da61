"""The state and steps of one trial: model, optimizer, data, one optimizer step, the metrics
of a logging window, and the whole resumable state a checkpoint holds.

:func:`harness.train.run_trial` drives it (the loop, checkpoints, prefix sharing, records);
``harness bench`` times :meth:`Trainer.train_step` on its own.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness.config import TrialConfig
from harness.data import TokenData, train_batch
from harness.distributed import World
from harness.env import device_peak_flops
from harness.evaluate import Batches, batch_losses, eval_sets, mean_loss
from harness.model.transformer import Telemetry, Transformer
from harness.optim import build_optimizer, muon_of, qk_clip_
from harness.record import same_data
from harness.routing import routing_health
from harness.schedule import lr_multiplier
from harness.store import data_sha


def load_imbalance(loads_LE: torch.Tensor) -> torch.Tensor:
    """Max / mean tokens per expert (L_moe,) of loads (L_moe, E); 1 = balanced."""
    return loads_LE.amax(dim=1) / loads_LE.mean(dim=1).clamp_min(1e-9)


@dataclass
class Window:
    """Statistics accumulated between two metric logs."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    max_logits: torch.Tensor | None = None  # (L, H) running max
    loads: torch.Tensor | None = None  # (L_moe, E) summed tokens per expert
    clipped: torch.Tensor | None = None  # (L,) heads clipped, summed
    peak_imbalance: float = 0.0  # largest per-step max / mean load (mean over MoE layers)
    tokens: int = 0
    seconds: float = 0.0

    def add(self, loss: float, gnorm: float, tel: Telemetry, clipped: torch.Tensor | None) -> None:
        self.losses.append(loss)
        self.grad_norms.append(gnorm)
        ml = tel.max_logits.float().cpu()
        self.max_logits = ml if self.max_logits is None else torch.maximum(self.max_logits, ml)
        ld = tel.expert_load.float().cpu()  # (L_moe, E)
        self.loads = ld if self.loads is None else self.loads + ld
        if ld.numel():
            step_imb = float(load_imbalance(ld).mean())
            self.peak_imbalance = max(self.peak_imbalance, step_imb)
        if clipped is not None:
            c = clipped.cpu().float()
            self.clipped = c if self.clipped is None else self.clipped + c


class Trainer:
    """State and steps of one trial; ``run_trial`` is the entry point.

    Data parallel (``world.size > 1``, :mod:`harness.distributed`): every rank builds the same
    model from the same seed; DDP all-reduces the gradients; rank ``r`` of ``W`` trains on
    micro-batches ``r * A / W .. (r + 1) * A / W - 1`` of each global batch of ``A``
    (``train.grad_accum``), so the global batch is the one-worker batch; expert loads are summed
    and max logits maxed over the ranks before the bias update and QK-Clip; Muon splits its
    Newton-Schulz work over the ranks. Every rank then holds the same weights and state.
    """

    def __init__(self, trial: TrialConfig, data: TokenData, device: torch.device,
                 world: World | None = None) -> None:
        self.trial, self.data, self.device = trial, data, device
        self.world = world or World()
        tc = trial.train
        torch.manual_seed(tc.seed)
        self.model = Transformer(trial.model).to(device)
        self.optimizer = build_optimizer(self.model, trial.optim)
        self.forward: Callable[..., Any] = (
            torch.compile(self.model) if tc.compile else self.model  # type: ignore[assignment]
        )
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None
        self.train_forward = self.forward
        if self.world.size > 1:
            self._data_parallel()
        self.micro_bs = (tc.micro_batch_tokens or tc.batch_tokens) // tc.seq_len
        self.flops_per_token = trial.model.flops_per_token(tc.seq_len)
        self.val, self.test = eval_sets(trial, data)
        self.autocast = device.type == "cuda"
        self.step = 0
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.run_max_logits: torch.Tensor | None = None
        self.elapsed = 0.0
        self.window = Window()  # steps since the last log; checkpointed, so a resumed log
        # averages the same steps as an uninterrupted one
        self.origin: dict[str, Any] = {}  # {"from": trunk hash, "step": n}: started from the
        # prefix checkpoint the trunk saved at step n (harness.prefix)

    def _data_parallel(self) -> None:
        """DDP over the world's ranks (buffers such as router biases are updated identically
        on every rank, so none are broadcast) and Muon's Newton-Schulz split across them."""
        from torch.nn.parallel import DistributedDataParallel

        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.set_device(self.device)
        with warnings.catch_warnings():  # torch 2.13 deprecates broadcast_buffers but says to
            # keep it while buffers must not be synced at init; the router biases are equal
            warnings.simplefilter("ignore", FutureWarning)
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device] if cuda else None, broadcast_buffers=False)
        self.train_forward = (torch.compile(self.ddp) if self.trial.train.compile  # type: ignore[assignment]
                              else self.ddp)
        muon = muon_of(self.optimizer)
        if muon is not None:
            muon.shard = self.world.shard

    @property
    def tokens_seen(self) -> int:
        """Tokens trained on so far (whole steps)."""
        return self.step * self.trial.train.batch_tokens

    # checkpoints -------------------------------------------------------------------------------
    STATE_KEYS = ("model", "optimizer", "step", "rows", "run_max_logits", "elapsed", "rng")

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "rows": [[s, m] for s, m in self.rows],
            "run_max_logits": self.run_max_logits,
            "elapsed": self.elapsed,
            "rng": torch.get_rng_state(),
            "window": asdict(self.window),
            "data_sha": data_sha(self.data.fingerprint),
            "origin": dict(self.origin),
        }

    def load(self, state: dict[str, Any], path: Path | None = None) -> None:
        same_data(state.get("data_sha"), self.data, path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.rows = [(int(s), dict(m)) for s, m in state["rows"]]
        self.run_max_logits = state["run_max_logits"]
        self.elapsed = float(state["elapsed"])
        torch.set_rng_state(state["rng"])
        self.window = Window(**state.get("window", {}))
        self.origin = dict(state.get("origin") or {})

    # steps -------------------------------------------------------------------------------------
    def loss_of(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Telemetry]:
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            logits, tel = self.train_forward(x)  # (B, T, V)
        ce = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        return ce, tel

    def train_step(self) -> tuple[float, float, Telemetry, torch.Tensor | None]:
        """One optimizer step over ``grad_accum`` micro-batches (this rank's share of them);
        returns the global batch's loss and telemetry."""
        tc, opt, world = self.trial.train, self.optimizer, self.world
        total, max_logits, loads = 0.0, None, None
        share = world.share(tc.grad_accum)
        for micro in share:
            x, y = train_batch(self.data, tc.seq_len, self.micro_bs, tc.seed, self.step, micro)
            with self._no_sync(micro != share[-1]):
                ce, tel = self.loss_of(x.to(self.device), y.to(self.device))
                loss = (ce + tel.aux_loss) / tc.grad_accum
                (loss * world.size if world.size > 1 else loss).backward()  # DDP averages
            total += ce.item() / tc.grad_accum
            ml, ld = tel.max_logits, tel.expert_load
            max_logits = ml if max_logits is None else torch.maximum(max_logits, ml)
            loads = ld if loads is None else loads + ld
        assert max_logits is not None and loads is not None
        if world.size > 1:
            total = float(world.all_sum(torch.tensor(total, dtype=torch.float64,
                                                     device=self.device)))
            max_logits, loads = world.all_max(max_logits.detach()), world.all_sum(loads.detach())
        gnorm = self.clip_grads()
        mult = lr_multiplier(tc, self.step)
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * mult
        opt.step()
        opt.zero_grad(set_to_none=True)
        clipped = None
        if self.trial.optim.qk_clip_tau is not None:
            clipped = qk_clip_(self.model, self.trial.optim.qk_clip_tau, max_logits)
        self.model.update_router_bias(loads, self.trial.model.moe.bias_rate(self.step))
        self.step += 1
        tel = Telemetry(max_logits=max_logits, expert_load=loads, aux_loss=tel.aux_loss.detach())
        return total, gnorm, tel, clipped

    def _no_sync(self, skip: bool) -> contextlib.AbstractContextManager[None]:
        """DDP's ``no_sync`` for every micro-batch but a rank's last: one all-reduce a step."""
        if skip and self.ddp is not None:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    def clip_grads(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.trial.train.grad_clip or math.inf
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def evaluate(self, batches: Batches | None = None) -> float:
        """Mean loss over ``batches`` (default: the validation set); with several ranks each
        evaluates every ``size``-th batch and the sums are reduced."""
        batches = self.val if batches is None else batches
        world = self.world
        if world.size == 1:
            return mean_loss(self.model, self.forward, batches, self.device)
        mine = batch_losses(self.model, self.forward, batches[world.rank::world.size],
                            self.device)
        total = torch.stack(mine).double().sum() if mine else torch.zeros((), device=self.device,
                                                                          dtype=torch.float64)
        sums = torch.stack([total, torch.tensor(float(len(mine)), dtype=torch.float64,
                                                device=self.device)])  # one sync, not one a batch
        total, n = world.all_sum(sums).tolist()
        return total / n

    def final_weights(self) -> dict[str, Any]:
        """What ``final.pt`` holds: fp32 weights, step, data id and the resolved config."""
        return {"model": self.model.state_dict(), "step": self.step,
                "data_sha": data_sha(self.data.fingerprint),
                "trial": self.trial.model_dump_json()}

    # metrics -----------------------------------------------------------------------------------
    def metrics(self, w: Window, val_loss: float | None,
                test_loss: float | None = None) -> dict[str, float]:
        tokens = self.tokens_seen
        tps = w.tokens / max(w.seconds, 1e-9)
        m: dict[str, float] = {
            "train/loss": sum(w.losses) / len(w.losses),
            "tokens": float(tokens),
            "flops": self.flops_per_token * tokens,
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": sum(w.grad_norms) / len(w.grad_norms),
            "perf/tokens_per_s": tps,
        }
        if val_loss is not None:
            m["val/loss"] = val_loss
        if test_loss is not None:
            m["test/loss"] = test_loss
        rms = getattr(self.optimizer, "last_update_rms", None)
        if rms is not None:
            m["muon/update_rms"] = float(rms)
        peak = device_peak_flops(self.device)
        if peak:
            m["perf/mfu"] = self.flops_per_token * tps / peak
        m.update(self._attention_metrics(w))
        m.update(self._moe_metrics(w))
        return m

    def _attention_metrics(self, w: Window) -> dict[str, float]:
        assert w.max_logits is not None
        per_layer = w.max_logits.amax(dim=1)  # (L,)
        m = {"attn/max_logit": float(per_layer.max())}
        m.update({f"attn/max_logit/L{i}": float(v) for i, v in enumerate(per_layer)})
        if w.clipped is not None:
            m["attn/heads_clipped"] = float(w.clipped.sum())
            m.update({f"attn/heads_clipped/L{i}": float(v) for i, v in enumerate(w.clipped)})
        rml = self.run_max_logits
        self.run_max_logits = w.max_logits if rml is None else torch.maximum(rml, w.max_logits)
        return m

    def _moe_metrics(self, w: Window) -> dict[str, float]:
        assert w.loads is not None
        if w.loads.numel() == 0:
            return {}
        first = self.trial.model.first_k_dense
        imbalance = load_imbalance(w.loads)  # (L_moe,)
        dead = (w.loads == 0).sum(dim=1)
        biases = [b.e_score_bias for b in self.moe_layers()]
        m = {"moe/imbalance": float(imbalance.mean()), "moe/dead_experts": float(dead.sum()),
             "moe/imbalance_peak": w.peak_imbalance}
        for j, (imb, d, b) in enumerate(zip(imbalance, dead, biases, strict=True)):
            m[f"moe/imbalance/L{first + j}"] = float(imb)
            m[f"moe/dead_experts/L{first + j}"] = float(d)
            m[f"moe/bias_range/L{first + j}"] = float(b.max() - b.min())
        return m

    def routing_metrics(self, last: dict[str, float]) -> dict[str, float]:
        """``routing/*`` health of the run so far (:mod:`harness.routing`), ``last`` the row
        being logged; {} for a dense model."""
        travel = self.trial.model.moe.bias_travel(self.step)
        health = routing_health([*self.rows, (self.step, last)], travel)
        return {} if health is None else health.metrics()

    def moe_layers(self) -> list[Any]:
        return [blk.ffn for blk in self.model.blocks[self.trial.model.first_k_dense :]]

    def logit_table(self) -> str:
        """CSV of the per-head max attention logit over the whole run."""
        lines = ["layer,head,max_logit"]
        if self.run_max_logits is not None:
            for (i, h), v in zip(
                torch.cartesian_prod(
                    torch.arange(self.run_max_logits.shape[0]),
                    torch.arange(self.run_max_logits.shape[1]),
                ).tolist(),
                self.run_max_logits.flatten().tolist(),
                strict=True,
            ):
                lines.append(f"{i},{h},{v:.6g}")
        return "\n".join(lines) + "\n"
