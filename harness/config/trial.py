"""Typed, frozen configuration for one trial: model, optimizer, data and training.

Every config is a pydantic v2 model with ``extra="forbid"`` (an unknown YAML key is an error) and
``frozen=True``. Rules are checked at construction and name the field they are about. Sweep files
(grids, zips, seeds, profiles) live in :mod:`harness.config.sweep`; sizes and FLOPs are counted by
:mod:`harness.config.accounting`, which imports nothing from here at run time.

Units are in the field docs: tokens are tokens (never steps), dims are elements, lr is per step.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from harness.config.accounting import ParamCounts, flops_per_token, param_counts
from harness.config.data import DataConfig
from harness.config.frozen import Frozen

MAX_LOGIT_CHUNK_ELEMS = 1 << 26
"""Most attention logits the max-logit telemetry pass holds at once (256 MB in fp32); used by
``harness.model.attention.causal_max_logits`` and counted by ``harness.memory``."""


class AttentionConfig(Frozen):
    """Attention: MLA (DeepSeek-V2/V3, Kimi K2) or plain multi-head attention, both with RoPE."""

    kind: Literal["mla", "mha"] = "mla"
    n_heads: int = Field(4, gt=0, description="attention heads")
    head_dim: int | None = Field(
        None, gt=0, description="MHA only: q/k/v head dim (null = d_model / n_heads)"
    )
    q_lora_rank: int = Field(0, ge=0, description="MLA query compression rank (0 = none)")
    kv_lora_rank: int = Field(32, gt=0, description="MLA latent KV rank")
    qk_nope_head_dim: int = Field(16, gt=0, description="MLA non-rotary q/k dim per head")
    qk_rope_head_dim: int = Field(8, gt=0, description="rotary q/k dim per head (MLA: k^R shared)")
    v_head_dim: int = Field(16, gt=0, description="MLA value dim per head")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim ({self.qk_rope_head_dim}) must be even for RoPE")
        if self.head_dim is not None and self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for RoPE")
        if self.kind == "mha" and self.q_lora_rank:
            raise ValueError("q_lora_rank must be 0 for kind mha (query compression is MLA only)")
        return self


DEEPSEEK_BIAS_RATE = 1e-3
"""DeepSeek-V3's aux-loss-free bias step u (report §4.2: 0.001 for the first 14.3T tokens)."""
BIAS_RATE_START = 1e-2
"""Default ``bias_rate_start``: the bias step of the first steps (calibrated in docs/design.md,
routing calibration: u = 0.01 balances 64 experts within ~80 steps)."""
BIAS_RATE_DECAY_STEPS = 1000
"""Default ``bias_rate_decay_steps``: the step at which the bias step has halved."""


class MoEConfig(Frozen):
    """Fine-grained MoE with shared experts and aux-loss-free balancing (DeepSeek-V3 §2.1.2)."""

    n_routed_experts: int = Field(8, gt=0, description="routed experts E")
    top_k: int = Field(2, gt=0, description="routed experts active per token K")
    n_shared: int = Field(1, ge=0, description="shared experts, always active")
    expert_ffn_dim: int = Field(64, gt=0, description="SwiGLU hidden dim of one expert")
    n_groups: int = Field(1, gt=0, description="expert groups for group-limited routing (1 = flat)")
    topk_groups: int = Field(1, gt=0, description="groups kept per token")
    score_func: Literal["sigmoid", "softmax"] = "sigmoid"
    routed_scaling_factor: float = Field(1.0, gt=0, description="scale of routed output")
    norm_topk_prob: bool = Field(True, description="normalise the top-k weights to sum 1")
    bias_update_rate: float | None = Field(
        None, ge=0,
        description="aux-loss-free bias step u per optimizer step (0 = off; null = the schedule "
        "max(0.001, bias_rate_start / (1 + step / bias_rate_decay_steps)))",
    )
    bias_rate_start: float = Field(
        BIAS_RATE_START, gt=0, description="bias_update_rate null: the bias step at step 0"
    )
    bias_rate_decay_steps: int = Field(
        BIAS_RATE_DECAY_STEPS, gt=0,
        description="bias_update_rate null: steps after which the bias step has halved; it "
        "reaches DeepSeek-V3's 0.001 at 9x that",
    )
    seq_aux_alpha: float = Field(0.0, ge=0, description="sequence-wise balance loss weight")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.top_k > self.n_routed_experts:
            raise ValueError(
                f"top_k ({self.top_k}) must be <= n_routed_experts ({self.n_routed_experts})"
            )
        if self.n_routed_experts % self.n_groups:
            raise ValueError(
                f"n_groups ({self.n_groups}) must divide n_routed_experts "
                f"({self.n_routed_experts})"
            )
        if self.topk_groups > self.n_groups:
            raise ValueError(
                f"topk_groups ({self.topk_groups}) must be <= n_groups ({self.n_groups})"
            )
        per_group = self.n_routed_experts // self.n_groups
        if self.n_groups > 1 and per_group < 2:
            raise ValueError(
                f"n_groups ({self.n_groups}) leaves {per_group} expert per group; group scores "
                "sum the top-2 experts of a group, so each group needs >= 2"
            )
        if self.n_groups > 1 and self.topk_groups * per_group < self.top_k:
            raise ValueError(
                f"topk_groups ({self.topk_groups}) x experts per group ({per_group}) must be "
                f">= top_k ({self.top_k})"
            )
        return self

    @property
    def sparsity(self) -> float:
        """Routed experts over active routed experts (K2 report §2.3)."""
        return self.n_routed_experts / self.top_k

    def bias_rate(self, step: int) -> float:
        """The aux-loss-free bias step u applied after optimizer step ``step`` (0-based).

        ``bias_update_rate`` when set; else ``max(DEEPSEEK_BIAS_RATE, bias_rate_start / (1 +
        step / bias_rate_decay_steps))``: fast while a short run's router settles, DeepSeek-V3's
        u = 0.001 (§4.2) in long runs, and a function of the step alone, never of the budget,
        so runs that differ only in ``train.tokens`` take the same steps (docs/design.md, routing
        calibration).
        """
        if self.bias_update_rate is not None:
            return self.bias_update_rate
        decayed = self.bias_rate_start / (1 + step / self.bias_rate_decay_steps)
        return max(DEEPSEEK_BIAS_RATE, decayed)

    def bias_travel(self, steps: int) -> float:
        """How far one expert's bias can move in ``steps`` steps: the sum of their u."""
        if self.bias_update_rate is not None:
            return self.bias_update_rate * steps
        return sum(self.bias_rate(t) for t in range(steps))


class ModelConfig(Frozen):
    """A DeepSeek-V3 / Kimi-K2 style decoder: first_k_dense SwiGLU layers, then MoE layers."""

    d_model: int = Field(128, gt=0, description="residual width D")
    n_layers: int = Field(4, gt=0, description="transformer blocks")
    first_k_dense: int = Field(1, ge=0, description="leading blocks with a dense FFN")
    dense_ffn_dim: int = Field(256, gt=0, description="SwiGLU hidden dim of dense blocks")
    vocab_size: int = Field(256, gt=0, description="embedding rows (>= tokenizer vocabulary)")
    max_seq_len: int = Field(1024, gt=0, description="longest sequence, tokens")
    tie_embeddings: bool = False
    norm_eps: float = Field(1e-6, gt=0, description="RMSNorm epsilon")
    init_std: float = Field(0.02, gt=0, description="std of normal init of weights")
    attention: AttentionConfig = AttentionConfig()
    moe: MoEConfig = MoEConfig()

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.first_k_dense > self.n_layers:
            raise ValueError(
                f"first_k_dense ({self.first_k_dense}) must be <= n_layers ({self.n_layers})"
            )
        att = self.attention
        if att.kind == "mha" and att.head_dim is None and (self.d_model // att.n_heads) % 2:
            raise ValueError(
                f"d_model / attention.n_heads ({self.d_model // att.n_heads}) must be even for RoPE"
            )
        if att.kind == "mha" and att.head_dim is None and self.d_model % att.n_heads:
            raise ValueError(
                f"attention.n_heads ({att.n_heads}) must divide d_model ({self.d_model}) "
                "when attention.head_dim is null"
            )
        return self

    @property
    def mha_head_dim(self) -> int:
        """Head dim of plain MHA (q, k and v alike; RoPE rotates all of it)."""
        return self.attention.head_dim or self.d_model // self.attention.n_heads

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.first_k_dense

    @property
    def sparsity(self) -> float:
        """Routed experts / active routed experts (K2 report §2.3); 1.0 for a dense model."""
        return self.moe.sparsity if self.n_moe_layers else 1.0

    def param_counts(self) -> ParamCounts:
        """Total, active and embedding parameters, from the config alone (no model built)."""
        return param_counts(self)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token at this context length."""
        return flops_per_token(self, seq_len)

    @classmethod
    def from_hf_config(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a DeepSeek-V3 / Kimi-K2 style HF ``config.json`` dict."""
        attention = AttentionConfig(
            kind="mla",
            n_heads=d["num_attention_heads"],
            q_lora_rank=d.get("q_lora_rank") or 0,
            kv_lora_rank=d["kv_lora_rank"],
            qk_nope_head_dim=d["qk_nope_head_dim"],
            qk_rope_head_dim=d["qk_rope_head_dim"],
            v_head_dim=d["v_head_dim"],
            rope_theta=d.get("rope_theta", 10000.0),
        )
        moe = MoEConfig(
            n_routed_experts=d["n_routed_experts"],
            top_k=d["num_experts_per_tok"],
            n_shared=d.get("n_shared_experts") or 0,
            expert_ffn_dim=d["moe_intermediate_size"],
            n_groups=d.get("n_group") or 1,
            topk_groups=d.get("topk_group") or 1,
            score_func=d.get("scoring_func", "sigmoid"),
            routed_scaling_factor=d.get("routed_scaling_factor", 1.0),
            norm_topk_prob=d.get("norm_topk_prob", True),
        )
        return cls(
            d_model=d["hidden_size"],
            n_layers=d["num_hidden_layers"],
            first_k_dense=d.get("first_k_dense_replace", 0),
            dense_ffn_dim=d["intermediate_size"],
            vocab_size=d["vocab_size"],
            max_seq_len=d.get("max_position_embeddings", 4096),
            tie_embeddings=d.get("tie_word_embeddings", False),
            norm_eps=d.get("rms_norm_eps", 1e-6),
            init_std=d.get("initializer_range", 0.02),
            attention=attention,
            moe=moe,
        )


ARM_NOT_NAME = {
    "muonclip": "MuonClip is name: muon with qk_clip_tau: 100 (K2)",
    "muon+clip": "MuonClip is name: muon with qk_clip_tau: 100 (K2)",
    "adamw+clip": "AdamW with QK-Clip is name: adamw with qk_clip_tau: 100",
}
"""Arm labels (:attr:`OptimConfig.arm`, and ``muon+clip``) written as ``optim.name``, with what
to write instead."""


ROUTER_LR = 2e-3
"""Default peak lr of the MoE router (AdamW): at harness scale the embeddings' lr (0.02 in Muon
runs) collapses the expert load in the first steps (docs/design.md, routing calibration)."""


class OptimConfig(Frozen):
    """Optimizer arm: AdamW, or Muon for hidden matrices (+ AdamW for the rest); QK-Clip on top."""

    name: Literal["adamw", "muon"] = "adamw"
    lr: float = Field(3e-3, gt=0, description="peak learning rate (Muon: of the hidden matrices)")
    adamw_lr: float | None = Field(
        None, gt=0, description="Muon runs: peak lr of the AdamW part (null = lr)"
    )
    router_lr: float | None = Field(
        ROUTER_LR, gt=0, description="peak lr of the MoE router weights (null = the AdamW lr)"
    )
    router_weight_decay: float | None = Field(
        None, ge=0, description="weight decay of the MoE router weights (null = weight_decay)"
    )
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0, description="decoupled, multiplied by lr")
    momentum: float = Field(0.95, ge=0, lt=1, description="Muon momentum")
    nesterov: bool = True
    ns_steps: int = Field(5, gt=0, description="Newton-Schulz iterations")
    update_scale: Literal["match_rms_adamw", "original"] = Field(
        "match_rms_adamw",
        description="Muon update scale: Moonlight 0.2*sqrt(max(A,B)) or KellerJordan",
    )
    qk_clip_tau: float | None = Field(
        None, gt=0, description="QK-Clip threshold on max attention logits (null = off)"
    )
    muon_skip_idle: bool = Field(
        False, description="Muon: no update, momentum decay or weight decay for an expert "
        "matrix whose gradient is all zero (it got no tokens this step)",
    )

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: Any) -> Any:
        hint = ARM_NOT_NAME.get(v.lower()) if isinstance(v, str) else None
        if hint:
            raise ValueError(f"{v!r} is not an optimizer: {hint}")
        return v

    @model_validator(mode="after")
    def _check(self) -> Self:
        for i, b in enumerate(self.betas):
            if not 0 <= b < 1:
                raise ValueError(f"betas[{i}] ({b}) must be in [0, 1)")
        return self

    @property
    def arm(self) -> str:
        """Short arm label: adamw, muon, muonclip, adamw+clip."""
        if self.qk_clip_tau is None:
            return self.name
        return "muonclip" if self.name == "muon" else f"{self.name}+clip"


class TrainConfig(Frozen):
    """Token budget, batch, schedule, evaluation, checkpoints and divergence."""

    tokens: int = Field(1_000_000, gt=0, description="training tokens (sets the step count)")
    batch_tokens: int = Field(8192, gt=0, description="tokens per optimizer step")
    micro_batch_tokens: int | None = Field(
        None, gt=0, description="tokens per forward pass (null = batch_tokens)"
    )
    seq_len: int = Field(256, gt=0, description="tokens per sequence")
    schedule: Literal["wsd", "cosine", "constant"] = "wsd"
    warmup_frac: float = Field(0.05, ge=0, lt=1, description="warmup as a fraction of steps")
    warmup_steps: int | None = Field(None, ge=0, description="warmup in steps (overrides frac)")
    decay_frac: float = Field(0.2, ge=0, le=1, description="wsd: final fraction of steps decayed")
    min_lr_frac: float = Field(0.0, ge=0, le=1, description="lr at the end, fraction of peak")
    grad_clip: float | None = Field(1.0, gt=0, description="max global grad norm (null = off)")
    eval_every: int = Field(262_144, gt=0, description="tokens between validation evals")
    log_every: int = Field(10, gt=0, description="optimizer steps between metric logs")
    checkpoint_every: int = Field(1_048_576, gt=0, description="tokens between checkpoints")
    diverge_loss: float = Field(20.0, gt=0, description="train loss above this = diverged")
    seed: int = Field(0, ge=0, description="seed of init and batches")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = Field(False, description="torch.compile the model")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (null = cpus given)")
    workers: int = Field(1, ge=1, description="data-parallel workers of the trial (Ray Train, "
                         "each with resources.cpu / resources.gpu); each takes an equal slice "
                         "of every global batch")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.batch_tokens % self.seq_len:
            raise ValueError(
                f"batch_tokens ({self.batch_tokens}) must be a multiple of seq_len ({self.seq_len})"
            )
        micro = self.micro_batch_tokens or self.batch_tokens
        if micro % self.seq_len or self.batch_tokens % micro:
            raise ValueError(
                f"micro_batch_tokens ({micro}) must be a multiple of seq_len ({self.seq_len}) "
                f"and divide batch_tokens ({self.batch_tokens})"
            )
        if self.tokens < self.batch_tokens:
            raise ValueError(
                f"tokens ({self.tokens}) must be >= batch_tokens ({self.batch_tokens})"
            )
        if self.batch_tokens % (self.workers * micro):
            raise ValueError(
                f"batch_tokens ({self.batch_tokens}) must be a multiple of workers x "
                f"micro_batch_tokens ({self.workers} x {micro}): each worker takes the same "
                "number of micro-batches of every global batch"
            )
        return self

    @property
    def steps(self) -> int:
        """Optimizer steps: the token budget over tokens per step (rounded down)."""
        return self.tokens // self.batch_tokens

    @property
    def tokens_trained(self) -> int:
        """Tokens the run trains on: whole steps of ``batch_tokens`` (at most ``tokens``)."""
        return self.steps * self.batch_tokens

    @property
    def grad_accum(self) -> int:
        """Micro-batches per optimizer step, over all workers together."""
        return self.batch_tokens // (self.micro_batch_tokens or self.batch_tokens)


class TrialConfig(Frozen):
    """Everything one training run needs; its content hash is the trial's identity."""

    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.train.seq_len > self.model.max_seq_len:
            raise ValueError(
                f"train.seq_len ({self.train.seq_len}) must be <= model.max_seq_len "
                f"({self.model.max_seq_len})"
            )
        if self.model.vocab_size < self.data.n_vocab:
            raise ValueError(
                f"model.vocab_size ({self.model.vocab_size}) must be >= the data vocabulary "
                f"({self.data.n_vocab}, corpus {self.data.corpus}, tokenizer {self.data.tokenizer})"
            )
        for key, n in (("val_tokens", self.data.val_tokens),
                       ("test_tokens", self.data.eval_test_tokens)):
            if n < self.train.seq_len + 1:
                raise ValueError(
                    f"data.{key} ({n}) must be >= train.seq_len + 1 ({self.train.seq_len + 1}): "
                    "the validation and test sets are windows of seq_len + 1 tokens"
                )
        return self

    @property
    def hash(self) -> str:
        """Stable 12-hex content hash of the resolved config (same config, same hash).

        ``train.workers`` at its default (1) is left out, so a one-worker trial keeps the hash
        it had before the field existed; a multi-worker trial is a trial of its own (its
        numbers equal the one-worker ones to float tolerance, not bit for bit)."""
        dump = self.model_dump(mode="json")
        if dump["train"]["workers"] == 1:
            del dump["train"]["workers"]
        blob = json.dumps(dump, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def total_flops(self) -> float:
        """Training FLOPs of the whole token budget (model-specific count, not 6ND)."""
        return self.model.flops_per_token(self.train.seq_len) * self.train.tokens_trained

    def flat(self) -> dict[str, Any]:
        """Dotted-key view of every field, for MLflow params and trial tables."""
        return flatten(self.model_dump(mode="json"))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


__all__ = [
    "MAX_LOGIT_CHUNK_ELEMS",
    "AttentionConfig",
    "DataConfig",
    "Frozen",
    "MoEConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "TrialConfig",
    "flatten",
]
