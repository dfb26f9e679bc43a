"""The tokenizer's table (reference/tokenizer.py) against `tokenizers` itself, and its cache.

Decoding reads a table of token bytes instead of loading `tokenizers`; these tests hold the table to the
library it was built from: every text it decodes is the library's, for the .en and the multilingual layouts,
on token sequences that split UTF-8 characters (where U+FFFD appears). The cache is checked the way the
checkpoint notes are: a changed tokenizer.json, a damaged table, or an unwritable folder never changes an id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer

from whisperkv.reference import tokenizer as tokenizer_module
from whisperkv.reference.tokenizer import Tokenizer, TokenizerError

from .test_decoding import EN_TOKENIZER, multilingual_tokenizer_json

HF = HFTokenizer.from_file(str(EN_TOKENIZER))
# Tokens whose bytes are not whole UTF-8 characters: sequences of them decode to U+FFFD in places that
# depend on both neighbours, where a table and a library could disagree.
PARTIAL = [i for i in range(HF.get_vocab_size()) if "\ufffd" in HF.decode([i])]


@pytest.fixture(scope="module")
def en() -> Tokenizer:
    return Tokenizer(EN_TOKENIZER, multilingual=False)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("WHISPERKV_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / tokenizer_module.TABLES_FOLDER


def test_partial_tokens_exist() -> None:
    assert len(PARTIAL) > 100  # the byte-level vocabulary has many (the property below needs them)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 50255), st.sampled_from(PARTIAL)), max_size=16))
def test_table_decodes_as_tokenizers(en: Tokenizer, ids: list[int]) -> None:
    assert en.decode(ids) == HF.decode(ids, skip_special_tokens=True)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_round_trip_of_any_text(en: Tokenizer, text: str) -> None:
    ids = HF.encode(text, add_special_tokens=False).ids
    assert en.decode(ids) == HF.decode(ids) == text  # byte-level BPE is lossless on whole texts


def test_every_token_and_special_as_tokenizers(en: Tokenizer) -> None:
    for i in range(en.eot):
        assert en.token_text(i) == HF.decode([i])
    for i, added in HF.get_added_tokens_decoder().items():
        assert en.token_text(i) == added.content
        assert en.special(added.content) == HF.token_to_id(added.content) == i
    assert en.decode([en.sot, en.eot, en.timestamp_begin]) == ""


def test_multilingual_layout_as_tokenizers(tmp_path, cache) -> None:
    path = multilingual_tokenizer_json(tmp_path)
    ml, hf = Tokenizer(path, multilingual=True), HFTokenizer.from_file(path)
    ids = hf.encode(" Grüße, 東京 ♪", add_special_tokens=False).ids + [ml.eot - 1]  # 50256: ordinary here
    assert ml.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    assert ml.languages == {hf.id_to_token(i)[2:-2]: i for i in range(ml.sot + 1, ml.translate)}


def test_fixed_encodings_and_lazy_bpe(en: Tokenizer, cache) -> None:
    fresh = Tokenizer(EN_TOKENIZER, multilingual=False)  # builds the table into this test's cache
    again = Tokenizer(EN_TOKENIZER, multilingual=False)  # reads it
    for tok in (fresh, again):
        assert tok.non_speech_tokens == en.non_speech_tokens
        assert tok.encode(" ") == HF.encode(" ", add_special_tokens=False).ids
    assert "bpe" not in again.__dict__  # decoding and the default suppressions never loaded `tokenizers`
    assert again.encode(" Hello world") == HF.encode(" Hello world", add_special_tokens=False).ids  # now it is
    assert "bpe" in again.__dict__


def test_a_changed_tokenizer_json_is_read_again(tmp_path, cache) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(EN_TOKENIZER.read_text())
    assert Tokenizer(path, multilingual=False).sot == HF.token_to_id("<|startoftranscript|>")
    assert multilingual_tokenizer_json(tmp_path) == str(path)  # the same file, rewritten: every special one later
    assert Tokenizer(path, multilingual=True).sot == HF.token_to_id("<|startoftranscript|>") + 1


def test_a_damaged_table_is_rebuilt(cache) -> None:
    Tokenizer(EN_TOKENIZER, multilingual=False)
    (table,) = cache.iterdir()
    data = table.read_bytes()
    for damaged in (data[: len(data) // 2], b"\x00" * 64, data.replace(b'"format": 1', b'"format": 9', 1)):
        table.write_bytes(damaged)
        tok = Tokenizer(EN_TOKENIZER, multilingual=False)
        assert tok.decode(HF.encode(" café", add_special_tokens=False).ids) == " café"
        assert "bpe" in tok.__dict__  # rebuilt from tokenizer.json, not read
    assert table.read_bytes() == data  # and written again, whole


def test_an_unwritable_cache_still_tokenizes(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("WHISPERKV_CACHE_DIR", str(blocker))  # a file where the folder should be
    assert Tokenizer(EN_TOKENIZER, multilingual=False).decode(HF.encode(" ok", add_special_tokens=False).ids) == " ok"


def test_a_decoder_that_is_not_only_byte_level_decodes_through_tokenizers(tmp_path, cache) -> None:
    j = json.loads(EN_TOKENIZER.read_text())
    j["decoder"] = {"type": "Sequence", "decoders": [
        j["decoder"], {"type": "Replace", "pattern": {"String": "the"}, "content": "THE"}]}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(j))
    tok, hf = Tokenizer(path, multilingual=False), HFTokenizer.from_file(str(path))
    assert not tok.table.exact  # token bytes alone would give " the"
    ids = HF.encode(" the cat", add_special_tokens=False).ids
    assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True) == " THE cat"


def test_a_missing_tokenizer_is_a_clear_error(tmp_path, cache) -> None:
    with pytest.raises(TokenizerError, match=str(tmp_path / "nope.json")):
        Tokenizer(tmp_path / "nope.json", multilingual=False)


def test_a_warm_start_never_imports_tokenizers(cache) -> None:
    code = ("import sys; from whisperkv.reference.tokenizer import Tokenizer; "
            f"t = Tokenizer({str(EN_TOKENIZER)!r}, False); t.non_speech_tokens; t.decode(t.encode(' ')); "
            "print('tokenizers' in sys.modules)")
    env = {**os.environ, "WHISPERKV_CACHE_DIR": str(cache.parent)}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
            for _ in range(2)]
    assert [r.stdout.strip() for r in runs] == ["True", "False"]  # the first builds the table, the second reads it
