"""Input checks shared by every entry point: each error names the argument, what it got and
what it expects. Shapes, types and devices are checked before any computation; values are
checked here too, except on symmpo_loss's Triton path, whose kernels count bad values as they
read them (``raise_invalid_values`` then finds and names them)."""

from __future__ import annotations

import torch

from .reference import KIND_NAMES, NUM_KINDS

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def require_tensor(name: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def flatten_kinds(
    name: str, tensor: torch.Tensor, trailing: int, kind_major: bool = True
) -> torch.Tensor:
    """Accept (5B, *trailing) or (5, B, *trailing); return the kind-major (5B, *trailing) view.

    With ``kind_major=False`` any (N, *trailing) with N >= 1 is accepted as is.
    """
    if not kind_major:
        if tensor.dim() != trailing + 1 or tensor.shape[0] == 0:
            raise ValueError(
                f"{name} must have shape (N, ...) with {trailing + 1} dimensions and N >= 1, "
                f"got {tuple(tensor.shape)}"
            )
        return tensor
    if tensor.dim() == trailing + 2:
        if tensor.shape[0] != NUM_KINDS:
            raise ValueError(
                f"{name} of shape {tuple(tensor.shape)} looks like (5, B, ...) but its first "
                f"dimension is {tensor.shape[0]}, expected {NUM_KINDS} (one per sequence kind)"
            )
        return tensor.flatten(0, 1)
    if tensor.dim() != trailing + 1:
        raise ValueError(
            f"{name} must have {trailing + 1} dimensions (5B, ...) or {trailing + 2} "
            f"(5, B, ...), got shape {tuple(tensor.shape)}"
        )
    rows = tensor.shape[0]
    if rows == 0 or rows % NUM_KINDS:
        raise ValueError(
            f"{name} has {rows} rows; expected a positive multiple of {NUM_KINDS} "
            f"(5 sequences per example, kind-major: {', '.join(KIND_NAMES)})"
        )
    return tensor


def check_sequences(name: str, tensor, kind_major: bool = True, feature: str = "V") -> torch.Tensor:
    """(5B, T, F) or (5, B, T, F) floating per-position tensor (logits: F = V, hidden states:
    F = H) -> the (5B, T, F) view."""
    require_tensor(name, tensor)
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {tensor.dtype}")
    tensor = flatten_kinds(name, tensor, trailing=2, kind_major=kind_major)
    if tensor.shape[1] == 0 or tensor.shape[2] == 0:
        raise ValueError(
            f"{name} of shape {tuple(tensor.shape)} has an empty T or {feature} dimension"
        )
    return tensor


def check_labels(
    labels, rows: int, seq_len: int, vocab: int, ignore_index: int, kind_major: bool = True
) -> torch.Tensor:
    """(5B, T) or (5, B, T) integer labels -> (5B, T) int64; their values: ``check_values``."""
    require_tensor("labels", labels)
    if labels.dtype not in INTEGER_DTYPES:
        raise TypeError(
            f"labels must be an integer tensor (int64 token ids, {ignore_index} to ignore), "
            f"got {labels.dtype}"
        )
    labels = flatten_kinds("labels", labels, trailing=1, kind_major=kind_major)
    if tuple(labels.shape) != (rows, seq_len):
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match the logits: expected "
            f"({rows}, {seq_len}) (rows and sequence length of logits)"
        )
    return labels.long()


def check_values(
    labels: torch.Tensor,
    vocab: int,
    ignore_index: int,
    allow_empty: bool,
    kind_major: bool = True,
    **must_be_finite: torch.Tensor | None,
) -> None:
    """Every label in [0, vocab) or ignore_index; a target in every row unless ``allow_empty``;
    the named tensors finite. One device sync when all is well (a few flags copied to the
    host); the error messages are worked out only when something is wrong."""
    is_target = labels != ignore_index
    flags = [_out_of_vocab(labels, is_target, vocab).any()]
    if not allow_empty:
        flags.append(~is_target[:, 1:].any(-1).all())
    finite = {name: t for name, t in must_be_finite.items() if t is not None}
    flags += [~torch.isfinite(t).all() for t in finite.values()]
    if any(torch.stack(flags).tolist()):
        raise_invalid_values(labels, vocab, ignore_index, allow_empty, kind_major, **finite)


def _out_of_vocab(labels: torch.Tensor, is_target: torch.Tensor, vocab: int) -> torch.Tensor:
    """Targets whose label lies outside [0, vocab)."""
    return is_target & ((labels < 0) | (labels >= vocab))


def raise_invalid_values(
    labels: torch.Tensor,
    vocab: int,
    ignore_index: int,
    allow_empty: bool,
    kind_major: bool = True,
    scored: tuple[str, torch.Tensor] | None = None,
    **must_be_finite: torch.Tensor | None,
) -> None:
    """Find what ``check_values`` (or a kernel's validation flags) caught and raise a
    ValueError naming it; called only once something is known to be wrong. ``scored`` =
    (name, log-probs): reference log-probs scored from the argument ``name`` (ref_logits),
    which must be finite too (``check_scored``)."""
    is_target = labels != ignore_index
    finite = {name: t for name, t in must_be_finite.items() if t is not None}
    bad = _out_of_vocab(labels, is_target, vocab)
    if bool(bad.any()):
        row, pos = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"labels[{row}, {pos}] = {int(labels[row, pos])} is outside [0, {vocab}) "
            f"(the vocabulary of the logits) and is not ignore_index={ignore_index}"
        )
    empty = (~is_target[:, 1:].any(-1)).nonzero().flatten()
    if not allow_empty and empty.numel():
        where = ", ".join(_describe_row(int(r), labels.shape[0], kind_major) for r in empty[:5])
        raise ValueError(
            f"{empty.numel()} sequence(s) have no target token (every label after the first "
            f"is ignore_index={ignore_index}): {where}; pass allow_empty=True to score them 0"
        )
    for name, t in finite.items():  # per-row log-probs, (N,) or (5, B): flat is kind-major
        bad_rows = (~torch.isfinite(t.flatten())).nonzero()
        if bad_rows.numel():
            where = _describe_row(int(bad_rows[0]), t.numel(), kind_major)
            raise ValueError(
                f"{name} holds non-finite values (NaN or inf), first at {where}; they must "
                "be finite"
            )
    if scored is not None:
        check_scored(*scored, kind_major=kind_major)
    raise RuntimeError(
        "symmpo's input checks flagged the labels or the reference log-probs, but no bad value "
        "was found on a second look; please report this with the inputs"
    )


def check_scored(name: str, logps: torch.Tensor, kind_major: bool = True) -> None:
    """Reference log-probs scored from the argument ``name`` (ref_logits) must be finite, as
    given ref_logps must: NaN or inf in those logits at a target position raises, naming the
    row (one device sync). Non-target positions are never read."""
    bad_rows = (~torch.isfinite(logps.flatten())).nonzero()
    if bad_rows.numel():
        row = int(bad_rows[0])
        raise ValueError(
            f"{name} give a non-finite reference log-prob (NaN or inf) for "
            f"{_describe_row(row, logps.numel(), kind_major)}: {name} must be finite at the "
            "target positions (those whose next label is not ignore_index; others are ignored)"
        )


def check_inplace_grad(name: str, tensor: torch.Tensor) -> None:
    """``inplace_grad`` writes each element's gradient into the element's own memory: refuse a
    tensor whose elements may share memory (an expand() or other stride-0 view), whose
    gradients would overwrite one another."""
    if _may_overlap(tensor):
        raise ValueError(
            f"inplace_grad=True needs {name} whose elements do not share memory, got a view "
            f"of shape {tuple(tensor.shape)} with strides {tuple(tensor.stride())} (from "
            f"expand() or as_strided?): the gradient of each element would overwrite the "
            f"others'; pass inplace_grad=False or {name}.contiguous()"
        )


def _may_overlap(tensor: torch.Tensor) -> bool:
    """True when two elements may share memory (conservative where torch cannot tell)."""
    has_overlap = getattr(torch, "_debug_has_internal_overlap", None)
    if has_overlap is not None:
        verdict = has_overlap(tensor)  # 0: no, 1: yes, 2: too hard (e.g. a slice: not dense)
        if verdict in (0, 1):
            return verdict == 1
    # Sorted by stride, each dimension must step past everything the smaller ones reach.
    reach = 0
    for stride, size in sorted(zip(tensor.stride(), tensor.shape, strict=True)):
        if size > 1:
            if stride <= reach:
                return True
            reach += stride * (size - 1)
    return False


def check_logps(
    name: str, logps, rows: int | None = None, num_kinds: int = NUM_KINDS, finite: bool = True
) -> torch.Tensor:
    """(num_kinds*B,) or (num_kinds, B) floating log-probs -> the (num_kinds, B) view; with
    ``finite`` NaN or inf raises (one device sync)."""
    require_tensor(name, logps)
    if not logps.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {logps.dtype}")
    shape = tuple(logps.shape)
    if logps.dim() == 1:
        if logps.shape[0] == 0 or logps.shape[0] % num_kinds:
            raise ValueError(
                f"{name} of shape {tuple(logps.shape)} must have a positive multiple of "
                f"{num_kinds} entries (kind-major), or shape ({num_kinds}, B)"
            )
        logps = logps.view(num_kinds, -1)
    elif logps.dim() != 2 or logps.shape[0] != num_kinds or logps.shape[1] == 0:
        raise ValueError(
            f"{name} must have shape ({num_kinds}*B,) or ({num_kinds}, B), got {tuple(logps.shape)}"
        )
    if rows is not None and logps.numel() != rows:
        raise ValueError(
            f"{name} of shape {shape} does not match the batch: expected "
            f"({rows},) or ({num_kinds}, {rows // num_kinds})"
        )
    if finite and not bool(torch.isfinite(logps).all()):
        raise ValueError(f"{name} holds non-finite values (NaN or inf); they must be finite")
    return logps


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")


def _describe_row(row: int, rows: int, kind_major: bool) -> str:
    if not kind_major:
        return f"row {row}"
    batch = rows // NUM_KINDS
    return f"row {row} ({KIND_NAMES[row // batch]} of example {row % batch})"
