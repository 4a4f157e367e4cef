"""Generated tokens to the text a client sees: stop sequences cut, nothing streamed that a stop could take back.

The text is decoded the way `llmcycle generate` decodes it (special tokens skipped, surrounding whitespace
stripped), so a temperature-0 answer equals that verb's output. A completion that follows its echoed prompt keeps
its whitespace instead (`keep_whitespace`), so that the text reads as the prompt then the completion, "Hello there
not", never "Hello therenot", and the tokens' text offsets index it, as in vLLM and OpenAI's legacy completions.
While streaming, text that may still change is held back: the start of a stop sequence, trailing whitespace
(stripped if nothing follows, unless kept) and an incomplete UTF-8 character.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INCOMPLETE = "\ufffd"  # what a tokenizer decodes half of a multi-byte character to


@dataclass
class TextTracker:
    """Follows one sequence's tokens; `push` returns the new text to send and whether a stop sequence ended it."""

    tokenizer: object
    stop: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    sent: str = ""
    text: str = ""
    stops_from: int = 0  # a stop sequence counts only if it ends past this many characters (min_tokens)
    streaming: bool = True  # False: the text is wanted whole, at the end (offline runs), so nothing is decoded before
    keep_whitespace: bool = False  # True: after echoed text (a prompt, or chat's last message), the text is not stripped

    def push(self, token: int | None, final: bool, stops: bool = True) -> tuple[str, bool]:
        """Add `token` (None adds nothing, e.g. for EOS) and return (text to send now, stopped by a stop sequence).

        With `stops` false (before min_tokens), stop sequences in the text so far never end it."""
        if token is not None:
            self.tokens.append(token)
        if not (final or self.streaming or self.stop):
            return "", False
        raw = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not stops:
            self.stops_from = len(raw)
        stopped = False
        found = (raw.find(s, max(0, self.stops_from - len(s) + 1)) for s in self.stop) if stops else ()
        cut = min((index for index in found if index >= 0), default=-1)
        if cut >= 0:
            raw, stopped = raw[:cut], True
        final = final or stopped
        if self.keep_whitespace:
            visible = raw if final else self._settled(raw)
        else:
            visible = raw.strip() if final else self._settled(raw.lstrip())
        return self._advance(visible), stopped

    def _settled(self, text: str) -> str:
        """The part of unfinished `text` that can no longer change."""
        end = len(text)
        for stop in self.stop:  # a suffix that begins a stop sequence may yet become one
            for size in range(min(len(stop) - 1, end), 0, -1):
                if text.endswith(stop[:size]):
                    end = min(end, len(text) - size)
                    break
        text = text[:end]
        while text and text[-1] == INCOMPLETE:
            text = text[:-1]
        return text.rstrip()

    def _advance(self, visible: str) -> str:
        if not visible.startswith(self.sent):  # decoding changed earlier text (rare); send only what extends it
            common = 0
            while common < min(len(visible), len(self.sent)) and visible[common] == self.sent[common]:
                common += 1
            visible = self.sent + visible[common:] if len(visible) > len(self.sent) else self.sent
        delta = visible[len(self.sent):]
        self.sent = visible
        self.text = visible
        return delta
