"""Text handling shared by the tasks: the tokenizer fast paths of preprocessing, and sentence splitting.

The fast paths compute what the course's ``tokenizer(...)`` calls compute, with less Python around the Rust or
SentencePiece tokenizer; each is tested equal to the call it replaces, on the tokenizer families the tasks use:

- ``encode``: batch encoding through a fast tokenizer's Rust backend (ids as flat arrays, words for NER,
  blocks for CLM and MLM), instead of ``BatchEncoding``'s per-row Python lists;
- ``pairs``: extractive-QA windows assembled in NumPy from each side tokenized once, instead of the pair call
  with overflowing tokens;
- ``marian``: MarianTokenizer ids straight from its SentencePiece models (Marian has no fast tokenizer).

``sentences`` is the offline sentence splitter (ROUGE-Lsum, the lead-3 baseline).
"""
