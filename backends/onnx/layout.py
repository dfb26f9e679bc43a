"""The Optimum ONNX folder layout: file names, tensor names, order, dtypes and dynamic axes.

One table serves the exporter (what to write) and the importer (what to accept). It follows
optimum's `WhisperOnnxConfig` (exporters/onnx/model_configs.py) and its seq2seq base class:

- `encoder_model.onnx`: input_features [batch_size, n_mels, 3000] -> last_hidden_state [batch_size, 1500, d].
- `decoder_model.onnx`: input_ids [batch_size, decoder_sequence_length] int64, encoder_hidden_states
  [batch_size, "encoder_sequence_length / 2", d] -> logits [batch_size, decoder_sequence_length, n_vocab]
  and, per layer i, present.{i}.decoder.key/value, present.{i}.encoder.key/value (the seed's slot order).
- `decoder_with_past_model.onnx`: input_ids [batch_size, 1] and all past_key_values.{i}.{decoder|encoder}.
  {key|value} -> logits and present.{i}.decoder.key/value only: cross K/V are constant after the first
  call, so the caller keeps those of decoder_model.
- `decoder_model_merged.onnx` (optional, written by Optimum's default export beside the two above): both
  decoders as the branches of one `If` on use_cache_branch bool [1]. Inputs: input_ids, encoder_hidden_states,
  all 16 past_key_values, use_cache_branch; outputs: logits and all 4L presents. The first call passes False
  and [batch_size, n_text_head, 0, head_dim] pasts (read by no node); later calls pass True. In the cached branch the
  present.{i}.encoder.* are placeholders (Optimum's merge_decoders emits empty constants of shape
  [0, n_text_head, 1, head_dim]): the caller keeps the cross K/V of the first call, as with the two files.

Variants other exporter versions write, accepted on import:
- `cache_position` int64 [decoder_sequence_length] (optimum with transformers 4.43 .. 4.45): the absolute
  positions of input_ids; fed as arange(past, past + n).
- `encoder_hidden_states` kept as an input of decoder_with_past (older optimum): unused by the math (cross
  K/V come from the pasts) but bound, since a graph input must be fed.
Graph inputs and outputs are float32 even in fp16 exports (fp16 weights inside); float16 I/O is accepted too.
"""

from __future__ import annotations

from dataclasses import dataclass

from whisperkv.reference import kv as kvslots
from whisperkv.reference.dims import ModelDims

ENCODER = "encoder_model"
DECODER = "decoder_model"
DECODER_WITH_PAST = "decoder_with_past_model"
PARTS = (ENCODER, DECODER, DECODER_WITH_PAST)  # the three files every engine here runs
MERGED = "decoder_model_merged"  # both decoders in one file; onnxruntime runs it in place of the two

OPTIONAL_INPUTS = {DECODER: ("cache_position",), DECODER_WITH_PAST: ("encoder_hidden_states", "cache_position"),
                   MERGED: ("cache_position",)}

Dim = int | str  # a fixed size, or the name of a dynamic axis


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "int64", "bool" or "float" (float32, or float16 in some fp16 exports)
    shape: tuple[Dim, ...]
    # Per axis, the ModelDims field the size comes from ("" if none). A dynamic axis with a field (the
    # encoder length) is still checked when a file fixes it.
    what: tuple[str, ...] = ()


def file_name(part: str, fp16: bool = False, suffix: str = ".onnx") -> str:
    """encoder_model.onnx, encoder_model_fp16.onnx; suffix ".so" for the libraries TVM compiles from them."""
    return f"{part}_fp16{suffix}" if fp16 else f"{part}{suffix}"


def kv_name(prefix: str, slot: int) -> str:
    """'past_key_values' or 'present' + a slot index -> Optimum's tensor name, e.g. present.0.encoder.key."""
    layer, kind = kvslots.slot_of(slot)
    side = "decoder" if kind.is_self else "encoder"
    part = "key" if kind in (kvslots.SlotKind.SELF_KEY, kvslots.SlotKind.CROSS_KEY) else "value"
    return f"{prefix}.{layer}.{side}.{part}"


def _kv_spec(dims: ModelDims, prefix: str, slot: int, self_len: Dim) -> TensorSpec:
    _, kind = kvslots.slot_of(slot)
    length = self_len if kind.is_self else "encoder_sequence_length_out"
    return TensorSpec(kv_name(prefix, slot), "float", ("batch_size", dims.n_text_head, length, dims.text_head_dim),
                      ("", "n_text_head", "" if kind.is_self else "n_audio_ctx", "text_head_dim"))


def _logits(dims: ModelDims, seq: Dim) -> TensorSpec:
    return TensorSpec("logits", "float", ("batch_size", seq, dims.n_vocab), ("", "", "n_vocab"))


def _encoder_hidden_states(dims: ModelDims) -> TensorSpec:
    # Optimum leaves the encoder length dynamic here (its dummy inputs use 16 positions, not 1500).
    return TensorSpec("encoder_hidden_states", "float", ("batch_size", "encoder_sequence_length / 2",
                                                         dims.n_text_state), ("", "n_audio_ctx", "n_text_state"))


CACHE_POSITION = TensorSpec("cache_position", "int64", ("decoder_sequence_length",))
USE_CACHE_BRANCH = TensorSpec("use_cache_branch", "bool", (1,))


def inputs(part: str, dims: ModelDims, cache_position: bool = False,
           past_encoder_hidden_states: bool = False) -> list[TensorSpec]:
    """The graph inputs of one part, in file order (the exporter's variants select the optional ones)."""
    n = kvslots.n_slots(dims.n_text_layer)
    if part == ENCODER:
        return [TensorSpec("input_features", "float", ("batch_size", dims.n_mels, dims.n_mel_frames),
                           ("", "n_mels", "n_mel_frames"))]
    if part == DECODER:
        specs = [TensorSpec("input_ids", "int64", ("batch_size", "decoder_sequence_length")),
                 _encoder_hidden_states(dims)]
    elif part == DECODER_WITH_PAST:
        specs = [TensorSpec("input_ids", "int64", ("batch_size", 1))]
        if past_encoder_hidden_states:
            specs.append(_encoder_hidden_states(dims))
        specs += [_kv_spec(dims, "past_key_values", s, "past_decoder_sequence_length") for s in range(n)]
    elif part == MERGED:
        # Optimum's order: decoder_model's inputs, then those only decoder_with_past takes, then the flag.
        specs = [TensorSpec("input_ids", "int64", ("batch_size", "decoder_sequence_length")),
                 _encoder_hidden_states(dims)] + ([CACHE_POSITION] if cache_position else [])
        specs += [_kv_spec(dims, "past_key_values", s, "past_decoder_sequence_length") for s in range(n)]
        return specs + [USE_CACHE_BRANCH]
    else:
        raise ValueError(f"unknown part {part!r} (known: {', '.join((*PARTS, MERGED))})")
    return specs + ([CACHE_POSITION] if cache_position else [])


def outputs(part: str, dims: ModelDims) -> list[TensorSpec]:
    n = kvslots.n_slots(dims.n_text_layer)
    if part == ENCODER:
        return [TensorSpec("last_hidden_state", "float", ("batch_size", dims.n_audio_ctx, dims.n_audio_state),
                           ("", "n_audio_ctx", "n_audio_state"))]
    if part == DECODER:
        seq = "decoder_sequence_length"
        return [_logits(dims, seq)] + [_kv_spec(dims, "present", s, seq) for s in range(n)]
    if part == DECODER_WITH_PAST:
        return [_logits(dims, 1)] + [_kv_spec(dims, "present", s, "past_decoder_sequence_length + 1")
                                     for s in kvslots.self_slots(dims.n_text_layer)]
    if part == MERGED:  # decoder_model's outputs; the self length is the past's + the new tokens'
        seq = "decoder_sequence_length"
        return [_logits(dims, seq)] + [_kv_spec(dims, "present", s, "present_sequence_length") for s in range(n)]
    raise ValueError(f"unknown part {part!r} (known: {', '.join((*PARTS, MERGED))})")
