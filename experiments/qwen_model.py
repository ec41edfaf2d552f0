"""A second architecture for the generation examples: a small Qwen2 (``Qwen2ForCausalLM``: 4 layers,
hidden 64, 4 query / 2 key-value heads, biases on q/k/v) with a byte-level BPE tokenizer
(``tokenizers`` BPE trained on the grammar's text, GPT-2 style byte-level pre-tokenizer and
decoder), trained like the GLM-4 example (:func:`glm_model.train_and_save`) on the same grammar.

    python experiments/qwen_model.py         # builds (<= 110 s of training), prints samples

Used by ``experiments/qwen-cpu.yaml`` and the engine tests (``build_tiny``: seconds).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import glm_model
from glm_model import held_out_text, prompts, text_stream  # noqa: F401  (the job's references)

VOCAB = 320


def make_tokenizer(vocab_size: int = VOCAB) -> Any:
    """Byte-level BPE trained on the grammar's sentences (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(glm_model.sentences(4000, seed=3), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   padding_side="left")


def build(layers: int = 4, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
          intermediate: int = 192, train_seconds: float = 110.0, steps: int = 3000,
          seq_len: int = 48, batch: int = 16, seed: int = 0, cache_dir: str | None = None,
          threads: int = 1) -> str:
    """Build, train and save the model; returns the folder (cached by every argument)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    args = dict(arch="qwen2", layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                intermediate=intermediate, train_seconds=train_seconds, steps=steps,
                seq_len=seq_len, batch=batch, seed=seed, vocab=VOCAB)
    key = hashlib.sha256((json.dumps(args, sort_keys=True) + glm_model.GRAMMAR_VERSION)
                         .encode()).hexdigest()[:12]
    root = Path(cache_dir or os.environ.get("AUTOTUNE_GLM_CACHE")
                or Path(tempfile.gettempdir()) / "autotune-glm")
    out = root / f"qwen2-{key}"
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return str(out)
    torch.manual_seed(seed)
    tok = make_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=True,
        attention_dropout=0.0, use_sliding_window=False)
    model = Qwen2ForCausalLM(config)
    glm_model.train_and_save(model, tok, out, args,
                             text=text_stream(20000 if steps > 50 else 2000, seed),
                             threads=threads)
    return str(out)


def build_tiny(cache_dir: str | None = None) -> str:
    """A 2-layer, hidden-32 version for tests (seconds)."""
    return build(layers=2, hidden=32, heads=4, kv_heads=2, intermediate=64, train_seconds=5,
                 steps=30, seq_len=32, batch=8, cache_dir=cache_dir)


if __name__ == "__main__":
    import time

    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.monotonic()
    path = build()
    print(f"model: {path} ({time.monotonic() - t0:.1f} s)")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    for p in prompts(4):
        enc = tok(p, return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=16, do_sample=False)
        print(f"{p!r} -> {tok.decode(out[0, enc['input_ids'].shape[1]:])!r}")
