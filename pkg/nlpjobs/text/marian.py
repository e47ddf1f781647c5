"""MarianTokenizer ids straight from its SentencePiece models.

Marian (opus-mt, the course's translation model) has no fast tokenizer. Its Python tokenizer spends
nearly all its time around SentencePiece (the added-token trie walks every character, every piece is
looked up through several Python calls): 0.80 s for 6,000 English sentences, of which SentencePiece
itself takes 0.03 s. For a text without added tokens (</s>, <unk>, <pad>...) and without a leading
>>lang<< code, ``MarianTokenizer`` computes exactly: the current side's SentencePiece pieces, each mapped
through the added tokens then the side's vocabulary (else <unk>), truncated by ``truncation=True``, then
</s>. This module does that for a whole batch in one SentencePiece call; other texts go through the tokenizer.
"""

from __future__ import annotations

import re
from typing import Any


class MarianIds:
    """``tokenizer(texts, ...)["input_ids"]`` (or ``text_target=texts``) of a ``MarianTokenizer``."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        added: dict[str, int] = dict(tokenizer.added_tokens_encoder)
        longest_first = sorted(added, key=len, reverse=True)
        self._added = re.compile("|".join(map(re.escape, longest_first))) if added else None
        target = tokenizer.target_encoder if tokenizer.separate_vocabs else tokenizer.encoder
        unk = str(tokenizer.unk_token)
        self._vocab = {False: {**tokenizer.encoder, **added}, True: {**target, **added}}
        self._unk = {False: tokenizer.encoder[unk], True: target[unk]}

    @staticmethod
    def handles(tokenizer: Any) -> bool:
        """Whether ``tokenizer`` is a MarianTokenizer this module reproduces (no lower-casing, added tokens kept
        whole)."""
        from transformers import MarianTokenizer

        return (type(tokenizer) is MarianTokenizer and not getattr(tokenizer, "do_lower_case", False)
                and not tokenizer.split_special_tokens)

    def _plain(self, text: str) -> bool:
        return not text.startswith(">>") and (self._added is None or self._added.search(text) is None)

    def __call__(self, texts: list[str], max_length: int, target: bool = False) -> list[list[int]]:
        """Ids of ``texts`` as ``tokenizer(texts, max_length=max_length, truncation=True)`` gives them
        (``text_target=texts`` with ``target``)."""
        plain = [max_length >= 2 and isinstance(t, str) and self._plain(t) for t in texts]
        rows = iter(self._encode([t for t, ok in zip(texts, plain) if ok], max_length, target))
        others = [t for t, ok in zip(texts, plain) if not ok]
        if others:  # the tokenizer's own handling of added tokens, language codes, odd limits
            kwargs = {"text_target" if target else "text": others}
            from_tokenizer = iter(self.tokenizer(**kwargs, max_length=max_length, truncation=True)["input_ids"])
            return [next(rows) if ok else next(from_tokenizer) for ok in plain]
        return list(rows)

    def _encode(self, texts: list[str], max_length: int, target: bool) -> list[list[int]]:
        tok = self.tokenizer
        spm = tok.spm_target if target else tok.spm_source
        get, unk, eos, room = self._vocab[target].get, self._unk[target], tok.eos_token_id, max_length - 1
        left = tok.truncation_side == "left"
        out = []
        for pieces in spm.encode(texts, out_type=str) if texts else []:
            ids = [get(p, unk) for p in pieces]
            if len(ids) > room:  # truncation=True: the content gives way to the </s> after it
                ids = ids[len(ids) - room:] if left else ids[:room]
            ids.append(eos)
            out.append(ids)
        return out
