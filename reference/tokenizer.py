"""Whisper's tokenizer: byte-level BPE from the checkpoint's tokenizer.json, special tokens by name.

No id is written in this file. The .en and the multilingual vocabularies place the same special tokens
at different ids (the seed's bug was hard-coding 50257, which is <|endoftext|> in one and
<|startoftranscript|> in the other), so every id is looked up in the tokenizer it belongs to.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from .errors import InputError

# openai-whisper's `non_speech_tokens`: symbols that are never speech, suppressed by default.
_NON_SPEECH_SYMBOLS = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』') + (
    "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
)
_MUSIC_SYMBOLS = set("♩♪♫♬♭♮♯")

TIMESTAMP_SECONDS = 0.02  # one timestamp token per 20 ms: 1501 tokens for 0.00 .. 30.00


class TokenizerError(InputError):
    pass


class Tokenizer:
    def __init__(self, path: str | os.PathLike, multilingual: bool) -> None:
        self.path = Path(path)
        try:
            self.bpe = HFTokenizer.from_file(str(self.path))
        except Exception as e:  # tokenizers raises a bare Exception for unreadable files
            raise TokenizerError(f"{self.path}: not a readable tokenizer.json ({str(e).splitlines()[0]})") from e
        # The .en tokenizers carry the language tokens too, so the model decides (ModelDims.is_multilingual).
        self.is_multilingual = multilingual

    def special(self, name: str) -> int:
        """The id of a special token such as '<|startoftranscript|>'."""
        i = self.bpe.token_to_id(name)
        if i is None:
            raise TokenizerError(f"{self.path}: no special token {name}")
        return i

    def _maybe(self, *names: str) -> int | None:
        for name in names:
            i = self.bpe.token_to_id(name)
            if i is not None:
                return i
        return None

    @cached_property
    def eot(self) -> int:
        return self.special("<|endoftext|>")

    @cached_property
    def sot(self) -> int:
        return self.special("<|startoftranscript|>")

    @cached_property
    def no_timestamps(self) -> int:
        return self.special("<|notimestamps|>")

    @cached_property
    def no_speech(self) -> int | None:
        return self._maybe("<|nocaptions|>", "<|nospeech|>")

    @cached_property
    def transcribe(self) -> int:
        return self.special("<|transcribe|>")

    @cached_property
    def translate(self) -> int:
        return self.special("<|translate|>")

    @cached_property
    def sot_prev(self) -> int:
        return self.special("<|startofprev|>")

    @cached_property
    def sot_lm(self) -> int:
        return self.special("<|startoflm|>")

    @cached_property
    def timestamp_begin(self) -> int:
        # openai-whisper: the timestamp tokens follow <|notimestamps|> directly
        return self.no_timestamps + 1

    @cached_property
    def languages(self) -> dict[str, int]:
        """Language code -> token id: the <|xx|> tokens between <|startoftranscript|> and <|translate|>."""
        out = {}
        for i in range(self.sot + 1, self.translate):
            tok = self.bpe.id_to_token(i)
            if tok and tok.startswith("<|") and tok.endswith("|>"):
                out[tok[2:-2]] = i
        return out

    def sot_sequence(
        self, language: str | None = None, task: str = "transcribe", timestamps: bool = False
    ) -> list[int]:
        """The start sequence: <|startoftranscript|> [<|lang|> <|task|>] [<|notimestamps|>]."""
        seq = [self.sot]
        if self.is_multilingual:
            lang = language or "en"
            if lang not in self.languages:
                raise TokenizerError(f"{self.path}: unknown language {lang!r}")
            if task not in ("transcribe", "translate"):
                raise TokenizerError(f"unknown task {task!r} (transcribe or translate)")
            seq += [self.languages[lang], self.transcribe if task == "transcribe" else self.translate]
        elif language not in (None, "en") or task != "transcribe":
            raise TokenizerError(f"{self.path}: an English-only model transcribes English only "
                                 f"(got language={language!r}, task={task!r})")
        if not timestamps:
            seq.append(self.no_timestamps)
        return seq

    @cached_property
    def non_speech_tokens(self) -> list[int]:
        """openai-whisper's list: tokens that are symbols, never words; suppressed by default."""
        def encode(text: str) -> list[int]:
            return self.bpe.encode(text, add_special_tokens=False).ids

        result = {encode(" -")[0], encode(" '")[0]}
        for symbol in _NON_SPEECH_SYMBOLS + sorted(_MUSIC_SYMBOLS):
            for ids in (encode(symbol), encode(" " + symbol)):
                if len(ids) == 1 or symbol in _MUSIC_SYMBOLS:
                    result.add(ids[0])
        return sorted(result)

    @cached_property
    def control_tokens(self) -> list[int]:
        """Tokens a transcript never contains: task, start, previous-text, LM and <|nocaptions|>."""
        ids = {self.transcribe, self.translate, self.sot, self.sot_prev, self.sot_lm}
        return sorted(ids | ({self.no_speech} if self.no_speech is not None else set()))

    def encode(self, text: str) -> list[int]:
        return self.bpe.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Text of the non-special tokens (timestamps and control tokens dropped)."""
        return self.bpe.decode([i for i in ids if i < self.eot], skip_special_tokens=True)

    def token_text(self, i: int) -> str:
        """One token for display: '<|1.24|>' for timestamps, the special name, or its text."""
        if i >= self.timestamp_begin:
            return f"<|{(i - self.timestamp_begin) * TIMESTAMP_SECONDS:.2f}|>"
        if i >= self.eot:
            return self.bpe.id_to_token(i) or f"<|{i}|>"
        return self.bpe.decode([i])
