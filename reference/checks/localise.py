"""Where the first divergence is, read off what verify already compared: the window, the stage, and the part
of the model (encoder, cross projections, a decoder layer, the output), without running anything again.

The reasoning follows the data flow of the decoder. Layer i's self K/V are projections of the residual stream
entering layer i; cross K/V are projections of the audio features alone. So, at one stage:
- cross slots differ while the features agree: the cross projections (or their slots);
- layers 0..i-1's self K/V agree and layer i's do not: the stream entering layer i differs, so the bug is
  inside decoder layer i-1 after its K/V projections (attention, cross-attention, MLP), or in layer i's own
  attn_ln; where only one of layer i's K and V differs, their shared input agrees: that projection itself;
- every slot agrees but the logits do not: after the last layer's K/V projections (the rest of the last
  layer, the final layer norm, the output projection).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import kv as kvslots
from .compare import Compared, distance, scale_of

# the parts of the model a divergence can be localised to (mutants declare where they first show)
ENCODER = "encoder"
CROSS = "cross projections"
INPUT = "decoder input"  # the embeddings and layer 0's attn_ln: before any self K/V
PROJECTION = "K/V projection"  # one of a layer's key/value projections (the other agrees)
LAYER = "decoder layer"  # inside layer i after its K/V projections
OUTPUT = "output"  # after the last layer's K/V: the rest of the last layer, final norm, projection
START_ROWS = "start rows"  # prefill logits of positions before the last
PAST = "past positions"  # a step changed self K/V positions it was given
SHAPES = "shapes"  # a slot or the logits have another shape
ERROR = "candidate error"
LOGITS = "logits"  # only the logits differ, and not by a pattern of the layers (a step's token choice)


@dataclass
class Localisation:
    window: int
    part: str
    layer: int | None = None
    positions: list[int] = field(default_factory=list)  # the positions whose slots differ in that layer
    text: str = ""


def _differs(c: Compared | None, tolerance: float) -> bool:
    return c is not None and not c.within(tolerance)


def window_text(window: int, agreed_before: bool, same_stage_agreed: bool) -> str:
    if window == 0:
        return "window 0"
    text = f"window {window}; windows 0..{window - 1} agreed" if agreed_before else f"window {window}"
    if same_stage_agreed:
        text += " at this same stage: suspect state carried across windows (a cache, a position counter)"
    return text


def positions_differing(ref, cand, tolerance: float) -> list[int]:
    """The positions (axis 2 of a slot) where cand differs from ref by more than the slot's tolerance."""
    if ref.shape != cand.shape:
        return []
    limit = tolerance * scale_of(ref)
    return [p for p in range(ref.shape[2]) if distance(ref[:, :, p], cand[:, :, p]) > limit]


def localise(stage, n_layer: int, tolerance: float, agreed_before: bool, same_stage_agreed: bool,
             ref_kv: Sequence | None = None, cand_kv: Sequence | None = None) -> Localisation:
    """The part of the model the first divergent `stage` points to (see the module's docstring).

    ref_kv / cand_kv (numpy, optional) give per-position detail on the first differing layer."""
    where = window_text(stage.window, agreed_before, same_stage_agreed)
    if stage.error:
        return Localisation(stage.window, ERROR, text=f"{where}; the candidate's {stage.stage} call failed")
    if stage.stage == "encode":
        return Localisation(stage.window, ENCODER, text=f"{where}; the encoder (the audio features differ; the "
                            "decoder is then judged on the candidate's own features)")
    if stage.logits is not None and not stage.logits.same_shape:
        return Localisation(stage.window, SHAPES, text=f"{where}, {stage.stage} {stage.step}; the output "
                            f"projection: logits {stage.logits.shapes()}")
    slots = stage.slots
    shape_bad = [i for i, c in enumerate(slots) if c is not None and not c.same_shape]
    if shape_bad:
        i = shape_bad[0]
        return Localisation(stage.window, SHAPES, kvslots.slot_of(i)[0], text=f"{where}, {stage.stage} "
                            f"{stage.step}; slot {i} ({kvslots.slot_name(i)}) shape {slots[i].shapes()}")
    if stage.stage == "step" and ref_kv is not None and cand_kv is not None:
        past = _past_changed(stage, ref_kv, cand_kv, n_layer, tolerance)
        if past is not None:
            return Localisation(stage.window, PAST, kvslots.slot_of(past)[0], text=f"{where}, step {stage.step}; "
                                f"slot {past} ({kvslots.slot_name(past)}) changed positions the step was given "
                                "(the past self K/V): the cache bookkeeping, not the new position's computation")
    return _by_layer(stage, n_layer, tolerance, where, ref_kv, cand_kv)


def _past_changed(stage, ref_kv, cand_kv, n_layer: int, tolerance: float) -> int | None:
    """The first self slot whose positions before the newest differ (a step must return them unchanged)."""
    for i in kvslots.self_slots(n_layer):
        r, c = ref_kv[i], cand_kv[i]
        if c is None or r.shape != c.shape or r.shape[2] < 2:
            continue
        if distance(r[:, :, :-1], c[:, :, :-1]) > tolerance * scale_of(r):
            return i
    return None


def _by_layer(stage, n_layer: int, tolerance: float, where: str, ref_kv, cand_kv) -> Localisation:
    slots = stage.slots
    at = f"{where}, {stage.stage} {stage.step}"
    for layer in range(n_layer):
        key, value, ckey, cvalue = (slots[kvslots.slot_index(layer, k)] for k in kvslots.SlotKind)
        self_bad = [_differs(key, tolerance), _differs(value, tolerance)]
        if not any(self_bad):
            if _differs(ckey, tolerance) or _differs(cvalue, tolerance):
                which = " and ".join(n for n, c in (("key", ckey), ("value", cvalue)) if _differs(c, tolerance))
                return Localisation(stage.window, CROSS, layer, text=f"{at}; layer {layer}'s cross {which} (cross "
                                    "K/V read only the audio features, which agree): its cross projections or their "
                                    "slots")
            continue
        positions = _positions(layer, stage, ref_kv, cand_kv, tolerance, self_bad)
        if all(self_bad):
            if layer == 0:
                return Localisation(stage.window, INPUT, 0, positions, f"{at}; layer 0's self K and V both differ: "
                                    "the decoder's input (token or positional embedding) or layer 0's attn_ln")
            return Localisation(stage.window, LAYER, layer - 1, positions,
                                f"{at}; layers 0..{layer - 1}'s self K/V agree, layer {layer}'s do not: inside "
                                f"decoder layer {layer - 1} after its K/V projections (self-attention, "
                                f"cross-attention or MLP), or layer {layer}'s attn_ln")
        name = "key" if self_bad[0] else "value"
        other = "value" if self_bad[0] else "key"
        return Localisation(stage.window, PROJECTION, layer, positions,
                            f"{at}; layer {layer}'s self {name} differs and its {other} agrees (same input): "
                            f"layer {layer}'s {name} projection or its slot")
    if stage.logits is not None and not stage.logits.within(tolerance):
        return Localisation(stage.window, OUTPUT, n_layer - 1, text=f"{at}; every slot agrees, the logits do not: "
                            f"after the last layer's K/V projections (the rest of decoder layer {n_layer - 1}, the "
                            "final layer norm or the output projection)")
    if any(not c.within(tolerance) for c in stage.start_rows):
        return Localisation(stage.window, START_ROWS, text=f"{at}; the last start position agrees, an earlier one "
                            "does not: the logits of the start positions before the last")
    return Localisation(stage.window, LOGITS, text=f"{at}; the token choice (every number within the tolerance)")


def _positions(layer: int, stage, ref_kv, cand_kv, tolerance: float, self_bad: list[bool]) -> list[int]:
    if ref_kv is None or cand_kv is None:
        return []
    i = kvslots.slot_index(layer, kvslots.SlotKind.SELF_KEY if self_bad[0] else kvslots.SlotKind.SELF_VALUE)
    return positions_differing(ref_kv[i], cand_kv[i], tolerance) if cand_kv[i] is not None else []
