"""A small GLM-4 language model, built and trained offline on generated text (no download).

The text comes from a small grammar (:func:`sentences`): subject-verb-object sentences with
number agreement ("the small cats see a dog ."), numbers that count up ("one two three four"),
and fixed greetings.  A word-level tokenizer (``tokenizers`` WordLevel, saved as
``tokenizer.json`` and loaded with ``PreTrainedTokenizerFast``) covers its ~70 words, so greedy
continuations of a prompt are grammatical sentences that a reader can judge, not noise.

:func:`build` trains ``Glm4ForCausalLM`` (grouped-query attention: fewer key/value heads than query
heads) for a bounded number of seconds and saves it with ``save_pretrained`` (safetensors) into a
cache folder keyed by the configuration, so a job, the tests and the benchmark build it once.

    python experiments/glm_model.py            # build (or find) the example model; print samples
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

#: bump when the grammar or the training changes (keys the cached model folders)
GRAMMAR_VERSION = "1"
SUBJECTS = ["cat", "dog", "bird", "fish", "kid", "teacher", "robot", "farmer"]
OBJECTS = ["apple", "ball", "book", "tree", "river", "house", "song", "box"]
ADJECTIVES = ["small", "big", "red", "old", "happy", "quiet"]
VERBS = ["see", "like", "find", "want", "carry", "watch"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
GREETINGS = ["hello world .", "good morning everyone .", "thank you very much ."]
FUNCTION = ["the", "a", ".", "and", "then", "count", ":"]
SPECIAL = ["<pad>", "<unk>", "<eos>"]


def _noun_phrase(rng: random.Random, noun: str, plural: bool) -> str:
    det = "the" if plural or rng.random() < 0.5 else rng.choice(["the", "a"])
    adj = f"{rng.choice(ADJECTIVES)} " if rng.random() < 0.5 else ""
    return f"{det} {adj}{noun}{'s' if plural else ''}"


def _sentence(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.15:
        start = rng.randrange(0, 5)
        n = rng.randrange(3, 6)
        return "count : " + " ".join(NUMBERS[start:start + n]) + " ."
    if r < 0.22:
        return rng.choice(GREETINGS)
    plural = rng.random() < 0.5
    subj = _noun_phrase(rng, rng.choice(SUBJECTS), plural)
    verb = rng.choice(VERBS) + ("" if plural else "s")
    obj = _noun_phrase(rng, rng.choice(OBJECTS), rng.random() < 0.5)
    s = f"{subj} {verb} {obj}"
    if rng.random() < 0.3:
        s += f" and then {verb} {_noun_phrase(rng, rng.choice(OBJECTS), rng.random() < 0.5)}"
    return s + " ."


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences of the grammar (deterministic for a seed)."""
    rng = random.Random(seed)
    return [_sentence(rng) for _ in range(n)]


def vocabulary() -> list[str]:
    words = list(SPECIAL) + FUNCTION + NUMBERS + ADJECTIVES
    words += [w for w in " ".join(GREETINGS).split() if w not in words]
    for noun in SUBJECTS + OBJECTS:
        words += [noun, noun + "s"]
    for verb in VERBS:
        words += [verb, verb + "s"]
    return list(dict.fromkeys(words))


def make_tokenizer() -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over :func:`vocabulary` (whitespace split)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # words joined by spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="<eos>", padding_side="left")


def text_stream(n_sentences: int, seed: int) -> str:
    return " ".join(sentences(n_sentences, seed))


def prompts(n: int = 16, seed: int = 1, min_words: int = 4, max_words: int = 24) -> list[str]:
    """Prompts for a workload: a few sentences of held-out text, cut at a random word
    (lengths uniform in ``[min_words, max_words]``)."""
    rng = random.Random(seed)
    words = text_stream(n * 8 + 16, seed + 1000).split()
    out = []
    for _ in range(n):
        k = rng.randint(min_words, max_words)
        start = rng.randrange(0, len(words) - k)
        out.append(" ".join(words[start:start + k]))
    return out


def held_out_text(n_sentences: int = 64, seed: int = 7) -> str:
    """Text the model never trained on (another seed), for perplexity."""
    return text_stream(n_sentences, seed)


def _config(layers: int, hidden: int, heads: int, kv_heads: int, intermediate: int) -> Any:
    from transformers import Glm4Config

    tok = make_tokenizer()
    return Glm4Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=hidden // heads, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=True,
        attention_dropout=0.0,
    )


def build(layers: int = 3, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
          intermediate: int = 192, train_seconds: float = 110.0, steps: int = 3000,
          seq_len: int = 32, batch: int = 16, seed: int = 0, cache_dir: str | None = None,
          threads: int = 1) -> str:
    """Build, train and save the model; returns the folder (``save_pretrained`` + tokenizer).

    Training stops after ``steps`` steps or ``train_seconds``, whichever comes first (the learning
    rate decays with the elapsed share of either); one thread by default, which is the fastest on
    a busy two-core machine.  The folder
    is keyed by every argument, the vocabulary and :data:`GRAMMAR_VERSION`, so the same call
    returns it at once.
    """
    import torch

    args = dict(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                intermediate=intermediate, train_seconds=train_seconds, steps=steps,
                seq_len=seq_len, batch=batch, seed=seed)
    key = hashlib.sha256((json.dumps(args, sort_keys=True) + GRAMMAR_VERSION
                          + "".join(vocabulary())).encode()).hexdigest()[:12]
    root = Path(cache_dir or os.environ.get("AUTOTUNE_GLM_CACHE")
                or Path(tempfile.gettempdir()) / "autotune-glm")
    out = root / f"glm-{key}"
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return str(out)
    from transformers import Glm4ForCausalLM

    torch.manual_seed(seed)
    tok = make_tokenizer()
    model = Glm4ForCausalLM(_config(layers, hidden, heads, kv_heads, intermediate))
    train_and_save(model, tok, out, args, text=text_stream(20000 if steps > 50 else 2000, seed),
                   threads=threads)
    return str(out)


def train_and_save(model: Any, tok: Any, out: Path, args: dict, *, text: str,
                   threads: int = 1) -> None:
    """Train ``model`` on ``text`` (next-token loss; ``args``: steps, train_seconds, seq_len,
    batch, seed) and save it with ``tok`` into ``out`` (atomically: a temporary folder renamed).
    Shared by the examples of other architectures (``qwen_model.py``)."""
    import torch

    steps, train_seconds = args["steps"], args["train_seconds"]
    seq_len, batch, seed = args["seq_len"], args["batch"], args["seed"]
    torch.set_num_threads(threads)
    ids = tok(text)["input_ids"]
    data = torch.tensor(ids, dtype=torch.long)
    max_lr = 1e-2
    opt = torch.optim.AdamW(model.parameters(), lr=max_lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.monotonic()
    loss = torch.tensor(float("nan"))
    step = 0
    for step in range(steps):
        starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=gen)
        x = torch.stack([data[s:s + seq_len] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        done = max((step + 1) / steps, (time.monotonic() - t0) / train_seconds)
        if done >= 1:
            break
        for g in opt.param_groups:  # warm-up, then cosine decay over the elapsed share
            g["lr"] = max_lr * min(1.0, (step + 1) / 20) * (0.05 + 0.95 * 0.5 * (
                1 + math.cos(math.pi * done)))
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)  # safetensors
    tok.save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps(
        {**args, "steps_done": step + 1, "final_loss": float(loss.detach()), "seconds":
         round(time.monotonic() - t0, 1)}, indent=2))
    try:
        tmp.rename(out)
    except OSError:  # another process built it at the same time
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def build_tiny(cache_dir: str | None = None) -> str:
    """A 2-layer, hidden-32 version for tests (a second or two)."""
    return build(layers=2, hidden=32, heads=4, kv_heads=2, intermediate=64, train_seconds=5,
                 steps=30, seq_len=32, batch=8, cache_dir=cache_dir)


if __name__ == "__main__":
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.monotonic()
    path = build()
    print(f"model: {path} ({time.monotonic() - t0:.1f} s)")
    print((Path(path) / "training.json").read_text())
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    for p in prompts(4):
        enc = tok(p, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=16, do_sample=False)
        print(f"{p!r} -> {tok.decode(out[0, enc['input_ids'].shape[1]:])!r}")
