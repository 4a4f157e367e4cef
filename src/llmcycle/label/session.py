"""`llmcycle label`: check everything, make or read the items, open the rankings file, and serve the page.

Every check that can fail on the user's input (flags, the labelers file, the completions or prompts, an existing
rankings file, the port) runs before anything is written; the rankings file is created only once the items exist.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ..console import note, out
from ..deploy.serve.listening import bind
from ..errors import UserError
from ..generate.settings import GenerationSettings
from ..outputs import check_writable
from .app import LabelServer
from .completions import (
    MAX_K,
    GenerationRequest,
    Item,
    file_sha256,
    generated_items,
    read_completions,
)
from .queue import ANONYMOUS, Labeler, Queues, read_labelers
from .store import RankingStore

DEFAULT_K = 4


@dataclass
class LabelRequest:
    """What `llmcycle label` was asked for."""

    out: str
    """The rankings file (JSONL), appended to; started again with the same file, the page continues."""
    completions: str | None = None
    """Rows of prompt + responses to rank, instead of sampling them."""
    prompts: object | None = None
    """DataOptions of the prompts to sample completions for (with `model`)."""
    model: object | None = None
    """ModelOptions to sample from; its adapters spread the K completions over base and adapters."""
    k: int | None = None
    """Completions per prompt (default 4 when sampling; each row's count with --completions)."""
    settings: GenerationSettings = field(default_factory=lambda: GenerationSettings(do_sample=True, top_p=0.95))
    labelers: str | None = None
    """A file of `name token` lines; without it one anonymous labeler, on a loopback address only."""
    overlap: int = 1
    host: str = "127.0.0.1"
    port: int = 8000


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_request(request: LabelRequest) -> list[Labeler]:
    """The labelers, after every check of the flags that needs no model."""
    if (request.completions is None) == (request.prompts is None):
        raise UserError("give --prompts FILE (with --model) to sample completions, or --completions FILE, not both")
    if request.prompts is not None and request.model is None:
        raise UserError("--prompts needs --model: the model that writes the completions")
    if request.completions is not None and request.model is not None:
        raise UserError("--model samples completions for --prompts; with --completions the responses are given")
    if request.k is not None and not 2 <= request.k <= MAX_K:
        raise UserError(f"--k must be between 2 and {MAX_K}: a labeler ranks two or more completions, with the keys 1..{MAX_K}")
    if request.overlap < 1:
        raise UserError("--overlap must be at least 1")
    if request.labelers is None:
        if not is_loopback(request.host):
            raise UserError(f"--host {request.host} is not a loopback address: without --labelers FILE (a token per "
                            "labeler) the page serves one anonymous labeler on this machine only")
        labelers = [Labeler(ANONYMOUS, None)]
    else:
        labelers = read_labelers(request.labelers)
    if request.overlap > len(labelers):
        raise UserError(f"--overlap {request.overlap} needs between 1 and {len(labelers)} (the number of labelers)")
    return labelers


def make_items(request: LabelRequest) -> list[Item]:
    if request.completions is not None:
        return read_completions(request.completions, request.k)
    settings = request.settings
    settings.validate()
    model = request.model
    generation = GenerationRequest(model.model, tuple(model.adapters), request.prompts.data,
                                   file_sha256(request.prompts.data), request.k or DEFAULT_K, settings,
                                   model.dtype, model.trust_remote_code)
    return generated_items(generation, model, request.prompts, request.out)


def open_store(path: str) -> RankingStore | None:
    """The rankings file when it exists already (read and checked now); None when it is still to be made."""
    check_writable(path)
    return RankingStore(path).open() if Path(path).exists() else None


def prepare(request: LabelRequest, labelers: list[Labeler]) -> tuple[Queues, RankingStore]:
    """Queues over an open rankings file, after every check (nothing written on a bad input); `labelers` are
    `check_request`'s."""
    store = open_store(request.out)
    try:
        items = make_items(request)
        store = store or RankingStore(request.out).open()
        queues = Queues(items, labelers, request.overlap, store, seed=request.settings.seed)
    except BaseException:
        if store is not None:
            store.close()
        raise
    unknown = sum(row["item"] not in queues.items for row in store.rows.values())
    if unknown:
        note(f"{request.out}: {unknown} rows rank items not among these completions; they stay in the file, unshown")
    return queues, store


def run_label(request: LabelRequest, until_done: bool = False) -> None:
    """Serve the labeling page until Ctrl-C (or, `until_done`, until every queue is ranked: the feedback stage's
    human rounds); every acknowledged ranking is a row of `request.out`."""
    labelers = check_request(request)
    sock = bind(request.host, request.port)  # a port in use fails before the completions are sampled
    try:
        queues, store = prepare(request, labelers)
    except BaseException:
        sock.close()
        raise
    try:
        if not (until_done and queues.all_done()):
            server = LabelServer(queues, sock, stop_when=queues.all_done if until_done else None)
            print_banner(server.url, queues, labelers, request.out)
            server.run()
    finally:
        store.close()
        sock.close()
    note(f"stopped; {len(store.rows)} rows in {request.out}")
    if until_done and not queues.all_done():
        raise UserError(f"the page stopped before every prompt was ranked; start again to continue ({request.out} is kept)")


def print_banner(url: str, queues: Queues, labelers: list[Labeler], path: str) -> None:
    done = sum(queues.progress(labeler)["done"] for labeler in labelers)
    total = sum(len(queue) for queue in queues.queues.values())
    out.print(f"llmcycle label at {url}/ : {len(queues.items)} prompts, {total} rankings to make ({done} done) "
              f"by {len(labelers)} labeler(s), rows in {path}", highlight=False, markup=False, soft_wrap=True)
    if queues.requires_token:
        out.print("Each labeler opens the page and enters their token (sent as 'Authorization: Bearer TOKEN').",
                  highlight=False, markup=False)
    out.print("Ctrl-C stops the server; starting it again with the same --out continues.", highlight=False, markup=False)
