"""The state machine, its filters and the tokenizer, driven by a scripted backend whose logits we choose."""

from __future__ import annotations

import json

import numpy as np
import pytest

from whisperkv.reference import kv as kvslots
from whisperkv.reference.decoding import Decoder, DecodingOptions, State, suppression_ids
from whisperkv.reference.dims import ModelDims
from whisperkv.reference.tokenizer import Tokenizer, TokenizerError
from whisperkv.reference.weights import default_model_dir

EN_TOKENIZER = default_model_dir() / "tokenizer.json"
DIMS = ModelDims(n_mels=2, n_audio_ctx=3, n_audio_state=4, n_audio_head=1, n_audio_layer=1, n_vocab=51864,
                 n_text_ctx=448, n_text_state=4, n_text_head=2, n_text_layer=2)


class ScriptedBackend:
    """Prefers script[i] at the i-th decoding call (with `runner_up` close behind); records every call."""

    name = "scripted"
    dims = DIMS

    def __init__(self, script: list[int], runner_up: int = 11, gap: float = 1.0) -> None:
        self.script, self.runner_up, self.gap = script, runner_up, gap
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def _logits(self) -> np.ndarray:
        i = min(len(self.calls) - 1, len(self.script) - 1)
        logits = np.zeros(DIMS.n_vocab, np.float32)
        logits[self.runner_up] = 10.0 - self.gap
        logits[self.script[i]] = 10.0
        return logits

    def encode(self, mel):
        return np.zeros((1, DIMS.n_audio_ctx, DIMS.n_audio_state), np.float32)

    def zero_kv(self, batch=1):
        return [np.zeros(kvslots.slot_shape(DIMS, i, 0, batch), np.float32)
                for i in range(kvslots.n_slots(DIMS.n_text_layer))]

    def prefill(self, tokens, audio_features, kv):
        tokens = np.asarray(tokens)
        self.calls.append(("prefill", tuple(int(t) for t in tokens[0])))
        b, n = tokens.shape
        kv = [np.zeros(kvslots.slot_shape(DIMS, i, n, b), np.float32) for i in range(len(kv))]
        return np.stack([np.stack([self._logits()] * n)] * b), kv

    def step(self, tokens, kv):
        self.calls.append(("step", tuple(int(t) for t in tokens)))
        b, n = len(tokens), kv[0].shape[2] + 1
        return np.stack([self._logits()] * b), [np.zeros(kvslots.slot_shape(DIMS, i, n, b), np.float32)
                                                for i in kvslots.self_slots(DIMS.n_text_layer)]

    def select(self, kv, rows):
        return [s[list(rows)] for s in kv]

    def to_numpy(self, x):
        return np.asarray(x)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(EN_TOKENIZER, multilingual=False)


def run(tok: Tokenizer, backend: ScriptedBackend, **opts):
    return Decoder(backend, tok, DecodingOptions(**opts), trace=True).run(backend.encode(None))


def test_start_sequence_prefill_steps_and_eot(tok: Tokenizer) -> None:
    words = tok.encode(" hello world")
    backend = ScriptedBackend(words + [tok.eot])
    r = run(tok, backend)
    assert r.start_sequence == [tok.sot, tok.no_timestamps]
    assert backend.calls[0] == ("prefill", (tok.sot, tok.no_timestamps))
    # each sampled token is fed back exactly once, and EOT is never fed
    assert backend.calls[1:] == [("step", (t,)) for t in words]
    assert r.tokens == words and r.text == "hello world" and r.finished == "eot"
    states = [e.state for e in r.events]
    assert states == [State.START, State.PREFILL] + [State.STEP] * len(words)
    # the self slots the machine holds after each transition are the ones the backend returned
    lengths = [e.slot_shapes[kvslots.self_slots(2)[0]][2] for e in r.events[1:]]
    assert lengths == list(range(2, 3 + len(words)))  # prefill holds 2 positions, each step adds one
    # scripted logits 10.0 and 9.0 are exact in float32: the margin is 1.0 up to pytest's default 1e-6
    assert all(e.margin == pytest.approx(1.0) for e in r.events[1:])


def test_budget_stops_at_sample_len(tok: Tokenizer) -> None:
    backend = ScriptedBackend([tok.encode(" la")[0]])
    r = run(tok, backend)
    assert r.finished == "budget" and len(r.tokens) == DIMS.n_text_ctx // 2 == 224
    assert len(backend.calls) == 224  # one prefill and 223 steps: the last sampled token is never fed
    r = run(tok, ScriptedBackend([tok.encode(" la")[0]]), sample_len=5)
    assert len(r.tokens) == 5


def test_suppressed_tokens_are_never_chosen(tok: Tokenizer) -> None:
    word = tok.encode(" yes")[0]
    banned = [tok.no_speech, tok.sot, tok.transcribe, tok.encode("♪")[0], tok.encode(" (")[0]]
    for b in banned:
        r = run(tok, ScriptedBackend([word, b, tok.eot], runner_up=word), sample_len=3)
        assert b not in r.tokens, tok.token_text(b)
    # with suppression off, the same script does produce the token
    r = run(tok, ScriptedBackend([word, tok.no_speech, tok.eot]), suppress_tokens=None, sample_len=3)
    assert r.tokens[1] == tok.no_speech


def test_blank_and_eot_suppressed_only_at_the_first_sampled_token(tok: Tokenizer) -> None:
    space, word = tok.encode(" ")[0], tok.encode(" ok")[0]
    r = run(tok, ScriptedBackend([tok.eot, tok.eot], runner_up=word))
    assert r.tokens == [word] and r.finished == "eot"  # EOT first is blocked, EOT second is taken
    r = run(tok, ScriptedBackend([space, space, tok.eot], runner_up=word))
    assert r.tokens == [word, space]
    r = run(tok, ScriptedBackend([tok.eot, tok.eot], runner_up=word), suppress_blank=False)
    assert r.tokens == [] and r.finished == "eot"


def test_avg_logprob_and_no_speech_prob_follow_openai_whisper(tok: Tokenizer) -> None:
    words = tok.encode(" a b")
    r = run(tok, ScriptedBackend(words + [tok.eot], gap=2.0))
    steps = [e for e in r.events if e.token is not None]
    assert [e.token for e in steps] == words + [tok.eot]
    # the EOT's log-probability counts, and the divisor is len(tokens) + 1 (same float64 sums: default 1e-6)
    assert r.avg_logprob == pytest.approx(sum(e.logprob for e in steps) / (len(words) + 1))
    # at <|startoftranscript|> the scripted logits are uniform but for two tokens: p(nocaptions) = e^0 / Z;
    # computed here in float64 and there by a float64 softmax of float32 logits: 1e-6 relative
    z = (DIMS.n_vocab - 2) + np.exp(10.0) + np.exp(8.0)
    assert r.no_speech_prob == pytest.approx(1.0 / z, rel=1e-6)


def test_suppression_set_matches_ctranslate2_config(tok: Tokenizer) -> None:
    # CTranslate2's converter wrote openai-whisper's "-1" set into config.json: an independent record of it.
    config = json.loads((default_model_dir() / "config.json").read_text())
    assert suppression_ids(tok, "-1") == sorted(config["suppress_ids"])
    assert suppression_ids(tok, [5]) == sorted({5, tok.transcribe, tok.translate, tok.sot, tok.sot_prev,
                                                tok.sot_lm, tok.no_speech})


def test_english_only_special_tokens(tok: Tokenizer) -> None:
    assert tok.bpe.id_to_token(tok.eot) == "<|endoftext|>"
    assert tok.sot == tok.eot + 1 and tok.no_speech == tok.no_timestamps - 1
    assert tok.token_text(tok.timestamp_begin) == "<|0.00|>"
    assert tok.token_text(tok.timestamp_begin + 1500) == "<|30.00|>"
    assert tok.timestamp_begin + 1501 == DIMS.n_vocab  # the model's vocabulary ends with the timestamps
    assert tok.decode(tok.encode(" Hello") + [tok.eot, tok.timestamp_begin + 3]) == " Hello"
    with pytest.raises(TokenizerError, match="English-only"):
        tok.sot_sequence(language="de")


def multilingual_tokenizer_json(tmp_path) -> str:
    """A tokenizer.json in the multilingual layout: every special token one id later than in .en,
    <|endoftext|> leaving the BPE vocabulary (where 50256 becomes an ordinary token)."""
    j = json.loads(EN_TOKENIZER.read_text())
    vocab = j["model"]["vocab"]
    eot_id = vocab.pop("<|endoftext|>")
    vocab["<|placeholder|>"] = eot_id
    for added in j["added_tokens"]:
        added["id"] += 1
        vocab.pop(added["content"], None)
    for special in j["post_processor"]["special_tokens"].values():
        special["ids"] = [i + 1 for i in special["ids"]]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(j))
    return str(path)


def test_multilingual_layout(tmp_path) -> None:
    tok = Tokenizer(multilingual_tokenizer_json(tmp_path), multilingual=True)
    en = Tokenizer(EN_TOKENIZER, multilingual=False)
    assert (tok.eot, tok.sot) == (en.eot + 1, en.sot + 1)  # the seed's 50257 confusion, by name
    assert tok.sot_sequence() == [tok.sot, tok.languages["en"], tok.transcribe, tok.no_timestamps]
    assert tok.sot_sequence("de", "translate") == [tok.sot, tok.languages["de"], tok.translate, tok.no_timestamps]
    assert tok.timestamp_begin == en.timestamp_begin + 1
    with pytest.raises(TokenizerError, match="unknown language"):
        tok.sot_sequence("xx")
    backend = ScriptedBackend(tok.encode(" hi") + [tok.eot])
    r = Decoder(backend, tok, DecodingOptions(language="fr")).run(None)
    assert backend.calls[0] == ("prefill", (tok.sot, tok.languages["fr"], tok.transcribe, tok.no_timestamps))
    assert r.text == "hi"


def test_unreadable_tokenizer_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match=str(bad)):
        Tokenizer(bad, multilingual=False)
