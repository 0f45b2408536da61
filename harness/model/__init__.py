"""The K2 / DeepSeek-V3 style model: MLA or MHA attention, first-k dense, fine-grained MoE."""

from typing import Any

__all__ = ["Transformer"]


def __getattr__(name: str) -> Any:
    # Lazy: harness.config imports harness.model.accounting, which must not pull in torch code
    # that imports harness.config back.
    if name == "Transformer":
        from harness.model.transformer import Transformer

        return Transformer
    raise AttributeError(name)
