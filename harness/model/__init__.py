"""The K2 / DeepSeek-V3 style model: MLA or MHA attention, first-k dense, fine-grained MoE."""

from harness.model.transformer import Telemetry, Transformer

__all__ = ["Telemetry", "Transformer"]
