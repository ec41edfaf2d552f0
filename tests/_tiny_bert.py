"""A tiny BERT saved with save_pretrained (model + WordPiece tokenizer), built in about a second,
for tests of Hugging Face encoder jobs.  Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "the", "a", "cat", "dog", "sat", "ran", "on", "under",
    "mat", "log", "big", "small", "red", "blue", "and", "with",
    "fast", "slow", "green", "bird", "tree", "house", "over", "near",
    "quite", "very", "saw",
)


def texts(n: int = 24, seed: int = 0) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 14)))) for _ in range(n)]


def tiny_bert(folder: Path, *, task: str = "feature-extraction", layers: int = 2,
              hidden: int = 32, heads: int = 4, intermediate: int = 64, seed: int = 0,
              positions: int = 64) -> Path:
    """Save a randomly initialised (seeded) tiny BERT and its tokenizer into ``folder``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), model_max_length=positions)
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=intermediate,
                     max_position_embeddings=positions, num_labels=3)
    cls = BertForSequenceClassification if task == "text-classification" else BertModel
    cls(cfg).eval().save_pretrained(folder)
    return folder
