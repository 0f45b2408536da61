"""Rough memory need of one trial, checked against the machine before anything launches.

``estimate_bytes(trial)`` is a deliberately simple upper-ish estimate (fp32 everywhere, bf16
autocast on CUDA only makes the real figure smaller), in bytes:

    weights       4 P                      P = total parameters (ModelConfig.param_counts)
    grads         4 P
    optimizer     AdamW: 8 P (exp_avg, exp_avg_sq)
                  Muon:  4 P_hidden (momentum) + 8 (P - P_hidden) (AdamW for embedding, LM head,
                         routers, norms); P_hidden = P - embedding (routers, norms: small)
    activations   1.25 x [4 N (n_dense A_dense + n_moe A_moe + D) + 12 N V
                          + 4 min(B H T^2, 2^26)]     N = micro-batch tokens, B = N / T sequences
    data          synthetic corpus: 4 bytes per token (uint16 stream + its transpose while
                  sampling) + 48 bytes per transition of the chain; other corpora: 0 (memmapped
                  token shards; text is tokenised once into the cache)

where A (floats saved for backward per token and layer) counts the block input, two norm outputs
and the output (4 D), the attention tensors (MLA: q, k, v, the zero-padded copies flash attention
gets, the latent; MHA: q, k, v and their rotated copies) and the FFN (dense SwiGLU: gate, up, act,
product = 4 F; MoE: top_k gathered inputs and outputs (2 K D), 4 F_e per active expert copy, the
shared experts, router scores 3 E). 12 N V is the logits, their fp32 copy and the cross-entropy
gradient; min(B H T^2, 2^26) the chunked max-logit pass (transient). The factor 1.25 covers the
allocator and temporaries: without it the bracket was 1.0-1.3x below the measured peak resident
memory of two CPU train steps over five configs (MLA and MHA, AdamW and Muon, vocab-heavy and
activation-heavy); tests/reliability/test_bad_input.py checks a factor of two.

``checkpoint_bytes(trial)`` is the size of one ``ckpt.pt`` (weights + optimizer state).
``check_memory(trial, where)`` raises :class:`harness.config.ConfigError` when the estimate
exceeds 90% of the memory of the device the trial would run on here: RAM (physical pages, or the
cgroup limit when lower) for CPU trials, the first GPU's memory for CUDA trials. A ``cuda`` trial
checked on a machine with no GPU (a laptop submitting to a cluster) is not checked.
``HARNESS_MEMORY_GIB`` overrides the capacity (e.g. the workers' memory on a cluster).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from harness.config import MAX_LOGIT_CHUNK_ELEMS, ConfigError, TrialConfig

GIB = 2**30
FP32 = 4
USABLE = 0.9  # fraction of the device's memory a trial may plan to use


def _per_token_per_layer(trial: TrialConfig, moe: bool) -> int:
    """Floats saved for backward per token in one block (see the module docstring)."""
    m = trial.model
    a, D, H = m.attention, m.d_model, m.attention.n_heads
    if a.kind == "mha":
        hd = m.mha_head_dim
        attn = 6 * H * hd + H  # q, k, v, rotated q and k, output; log-sum-exp
    else:
        dqk = a.qk_nope_head_dim + a.qk_rope_head_dim
        width = max(dqk, a.v_head_dim)
        attn = H * (3 * dqk + 2 * a.v_head_dim + 4 * width) + 2 * a.kv_lora_rank
        attn += a.qk_rope_head_dim + 2 * a.q_lora_rank + H
    if moe:
        e = m.moe
        ffn = 2 * e.top_k * D + 4 * e.expert_ffn_dim * (e.top_k + e.n_shared)
        ffn += 3 * e.n_routed_experts
    else:
        ffn = 4 * m.dense_ffn_dim
    return 4 * D + attn + ffn


def _optimizer_floats(trial: TrialConfig) -> int:
    pc = trial.model.param_counts()
    if trial.optim.name == "muon":
        hidden = pc.total - pc.embedding
        return hidden + 2 * (pc.total - hidden)
    return 2 * pc.total


def checkpoint_bytes(trial: TrialConfig) -> int:
    """Bytes of one checkpoint: fp32 weights and optimizer state (metric rows are small)."""
    return FP32 * (trial.model.param_counts().total + _optimizer_floats(trial))


def estimate_parts(trial: TrialConfig) -> dict[str, int]:
    """The estimate's terms in bytes: ``state`` (weights, grads, optimizer), ``activations``,
    ``data``."""
    m, tc, d = trial.model, trial.train, trial.data
    P = m.param_counts().total
    state = FP32 * (2 * P + _optimizer_floats(trial))
    N = tc.micro_batch_tokens or tc.batch_tokens  # tokens per forward pass
    B = N // tc.seq_len
    saved = m.first_k_dense * _per_token_per_layer(trial, moe=False)
    saved += m.n_moe_layers * _per_token_per_layer(trial, moe=True) + m.d_model
    scores = min(B * m.attention.n_heads * tc.seq_len**2, MAX_LOGIT_CHUNK_ELEMS)
    activations = FP32 * (N * saved + 3 * N * m.vocab_size + scores) * 5 // 4
    data = 0
    if d.corpus == "synthetic":
        transitions = d.synthetic_vocab**d.synthetic_order * d.synthetic_branching
        data = 4 * (d.synthetic_tokens + d.val_tokens) + 48 * transitions
    return {"state": state, "activations": activations, "data": data}


def estimate_bytes(trial: TrialConfig) -> int:
    """Rough peak memory of one trial in bytes (see the module docstring for the formula)."""
    return sum(estimate_parts(trial).values())


@functools.cache
def _ram_bytes() -> int:
    """Physical RAM, or the cgroup (container) memory limit when that is lower."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            ram = min(ram, int(text))
    return ram


@functools.cache
def _gpu_bytes() -> int | None:
    """Memory of the first visible GPU, or None when there is none (torch imported only then)."""
    if not Path("/proc/driver/nvidia").exists() and "torch" not in sys.modules:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(0).total_memory)


def capacity(trial: TrialConfig) -> tuple[int, str] | None:
    """(bytes, what) the trial can use on this machine, or None when it cannot be known here."""
    override = os.environ.get("HARNESS_MEMORY_GIB")
    if override:
        return int(float(override) * GIB), "(HARNESS_MEMORY_GIB)"
    device = trial.train.device
    if device in ("cuda", "auto"):
        gpu = _gpu_bytes()
        if gpu is not None:
            return gpu, "of GPU memory"
        if device == "cuda":
            return None
    return _ram_bytes(), "of RAM"


def _gib(n: int) -> str:
    g = n / GIB
    return f"{g:.2g}" if g < 0.1 else f"{g:.1f}" if g < 1e4 else f"{g:.3g}"


def check_memory(trial: TrialConfig, where: str, capacity_bytes: int | None = None) -> None:
    """Raise ConfigError ``"<where>: needs ~X GiB ..., machine has Y GiB ..."`` when the trial's
    estimate exceeds 90% of what this machine has (``capacity_bytes`` overrides, for tests)."""
    if capacity_bytes is not None:
        cap: tuple[int, str] | None = (capacity_bytes, "")
    else:
        cap = capacity(trial)
    if cap is None:
        return
    have, what = cap
    parts = estimate_parts(trial)
    need = sum(parts.values())
    if need <= USABLE * have:
        return
    detail = ", ".join(f"{k} {_gib(v)}" for k, v in parts.items())
    raise ConfigError(
        f"{where}: needs ~{_gib(need)} GiB ({detail}), machine has {_gib(have)} GiB"
        f"{' ' + what if what else ''}; shrink the model or micro_batch_tokens"
    )
