"""The GPT-OSS tokenizer (o200k_harmony, from the ``tokenizer.json`` shipped with the weights) and
prompts in the harmony chat format (ARCHITECTURE.md D12). Works offline.

A harmony conversation is a sequence of messages
    <|start|>{role}<|message|>{content}<|end|>
and a completion prompt ends with ``<|start|>assistant`` — or, to make a stream write its answer
directly, with ``<|start|>assistant<|channel|>final<|message|>``. Special tokens are inserted by id
and text is encoded on its own, so a user's text can never forge a special token.

Tiny models use a small byte-level BPE trained locally (``train_tiny``) that carries the same
harmony special tokens, so every code path is identical for the tiny and the real model.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Iterable, Sequence

from tokenizers import Tokenizer as HFTokenizer

HARMONY_SPECIALS = ("<|endoftext|>", "<|start|>", "<|end|>", "<|message|>", "<|channel|>",
                    "<|return|>", "<|call|>", "<|constrain|>")
TINY_TOKENIZER = os.path.join(os.path.dirname(__file__), "assets", "tiny_tokenizer.json")
ROLES = ("system", "developer", "user", "assistant", "tool")


class TokenizerError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Message:
    role: str
    content: str
    channel: str | None = None  # assistant messages: "analysis" | "commentary" | "final"


class Tokenizer:
    def __init__(self, tokenizer: HFTokenizer, source: str = "<memory>"):
        self.hf = tokenizer
        # Special-token strings inside text are encoded as plain text: only render() emits specials.
        self.hf.encode_special_tokens = True
        self.source = source
        missing = [s for s in HARMONY_SPECIALS if tokenizer.token_to_id(s) is None]
        if missing:
            raise TokenizerError(f"{source}: tokenizer lacks harmony special token(s) {missing}")

    @classmethod
    def from_file(cls, path: str) -> "Tokenizer":
        """``path``: a tokenizer.json, or a directory holding one (also DIR/tokenizer/tokenizer.json,
        the layout of the seed README)."""
        candidates = [path, os.path.join(path, "tokenizer.json"), os.path.join(path, "tokenizer", "tokenizer.json")]
        for c in candidates:
            if os.path.isfile(c):
                try:
                    return cls(HFTokenizer.from_file(c), source=c)
                except Exception as e:
                    raise TokenizerError(f"{c}: not a valid tokenizer.json ({e})") from e
        raise TokenizerError(f"{path}: expected a tokenizer.json (tried {candidates})")

    @classmethod
    def tiny(cls) -> "Tokenizer":
        return cls.from_file(TINY_TOKENIZER)

    @classmethod
    def for_model(cls, spec: str | None, checkpoint: str | None, vocab_size: int) -> "Tokenizer":
        """The tokenizer a command line asks for: ``spec`` a tokenizer.json path, or "auto"/None — the
        one next to ``checkpoint``, else the tiny BPE when the model has its vocabulary size. Checks
        that every id fits the model's ``vocab_size``."""
        if spec and spec != "auto":
            tokenizer = cls.from_file(spec)
        elif checkpoint and any(os.path.isfile(os.path.join(checkpoint, *p))
                                for p in (("tokenizer.json",), ("tokenizer", "tokenizer.json"))):
            tokenizer = cls.from_file(checkpoint)
        elif checkpoint and os.path.isfile(os.path.join(checkpoint, "trunk", "tokenizer.json")):
            tokenizer = cls.from_file(os.path.join(checkpoint, "trunk"))   # a PDT checkpoint: trunk/ + sidecar
        elif vocab_size == cls.tiny().vocab_size:
            tokenizer = cls.tiny()
        else:
            raise TokenizerError(f"--tokenizer: none found next to the checkpoint and the model has {vocab_size} "
                                 "ids; pass --tokenizer PATH/tokenizer.json")
        if tokenizer.vocab_size > vocab_size:
            raise TokenizerError(f"tokenizer {tokenizer.source} has {tokenizer.vocab_size} ids, the model only "
                                 f"{vocab_size}")
        return tokenizer

    # ---- basics --------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def special(self, token: str) -> int:
        i = self.hf.token_to_id(token)
        if i is None:
            raise TokenizerError(f"{self.source}: unknown special token {token!r}")
        return i

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Tokens that end an assistant turn: <|return|>, <|end|>, <|call|>, <|endoftext|>."""
        return tuple(self.special(t) for t in ("<|return|>", "<|end|>", "<|call|>", "<|endoftext|>"))

    @property
    def pad_id(self) -> int:
        return self.special("<|endoftext|>")

    def encode(self, text: str) -> list[int]:
        """Plain text → ids (no special tokens are added or parsed)."""
        return self.hf.encode(text, add_special_tokens=False, is_pretokenized=False).ids if text else []

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Plain text → (ids, character (start, end) of each token in ``text``): how character
        spans of a record (labels, mentions, sections) map onto token positions."""
        if not text:
            return [], []
        enc = self.hf.encode(text, add_special_tokens=False, is_pretokenized=False)
        return list(enc.ids), [tuple(o) for o in enc.offsets]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(map(int, ids)), skip_special_tokens=skip_special_tokens)

    # ---- harmony ---------------------------------------------------------------------------------
    def render(self, messages: Sequence[Message], completion_channel: str | None = "final") -> list[int]:
        """Renders a conversation and opens the assistant's turn. With ``completion_channel`` the
        prompt also opens that channel's message, so the next token is answer text."""
        S = self.special
        ids: list[int] = []
        for m in messages:
            if m.role not in ROLES:
                raise TokenizerError(f"message role: expected one of {ROLES}, found {m.role!r}")
            ids += [S("<|start|>")] + self.encode(m.role)
            if m.channel:
                ids += [S("<|channel|>")] + self.encode(m.channel)
            ids += [S("<|message|>")] + self.encode(m.content) + [S("<|end|>")]
        ids += [S("<|start|>")] + self.encode("assistant")
        if completion_channel:
            ids += [S("<|channel|>")] + self.encode(completion_channel) + [S("<|message|>")]
        return ids

    def prompt(self, user: str, system: str | None = None, developer: str | None = None,
               prefix: str = "", completion_channel: str | None = "final") -> list[int]:
        """The ids of a one-turn prompt; ``prefix`` (a per-stream instruction) precedes the user text."""
        messages = []
        if system:
            messages.append(Message("system", system))
        if developer:
            messages.append(Message("developer", developer))
        messages.append(Message("user", prefix + user))
        return self.render(messages, completion_channel)


def train_tiny(texts: Iterable[str], vocab_size: int = 512) -> HFTokenizer:
    """A byte-level BPE over ``texts`` with the harmony special tokens at ids 0..7."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(HARMONY_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train the tiny BPE tokenizer used by tiny PDT models.")
    parser.add_argument("--corpus", required=True, help="a text file (one document per line or free text)")
    parser.add_argument("--out", default=TINY_TOKENIZER)
    parser.add_argument("--vocab-size", type=int, default=512)
    args = parser.parse_args(argv)
    with open(args.corpus, encoding="utf-8") as f:
        texts = [line for line in f if line.strip()]
    train_tiny(texts, args.vocab_size).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
