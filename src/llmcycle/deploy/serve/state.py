"""What the HTTP side of one server shares: its config, metrics and, once loaded in the background, the engine.

Until the model is loaded, `ready()` answers 503, so `/health` and every model route say "loading".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...errors import UserError
from .bridge import Mailbox
from .config import ServerConfig
from .engine import Engine
from .metrics import Metrics
from .models import ServedModels, load_served
from .protocol import APIError


@dataclass
class ServerState:
    config: ServerConfig
    metrics: Metrics
    engine: Engine | None = None
    window: int | None = None  # the context window requests are checked against
    load_error: Exception | None = None
    render: Callable | None = None  # models.chat_renderer's, for the served tokenizer; made on first use
    mailbox: Mailbox | None = None  # made on the event loop's first request

    def ready(self) -> tuple[ServedModels, Engine]:
        if self.engine is None:
            raise APIError(503, "the model is still loading; retry when GET /health answers 200")
        return self.engine.served, self.engine


def load_state(state: ServerState) -> None:
    """Load the model and adapters and start the engine (run in a background thread)."""
    config = state.config
    try:
        served = load_served(config.model, config.adapters, served_model_name=config.served_model_name,
                             dtype=config.dtype, trust_remote_code=config.trust_remote_code)
        state.window = checked_window(served, config.max_model_len)
        engine = Engine(served, state.metrics, max_num_seqs=config.max_num_seqs, max_queued=config.max_queued_requests)
        engine.start()
        state.engine = engine
    except Exception as exc:  # reported by whoever started the server
        state.load_error = exc


def checked_window(served: ServedModels, max_model_len: int | None) -> int | None:
    window = served.loaded.context_window
    if max_model_len is not None and window is not None and max_model_len > window:
        raise UserError(f"--max-model-len {max_model_len} is longer than the model's context window of {window}")
    return max_model_len or window
