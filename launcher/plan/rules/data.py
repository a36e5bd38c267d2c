"""Rules of the data group: what each data kind needs, checked before any rank starts."""
from __future__ import annotations

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError
from launcher.plan.resolve import Resolved


def check_data(cfg: RunConfig, res: Resolved) -> None:
    if cfg.data.kind == "indexed" and not cfg.data.paths:
        raise ConfigError("data.paths", [], "indexed data needs at least one .bin/.idx prefix",
                          "set data.paths=[/path/to/prefix] or data=mock")
    if cfg.data.tokenizer_type != "NullTokenizer" and not cfg.data.tokenizer_model:
        # Megatron's build_tokenizer would only fail once every rank has started
        raise ConfigError("data.tokenizer_model", None, f"{cfg.data.tokenizer_type} needs a tokenizer model",
                          "set data.tokenizer_model (e.g. a Hugging Face id or a path)")
    if cfg.data.kind == "mock" and cfg.data.paths:
        raise ConfigError("data.paths", list(cfg.data.paths), "mock data reads no files", "set data=indexed")
