"""How one array a candidate returned compares with the reference's: shapes, dtypes, absolute and relative
differences, the first non-finite value. Every number `verify` reports about an array comes from here."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np

DEFAULT_TOLERANCE = 1e-3  # relative, on features, logits and slots: see verify.Tolerance


def positive_tolerance(text: str) -> float:
    """The type of --tolerance options: a finite number > 0 (nan and inf would switch every check off)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number > 0")
    return value

# Beyond this fraction of its scale a difference is not rounding, even at fp16: the values are wrong. (An fp32
# backend differs by ~1e-5, tanh-GELU by ~5e-3, fp16 activations by <2e-2; a wrong operation by O(0.1..1).)
SMALL_DRIFT = 0.05


@dataclass
class Compared:
    """One candidate array against the reference's."""

    name: str  # "audio features", "logits", "slot 4 (1.self.key)", ...
    ref_shape: list[int]
    cand_shape: list[int]
    ref_dtype: str
    cand_dtype: str
    max_abs: float | None  # max |cand - ref|; None where the shapes differ
    scale: float  # max |reference value| (at least 1): what max_abs is measured against
    nonfinite: str = ""  # the candidate's first NaN / inf: "" if none
    at: list[int] | None = None  # the index of the largest difference
    values: tuple[float, float] | None = None  # (candidate, reference) there

    @property
    def relative(self) -> float | None:
        return None if self.max_abs is None else self.max_abs / self.scale

    @property
    def same_shape(self) -> bool:
        return self.ref_shape == self.cand_shape

    def within(self, tolerance: float) -> bool:
        return self.max_abs is not None and not self.nonfinite and self.max_abs <= tolerance * self.scale

    def shapes(self) -> str:
        """Both shapes, for a mismatch message."""
        return f"{self.cand_shape} vs reference {self.ref_shape}"

    def summary(self) -> str:
        """One line: the difference (absolute and relative) or both shapes, the dtypes where they differ."""
        if self.max_abs is None:
            text = f"shape {self.shapes()}"
        else:
            text = f"max |Δ| {self.max_abs:.3g} ({self.relative:.2g} of scale {self.scale:.3g})"
            if self.max_abs and self.at is not None:
                text += f" at {self.at} ({self.values[0]:.4g} vs {self.values[1]:.4g})"
        if self.cand_dtype != self.ref_dtype:
            text += f"; dtype {self.cand_dtype} vs reference {self.ref_dtype}"
        if self.nonfinite:
            text += f"; {self.nonfinite}"
        return text


def differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| elementwise (same shapes), equal infinities (and NaN beside NaN) 0, any other non-finite inf."""
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|, counting equal infinities as equal and any other non-finite difference as inf."""
    if a.shape != b.shape:
        return float("inf")
    diff = differences(a, b)
    return float(diff.max()) if diff.size else 0.0


def scale_of(x: np.ndarray) -> float:
    """max |finite value|, at least 1: relative differences of near-zero arrays stay meaningful."""
    finite = np.abs(x[np.isfinite(x)])
    return float(max(1.0, finite.max())) if finite.size else 1.0


def first_nonfinite(x: np.ndarray, allow_neg_inf: bool = False) -> str:
    """'NaN at [0, 2, 5, 17] (3 of 36864 values)' for the first NaN/inf in C order; '' if every value is finite.

    allow_neg_inf: -inf is how a backend may legitimately suppress a token in its logits (judged by distance)."""
    if not np.issubdtype(x.dtype, np.floating):
        return ""
    bad = np.isnan(x) | np.isposinf(x) if allow_neg_inf else ~np.isfinite(x)
    count = int(bad.sum())
    if not count:
        return ""
    index = np.unravel_index(int(np.argmax(bad.ravel())), x.shape)
    value = x[index]
    kind = "NaN" if np.isnan(value) else ("+inf" if value > 0 else "-inf")
    return f"{kind} at {[int(i) for i in index]} ({count} of {x.size} values non-finite)"


def compare(name: str, ref: np.ndarray, cand: np.ndarray, allow_neg_inf: bool = False) -> Compared:
    ref, cand = np.asarray(ref), np.asarray(cand)
    c = Compared(name, list(ref.shape), list(cand.shape), str(ref.dtype), str(cand.dtype), None, scale_of(ref),
                 first_nonfinite(cand, allow_neg_inf))
    if ref.shape == cand.shape:
        diff = differences(ref, cand)
        c.max_abs = float(diff.max()) if diff.size else 0.0
        if diff.size:
            index = np.unravel_index(int(np.argmax(diff)), diff.shape)
            c.at, c.values = [int(i) for i in index], (float(cand[index]), float(ref[index]))
    return c


def unreadable(name: str, ref: np.ndarray, problem: str) -> Compared:
    """A candidate array that could not be read as numpy (missing, or not an array): a shape mismatch."""
    return Compared(name, list(ref.shape), [], str(ref.dtype), f"unreadable ({problem})", None, scale_of(ref))


def ratio(ref: np.ndarray, cand: np.ndarray) -> float:
    """The least-squares factor c of cand ≈ c * ref (nan where the reference is all zero or values are not finite)."""
    r, c = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    denominator = float(r @ r)
    if denominator == 0 or not (np.all(np.isfinite(r)) and np.all(np.isfinite(c))):
        return float("nan")
    return float(r @ c) / denominator


def close(ref: np.ndarray, cand: np.ndarray, tolerance: float) -> bool:
    """Same shape and within `tolerance` of the reference's scale: the test every signature rule uses."""
    ref, cand = np.asarray(ref), np.asarray(cand)
    return ref.shape == cand.shape and distance(ref, cand) <= tolerance * scale_of(ref)
