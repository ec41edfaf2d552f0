"""A BERT-family sentence encoder built from a config, with realistic (trained) weights, offline.

Nothing is downloaded: the text is generated, the WordPiece tokenizer is trained on it with
``tokenizers``, and ``transformers.BertForMaskedLM`` (6 layers, hidden 384, 12 heads, intermediate
1536 by default: the shape of a MiniLM-class sentence encoder) is trained by masked-language
modelling plus a sentence-topic objective for ``train_steps`` steps (350 by default: about 2
minutes on 2 idle cores).  The encoder is
saved with ``save_pretrained`` (safetensors) next to its tokenizer in a cache folder keyed by the
arguments, so it is built once per machine.

The generated language: sentences from a small grammar over a vocabulary of pseudo-words (about
9,000 of them, three or four syllables each, so the WordPiece vocabulary reaches
``vocab_size``), where each sentence stays on one of a few dozen *topics* (a topic fixes which
nouns, verbs and adjectives appear).  Masked words are
therefore predictable from their context, which is what makes the trained attention and FFN
weights non-random.

How it is trained: see :func:`folder`.

``folder()`` returns the saved model folder (for ``model: {huggingface: <folder>}`` jobs);
``build()`` is a factory for ``model: {factory: bert_model:build}`` jobs that returns a module
computing mean-pooled sentence embeddings from ``(input_ids, attention_mask, token_type_ids)``;
``texts()`` gives evaluation sentences (a different seed from training).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "fu", "gi", "ha",
             "ju", "be", "co", "xi", "ly", "qu", "wa", "en", "or", "is")
N_TOPICS = 48
FUNCTION_WORDS = ("the", "a", "of", "and", "to", "in", "with", "near", "under", "over", "this",
                  "that", "every", "some", "was", "is", "will", "not", "very", "quite")


@lru_cache(maxsize=2)
def _lexicon(seed: int = 1234) -> dict[str, list[list[str]]]:
    """Per topic: nouns, verbs, adjectives (pseudo-words; about 9k distinct words in all)."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()

    def word(n_syl: int) -> str:
        while True:
            w = "".join(rng.choice(SYLLABLES, size=n_syl))
            if w not in seen:
                seen.add(w)
                return w

    lex: dict[str, list[list[str]]] = {"noun": [], "verb": [], "adj": []}
    for _ in range(N_TOPICS):
        lex["noun"].append([word(int(rng.integers(3, 5))) for _ in range(90)])
        lex["verb"].append([word(int(rng.integers(3, 5))) + "s" for _ in range(60)])
        lex["adj"].append([word(int(rng.integers(3, 5))) + "y" for _ in range(40)])
    return lex


def labelled_sentences(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` generated sentences with their topic (lengths vary from about 8 to 60 words)."""
    lex = _lexicon()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = int(rng.integers(N_TOPICS))
        nouns, verbs, adjs = lex["noun"][t], lex["verb"][t], lex["adj"][t]
        parts: list[str] = []
        for _ in range(int(rng.integers(1, 6))):
            clause = [str(rng.choice(("the", "a", "every", "some", "this", "that")))]
            if rng.random() < 0.6:
                clause.append(str(rng.choice(adjs)))
            clause += [str(rng.choice(nouns)), str(rng.choice(verbs))]
            clause += [str(rng.choice(("the", "a", "some"))), str(rng.choice(nouns))]
            if rng.random() < 0.5:
                clause += [str(rng.choice(("with", "near", "under", "over", "of"))),
                           str(rng.choice(("the", "a"))), str(rng.choice(nouns))]
            parts.append(" ".join(clause))
        out.append((" and ".join(parts) + " .", t))
    return out


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` generated sentences (topic-consistent)."""
    return [text for text, _ in labelled_sentences(n, seed)]


def texts(n: int = 64, seed: int = 99) -> list[str]:
    """Evaluation sentences: held out (another seed than training)."""
    return sentences(n, seed=seed)


def _cache_root() -> Path:
    return Path(os.environ.get("AUTOTUNE_MODEL_CACHE", Path(tempfile.gettempdir()) / "autotune-models"))


def _train_tokenizer(folder: Path, vocab_size: int, max_len: int) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special,
                                        min_frequency=1)
    corpus = [*sentences(6000, seed=1),
              " ".join(w for lists in _lexicon().values() for v in lists for w in v)]
    tok.train_from_iterator(corpus, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=max_len)
    fast.save_pretrained(folder)


def folder(layers: int = 6, hidden: int = 384, heads: int = 12, intermediate: int = 1536,
           vocab_size: int = 8192, max_len: int = 128, train_steps: int | None = None,
           seed: int = 0) -> Path:
    """The saved encoder (config.json, model.safetensors, tokenizer files); built on first use.

    Training: ``train_steps`` steps (``$AUTOTUNE_BERT_TRAIN_STEPS`` or 350 by default: about two
    minutes on 2 idle cores; more on a loaded machine -- the folder's training.json records the
    steps, the wall time and the losses) of batch 16 sentences, each cut at 32 tokens (the median
    sentence has 28), with two objectives at once: masked-language modelling, and a sentence-level
    one -- a linear head on the mean-pooled embedding names the sentence's topic, as a supervised
    sentence encoder is trained.  AdamW, learning rate 3e-4 after a 30-step warm-up, gradients
    clipped at 1.  (A post-LayerNorm BERT of this size does not leave the unigram plateau of plain
    MLM within minutes at any learning rate we tried -- the loss stayed at ~7 for 440 steps at
    1e-3; with the sentence objective at 3e-4 the topic loss falls from ln 48 = 3.9 to ~0.1 and
    the MLM loss from 8 to ~6 in 350 steps, and the embeddings of different sentences stop being
    near-identical: their mean pairwise cosine falls from ~0.99 to ~0.1, so a cosine-fidelity
    constraint tells a faithful variant from a broken one.)"""
    if train_steps is None:
        train_steps = int(os.environ.get("AUTOTUNE_BERT_TRAIN_STEPS", "350"))
    import torch
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    args = (layers, hidden, heads, intermediate, vocab_size, max_len, train_steps, seed, 4)
    key = hashlib.sha256(repr(args).encode()).hexdigest()[:12]
    out = _cache_root() / f"bert-{key}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    _train_tokenizer(tmp, vocab_size, max_len)
    tok = PreTrainedTokenizerFast.from_pretrained(tmp)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=intermediate,
                     max_position_embeddings=max(512, max_len), hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, pad_token_id=tok.pad_token_id)
    model = BertForMaskedLM(cfg)
    topic_head = torch.nn.Linear(hidden, N_TOPICS)
    params = [*model.parameters(), *topic_head.parameters()]
    lr, warmup, batch, seq = 3e-4, 30, 16, min(32, max_len)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    corpus = labelled_sentences(4000, seed=seed + 1)
    encoded = tok([text for text, _ in corpus], truncation=True, max_length=seq)["input_ids"]
    rng = np.random.default_rng(seed)
    model.train()
    t0, steps = time.perf_counter(), 0
    log, mlm_losses, topic_losses = [], [], []
    while steps < train_steps:
        pick = rng.integers(0, len(corpus), batch)
        ids = torch.full((batch, seq), tok.pad_token_id, dtype=torch.long)
        for row, i in enumerate(pick):
            ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
        attention = (ids != tok.pad_token_id).long()
        special = (ids == tok.pad_token_id) | (ids == tok.cls_token_id) | (ids == tok.sep_token_id)
        mask = (torch.rand(ids.shape) < 0.15) & ~special
        labels = torch.where(mask, ids, torch.full_like(ids, -100))
        ids[mask] = tok.mask_token_id
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (steps + 1) / warmup)
        res = model(input_ids=ids, attention_mask=attention, labels=labels,
                    output_hidden_states=True)
        m = attention.unsqueeze(-1).to(res.hidden_states[-1].dtype)
        pooled = (res.hidden_states[-1] * m).sum(1) / m.sum(1)
        topics = torch.tensor([corpus[i][1] for i in pick])
        topic_loss = torch.nn.functional.cross_entropy(topic_head(pooled), topics)
        opt.zero_grad()
        (res.loss + topic_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        steps += 1
        mlm_losses.append(float(res.loss.detach()))
        topic_losses.append(float(topic_loss.detach()))
        if steps % 25 == 0:
            log.append({"step": steps, "mlm_loss": round(float(np.mean(mlm_losses[-25:])), 4),
                        "topic_loss": round(float(np.mean(topic_losses[-25:])), 4),
                        "s": round(time.perf_counter() - t0, 1)})
    model.eval()
    model.bert.save_pretrained(tmp)  # the encoder alone (BertModel): what a user would deploy
    (tmp / "training.json").write_text(json.dumps(
        {"steps": steps, "seconds": round(time.perf_counter() - t0, 1), "batch": batch,
         "sequence": seq, "lr": lr, "log": log}, indent=1))
    with contextlib.suppress(OSError):  # another process built it first
        tmp.replace(out)
    return out if out.is_dir() else tmp


def training_summary(path: Path) -> str:
    """One line on how the saved encoder was trained (steps, wall time, first and last losses)."""
    try:
        info = json.loads((Path(path) / "training.json").read_text())
        first, last = info["log"][0], info["log"][-1]
        return (f"{info['steps']} steps in {info['seconds']:g} s; masked-LM loss "
                f"{first['mlm_loss']:.2f} -> {last['mlm_loss']:.2f}, topic loss "
                f"{first['topic_loss']:.2f} -> {last['topic_loss']:.2f}")
    except (OSError, KeyError, IndexError, ValueError) as exc:
        return f"no training record ({exc})"


class _MeanPooled:
    """Marker base (keeps ``build`` importable without torch at module import)."""


def build(seq_len: int = 128, **kwargs: object):  # type: ignore[no-untyped-def]
    """Factory: (module computing mean-pooled embeddings, example inputs (ids, mask, types))."""
    import torch
    from transformers import AutoTokenizer, BertModel

    path = folder(**kwargs)  # type: ignore[arg-type]
    bert = BertModel.from_pretrained(path, local_files_only=True).eval()

    class MeanPooled(torch.nn.Module):
        input_names = ("input_ids", "attention_mask", "token_type_ids")  # kept by the export
        output_names = ("sentence_embedding",)

        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1.0)

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    enc = tok(texts(2), padding="max_length", truncation=True, max_length=seq_len,
              return_tensors="pt", return_token_type_ids=True)
    return MeanPooled().eval(), (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])


def validation_data(seq_len: int = 128, n: int = 64) -> tuple[list[np.ndarray], None]:
    """Tokenized evaluation sentences (padded to ``seq_len``) and no targets (fidelity metrics)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder(), local_files_only=True)
    enc = tok(texts(n), padding="max_length", truncation=True, max_length=seq_len,
              return_tensors="np", return_token_type_ids=True)
    return [enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64),
            enc["token_type_ids"].astype(np.int64)], None


if __name__ == "__main__":
    p = folder()
    print(p, training_summary(p))
