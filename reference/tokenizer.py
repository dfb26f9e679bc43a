"""Whisper's tokenizer: byte-level BPE from the checkpoint's tokenizer.json, special tokens by name.

No id is written in this file. The .en and the multilingual vocabularies place the same special tokens
at different ids (the seed's bug was hard-coding 50257, which is <|endoftext|> in one and
<|startoftranscript|> in the other), so every id is looked up in the tokenizer it belongs to.

Decoding needs no BPE: a token is a fixed string of bytes, and a text is its tokens' bytes joined and read
as UTF-8 (an incomplete character becomes U+FFFD, as tiktoken's decode in openai-whisper and the
`tokenizers` ByteLevel decoder both do). Loading `tokenizers` and parsing tokenizer.json cost ~150 ms, a
tenth of a whole 30 s transcription, so the Tokenizer reads a table instead: every token's bytes, the
special tokens, and the encodings of the few strings every decode asks for (SuppressBlank's " " and
openai's non-speech symbols). The table is built once from tokenizer.json by `tokenizers` itself, checked
against it token by token, and cached (`tokenizers/` in the cache folder, atomically written, trusted only
while tokenizer.json's stamp and this module are unchanged). `tokenizers` is loaded when a text that is not
in the table is encoded (a prompt), or when a tokenizer.json fails the check (then it decodes too).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from array import array
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError
from .files import atomic_path
from .weights import cache_entry_for, file_stamp, unchanged_since

if TYPE_CHECKING:
    from tokenizers import Tokenizer as HFTokenizer

# openai-whisper's `non_speech_tokens`: symbols that are never speech, suppressed by default.
_NON_SPEECH_SYMBOLS = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』') + (
    "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
)
_MUSIC_SYMBOLS = set("♩♪♫♬♭♮♯")

TIMESTAMP_SECONDS = 0.02  # one timestamp token per 20 ms: 1501 tokens for 0.00 .. 30.00

TABLE_FORMAT = 1
TABLES_FOLDER = "tokenizers"


class TokenizerError(InputError):
    pass


def _fixed_strings() -> list[str]:
    """The texts every decode encodes (SuppressBlank's " ", `non_speech_tokens`' symbols): kept in the table."""
    symbols = _NON_SPEECH_SYMBOLS + sorted(_MUSIC_SYMBOLS)
    return [" ", " -", " '", *(text for symbol in symbols for text in (symbol, " " + symbol))]


@cache
def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the character each byte is written as in tokenizer.json -> the byte.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, DEL, NBSP, soft hyphen)
    are written as chr(256 + k) in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shown = {b: chr(b) for b in printable}
    for k, b in enumerate(b for b in range(256) if b not in shown):
        shown[b] = chr(256 + k)
    return {c: b for b, c in shown.items()}


@dataclass(frozen=True)
class _Table:
    """What decoding needs from tokenizer.json. Token i's bytes are blob[offsets[i]:offsets[i + 1]] (empty
    for special and missing ids); `exact` is False when a token's bytes do not decode as `tokenizers` does."""

    blob: bytes
    offsets: array  # "Q": len(vocabulary) + 1
    specials: dict[str, int]  # added token -> id
    encoded: dict[str, list[int]] = field(default_factory=dict)  # _fixed_strings() -> their ids
    exact: bool = True

    @cached_property
    def special_names(self) -> dict[int, str]:
        return {i: name for name, i in self.specials.items()}

    def piece(self, i: int) -> bytes:
        return self.blob[self.offsets[i]:self.offsets[i + 1]] if 0 <= i < len(self.offsets) - 1 else b""


def _build_table(bpe: HFTokenizer) -> _Table:
    byte_of = _byte_of_char()
    added = {i: t.content for i, t in bpe.get_added_tokens_decoder().items()}
    size = bpe.get_vocab_size(with_added_tokens=True)
    pieces, exact = [], True
    for i in range(size):
        piece = None if i in added else bpe.id_to_token(i)
        try:
            raw = b"" if piece is None else bytes(byte_of[c] for c in piece)
        except KeyError:  # not a byte-level vocabulary: decode through `tokenizers`
            raw, exact = b"", False
        if piece is not None and exact and raw.decode("utf-8", errors="replace") != bpe.decode([i]):
            exact = False
        pieces.append(raw)
    offsets = array("Q", [0])
    for raw in pieces:
        offsets.append(offsets[-1] + len(raw))
    encoded = {text: bpe.encode(text, add_special_tokens=False).ids for text in _fixed_strings()}
    return _Table(b"".join(pieces), offsets, {name: i for i, name in added.items()}, encoded, exact)


@cache
def _module_hash() -> str:
    """This module's source: a table written by another version of the tokenizer is not trusted."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _table_path(source: Path) -> Path:
    return cache_entry_for(source, TABLES_FOLDER, ".bin")


def _header(source: Path, table: _Table, stamp: list[int]) -> dict:
    return {"format": TABLE_FORMAT, "module": _module_hash(), "source": str(source.resolve()), "stamp": stamp,
            "byteorder": sys.byteorder, "itemsize": table.offsets.itemsize, "n": len(table.offsets),
            "specials": table.specials, "encoded": table.encoded, "exact": table.exact}


def _write_table(source: Path, table: _Table, stamp: list[int]) -> None:
    """[JSON header line][offsets][blob], renamed into place; a cache that cannot be written is skipped."""
    path = _table_path(source)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".bin") as tmp, open(tmp, "wb") as f:
            f.write(json.dumps(_header(source, table, stamp)).encode() + b"\n")
            f.write(table.offsets.tobytes())
            f.write(table.blob)
    except OSError:
        pass  # the next start builds the table again, that is all


def _read_table(source: Path) -> _Table | None:
    """The cached table of `source`, when its header vouches for the file as it is now; else None."""
    path = _table_path(source)
    try:
        written_ns = os.stat(path).st_mtime_ns
        data = path.read_bytes()
        end = data.index(b"\n")
        head = json.loads(data[:end])
        offsets = array("Q")
        if not (isinstance(head, dict) and head.get("format") == TABLE_FORMAT and head.get("module") == _module_hash()
                and head.get("source") == str(source.resolve()) and head.get("byteorder") == sys.byteorder
                and head.get("itemsize") == offsets.itemsize
                and unchanged_since(head.get("stamp"), file_stamp(source), written_ns)):
            return None
        start = end + 1 + head["n"] * offsets.itemsize
        offsets.frombytes(data[end + 1:start])
        blob = data[start:]
        if len(offsets) < 1 or offsets[-1] != len(blob):
            return None
        return _Table(blob, offsets, dict(head["specials"]), dict(head["encoded"]), bool(head["exact"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None  # no table, or one that cannot be trusted: build it again


class Tokenizer:
    def __init__(self, path: str | os.PathLike, multilingual: bool) -> None:
        self.path = Path(path)
        table = _read_table(self.path)
        if table is None:
            try:
                stamp = file_stamp(self.path)
            except OSError as e:
                raise TokenizerError(f"{self.path}: cannot read the tokenizer ({e.strerror})") from e
            table = _build_table(self.bpe)
            _write_table(self.path, table, stamp)
        self.table: _Table = table
        # The .en tokenizers carry the language tokens too, so the model decides (ModelDims.is_multilingual).
        self.is_multilingual = multilingual

    @cached_property
    def bpe(self) -> HFTokenizer:
        """The `tokenizers` BPE itself: loaded on the first encode of a text the table does not hold."""
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return HFTokenizer.from_file(str(self.path))
        except Exception as e:  # tokenizers raises a bare Exception for unreadable files
            raise TokenizerError(f"{self.path}: not a readable tokenizer.json ({str(e).splitlines()[0]})") from e

    def special(self, name: str) -> int:
        """The id of a special token such as '<|startoftranscript|>'."""
        i = self.table.specials.get(name)
        if i is None:
            raise TokenizerError(f"{self.path}: no special token {name}")
        return i

    def _maybe(self, *names: str) -> int | None:
        for name in names:
            i = self.table.specials.get(name)
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
            tok = self.table.special_names.get(i)
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
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in _NON_SPEECH_SYMBOLS + sorted(_MUSIC_SYMBOLS):
            for ids in (self.encode(symbol), self.encode(" " + symbol)):
                if len(ids) == 1 or symbol in _MUSIC_SYMBOLS:
                    result.add(ids[0])
        return sorted(result)

    @cached_property
    def control_tokens(self) -> list[int]:
        """Tokens a transcript never contains: task, start, previous-text, LM and <|nocaptions|>."""
        ids = {self.transcribe, self.translate, self.sot, self.sot_prev, self.sot_lm}
        return sorted(ids | ({self.no_speech} if self.no_speech is not None else set()))

    def encode(self, text: str) -> list[int]:
        known = self.table.encoded.get(text)
        return list(known) if known is not None else self.bpe.encode(text, add_special_tokens=False).ids

    def token_bytes(self, i: int) -> bytes:
        """An ordinary token's bytes (b"" for a special or unknown id): what a text's UTF-8 is made of."""
        return self.table.piece(i)

    def decode(self, ids: list[int]) -> str:
        """Text of the non-special tokens (timestamps and control tokens dropped)."""
        ordinary = [i for i in ids if i < self.eot]
        if not self.table.exact:
            return self.bpe.decode(ordinary, skip_special_tokens=True)
        return b"".join(map(self.table.piece, ordinary)).decode("utf-8", errors="replace")

    def token_text(self, i: int) -> str:
        """One token for display: '<|1.24|>' for timestamps, the special name, or its text."""
        if i >= self.timestamp_begin:
            return f"<|{(i - self.timestamp_begin) * TIMESTAMP_SECONDS:.2f}|>"
        if i >= self.eot:
            return self.table.special_names.get(i) or f"<|{i}|>"
        return self.decode([i])
