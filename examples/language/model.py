"""Model factories for language-model runs: tiny GPT-2 and Llama architectures built from
local ``transformers`` configs with random weights (nothing is downloaded). The daemon loads
each checkpoint's weights into the model a factory builds, so ``model.kwargs`` in the config
must describe the architecture the trainer saved."""

from __future__ import annotations

from typing import Any

from torch import nn


def build_gpt2(vocab_size: int = 64, **config: Any) -> nn.Module:
    """GPT-2 style: Conv1D projections, LayerNorm, learned positions, tied LM head."""
    from transformers import GPT2Config, GPT2LMHeadModel

    settings = {"n_positions": 32, "n_embd": 16, "n_layer": 2, "n_head": 2, **config}
    settings.setdefault("bos_token_id", 0)
    settings.setdefault("eos_token_id", 0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, **settings))


def build_llama(vocab_size: int = 64, **config: Any) -> nn.Module:
    """Llama style: RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention, tied
    embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = {
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 32,
        "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
        **config,
    }  # fmt: skip
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, **settings))
