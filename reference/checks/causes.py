"""The causes `verify` can name: one label and one explanation of the mechanism each.

A signature rule (checks/signatures.py) or a replayed mutant (checks/mutants.py) names one of these when its
evidence supports it; the mutants carry the label their bug must be diagnosed as, so the two cannot drift
apart. Anything else is UNKNOWN, reported with the localisation.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cause:
    label: str  # short: what the report's DIAGNOSIS line starts with, what tests assert
    explanation: str  # the mechanism, for a reader who has not seen the code


def _c(label: str, explanation: str) -> Cause:
    return Cause(label, explanation)


def error_text(e: Exception) -> str:
    """What a candidate raised, in one line (the evidence of CANDIDATE_ERROR)."""
    return f"{type(e).__name__}: {e}"


UNKNOWN = _c("unknown", "no rule and no replayed mutant explains the evidence; the localisation says where to look")
TIE = _c("tie", "the reference's two best tokens are within the tie margin: either choice is accepted")
CANDIDATE_ERROR = _c("candidate raised an exception", "the candidate failed inside the protocol call named below")

# --- start sequence, embeddings, positions
WRONG_START = _c("wrong start sequence", "the decoder was started from other tokens than the start sequence it was "
                 "given (the seed's 50257 alone): <|startoftranscript|>, language, task and <|notimestamps|> must "
                 "come from the tokenizer, looked up by name")
POSITION_OFFSET = _c("positional offset off by one", "the decoder's positional embedding is read at the wrong row "
                     "(position p gets row p + 1)")
POSITION_NOT_RESET = _c("position counter not reset between windows", "the decoder's position counter kept counting "
                        "from the previous window: each window must start at position 0")
WRONG_TOKEN_FED = _c("wrong token fed to the step", "the step embedded another token than the one it was given (the "
                     "previous one: an off-by-one in the token buffer)")
START_ROWS_COPIED = _c("start positions not computed", "prefill returned the last start position's logits for every "
                       "start position: no_speech_prob, read at <|startoftranscript|>, comes out wrong")

# --- the self-attention cache
SELF_SLOTS_SWAPPED = _c("self slots remapped to the wrong indices", "the present self K/V came back in another order "
                        "than the slot layout expects (layer-major: key, value), so the next step reads keys as values")
NOT_APPENDED = _c("self slots not appended", "the present self K/V hold only the newest position: past positions are "
                  "forgotten each step")
CACHE_CUT = _c("self cache cut short", "the self K/V stop growing at a fixed length (a cache allocated too small): "
               "later positions are dropped")
CACHE_SLIDING = _c("self cache keeps only the last positions", "the self K/V are capped at a fixed length by dropping "
                   "the oldest positions (a sliding window): the start sequence is forgotten")
SELF_STATE_LEAKED = _c("self K/V carried over from the previous window", "prefill did not start from the empty self "
                       "slots it was given: the previous window's self K/V are still in front")
KEYS_PRESCALED = _c("keys cached pre-scaled", "the key slots hold k * head_dim^-1/4 (openai-whisper scales q and k by "
                    "d^-1/4 each inside the attention): the slots must hold the unscaled projection")
LAYOUT_TRANSPOSED = _c("slot layout transposed", "a slot holds the right numbers with its axes in another order than "
                       "(batch, heads, length, head_dim)")
HEADS_MIXED = _c("heads split without the transpose", "a slot holds (batch, length, heads, head_dim) memory reshaped "
                 "to (batch, heads, length, head_dim) instead of transposed: positions and heads are mixed")

# --- cross-attention K/V
ZERO_CROSS = _c("cross K/V left zero", "cross-attention K/V were the zero-filled placeholders, not projections of the "
                "encoder output: the decoder never hears the audio")
CROSS_FROM_ZEROS = _c("cross K/V computed from zero features", "cross-attention K/V are the projections of all-zero "
                      "audio features (key 0, value = its bias): the encoder output never reached the decoder")
CROSS_WRONG_WEIGHTS = _c("cross K/V projected with the wrong weights", "cross-attention K/V are projections of the "
                         "right audio features by other weights (the self-attention's or another layer's)")
CROSS_STALE = _c("cross K/V stale from the previous window", "cross-attention K/V were not recomputed for this window: "
                 "they are the previous window's (a cache that outlives its window)")
CROSS_KV_EXCHANGED = _c("cross key and value exchanged", "the cross-attention key slot holds the value projection and "
                        "the value slot the key projection")

# --- inside the decoder layers
CAUSAL_MASK = _c("causal mask missing", "at prefill the start positions before the last also attended to later ones: "
                 "the self-attention's causal mask is not applied")
ATTENTION_SCALE = _c("attention scale wrong", "the attention scores are not q k^T / sqrt(head_dim)")
SOFTMAX_AXIS = _c("softmax along the wrong axis", "the attention weights are normalised over the queries instead of "
                  "the keys")
BIASES_DROPPED = _c("biases dropped", "the linear layers' biases are not added (seen on the value projections, the "
                    "only ones the slots show directly)")
NO_FINAL_LN = _c("missing final layer norm", "the decoder's final layer norm (decoder.ln) is not applied before the "
                 "output projection")

# --- the logits
VOCAB_SHORT = _c("vocabulary one entry short", "the output projection has n_vocab - 1 rows: the last token (a "
                 "timestamp in tiny.en) can never be chosen and every consumer indexing by id is off")
EOT_IGNORED = _c("EOT ignored", "<|endoftext|> was suppressed or ignored where the reference ends the transcript")
LOGITS_SCALED = _c("logits scaled", "the logits are a constant multiple of the reference's (a temperature applied "
                   "inside the backend): greedy choices survive, probabilities (no_speech_prob, log-probabilities) "
                   "do not")
LOGITS_SHIFTED = _c("logits shifted by a constant", "every logit is the reference's plus one constant: the softmax, so "
                    "every probability and decision, is unchanged, but the logits themselves are not the model's")
LOG_PROBS = _c("log-probabilities returned instead of logits", "the logits are the reference's log_softmax (each row "
               "shifted by its log-sum-exp): greedy choices and probabilities survive, but anything that reads raw "
               "logits across rows or positions does not")
TOKENS_SUPPRESSED = _c("tokens suppressed inside the backend", "some logits are -inf where the reference's are finite "
                       "and every other logit agrees: the backend applies its own suppression")
NAN_LOGITS = _c("NaN logits with finite slots", "the logits hold NaN while every slot is finite: the output "
                "computation (final norm or projection) produced it, not an overflow of the cache")
FP16_OVERFLOW = _c("fp16 overflow", "inf appeared in the KV slots or logits where the reference's values are finite: "
                   "a float16 value overflowed (|x| > 65504)")

SCALED = _c("values scaled by a constant", "an array is a constant multiple of the reference's (the factor is in the "
            "evidence): a scale applied twice, or not at all")

# --- the encoder
NO_LN_POST = _c("encoder final layer norm missing", "the audio features are the encoder's last residual stream without "
                "ln_post: applying the reference's ln_post to them gives the reference's features")
CONV_STRIDE = _c("encoder convolution strides wrong", "the front end's two convolutions do not use strides 1 and 2")
CONV_PADDING = _c("encoder convolution padding wrong", "the front end's convolutions are not padded by one frame on "
                  "each side (the frames are shifted)")
NO_CONV_GELU = _c("GELU missing after the encoder convolutions", "the front end's convolutions are not followed by "
                  "GELU")
ENCODER_POSITION = _c("encoder positional embedding missing", "the encoder's sinusoidal positional embedding is not "
                      "added after the convolutions")
GELU_TANH = _c("GELU approximated with tanh", "GELU is computed with the tanh approximation instead of erf: a small "
               "numeric drift in every MLP and the front end")
