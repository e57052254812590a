"""The public loss functions: validate, pick an implementation, assemble the output.

The math they compute: docs/math.md (sequence log-probs, the loss, the baselines, gradients,
metrics).
"""

from __future__ import annotations

import torch

from . import reference
from .config import SymMPOConfig, real_option, resolve_config
from .implementations import fused_symmpo, resolve_impl, score_reference, score_sequences
from .output import PreferenceOutput, SymMPOOutput, build_symmpo_output, output_from_terms
from .validation import (
    check_inplace_grad,
    check_labels,
    check_logps,
    check_same_device,
    check_scored,
    check_sequences,
    check_values,
    raise_invalid_values,
)


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    average: bool = False,
    ignore_index: int = -100,
    allow_empty: bool = False,
    impl: str = "auto",
    inplace_grad: bool = False,
) -> torch.Tensor:
    """Per-sequence log-probability of the labels, differentiable with respect to ``logits``.

    s = sum over target positions t of logits[t, labels[t+1]] - logsumexp(logits[t]), divided
    by the target count when ``average`` (docs/math.md#sequence-log-probs). logits (N, T, V)
    fp32/bf16/fp16, labels (N, T) integer aligned with input_ids (``ignore_index`` marks
    non-targets) -> (N,) float32.
    ``inplace_grad`` (Triton only; see ``symmpo_loss``) writes the gradient into ``logits``.
    Non-target positions are never read: NaN or inf there changes no value and no gradient.
    """
    logits = check_sequences("logits", logits, kind_major=False)
    if inplace_grad:
        check_inplace_grad("logits", logits)
    rows, seq_len, vocab = logits.shape
    labels = check_labels(labels, rows, seq_len, vocab, ignore_index, kind_major=False)
    check_same_device(logits=logits, labels=labels)
    check_values(labels, vocab, ignore_index, allow_empty, kind_major=False)
    impl = resolve_impl(impl, logits)
    return score_sequences(logits, labels, average, ignore_index, impl, inplace_grad)


def symmpo_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ref_logps: torch.Tensor | None = None,
    *,
    ref_logits: torch.Tensor | None = None,
    config: SymMPOConfig | None = None,
    impl: str = "auto",
    inplace_grad: bool = False,
    immediate_checks: bool = False,
    **overrides,
) -> SymMPOOutput:
    """SymMPO loss of a kind-major batch of five sequences per example (docs/math.md#the-loss).

    Args:
        logits: (5B, T, V) or (5, B, T, V) policy logits, fp32/bf16/fp16; row k*B + i is
            sequence k of example i (chosen, rejected, contrast_on_image, chosen_on_contrast,
            contrast).
        labels: (5B, T) or (5, B, T) integer labels aligned with input_ids; position t of the
            logits predicts labels[t+1]; ``ignore_index`` marks prompt, image and padding.
        ref_logps: (5B,) or (5, B) reference sequence log-probs, or
        ref_logits: reference logits shaped like ``logits``, scored without gradient.
        config: a SymMPOConfig; keyword ``overrides`` (beta=..., pair_weight=...) replace fields.
        impl: "auto" (Triton on CUDA tensors, torch otherwise), "triton" or "torch". "triton"
            on CPU tensors runs under Triton's interpreter when TRITON_INTERPRET=1 was set
            before the kernels were imported.
        inplace_grad: Triton only (the torch path ignores it): backward writes dL/dlogits into
            the logits buffer instead of a second (5B, T, V) tensor. The logits are destroyed by
            backward: nothing may read them afterwards (another loss, a second backward).
            Logits whose elements share memory (an expand() view) are refused on every path.

    The Triton path reads the logits once forward and once backward, keeps 4 bytes (the
    float32 logsumexp) per position, and writes the gradient once.

    Non-target positions of logits and ref_logits are never read: NaN or inf there changes no
    value and no gradient (exactly 0 there). Invalid values (a label outside the vocabulary, a
    sequence without a target unless allow_empty, non-finite ref_logps, ref_logits that give
    a non-finite reference log-prob): the torch path raises ValueError at the call. The Triton
    path makes no host sync, forward or backward (eager calls take an autograd Function, which
    a CUDA graph can capture; under ``torch.compile(fullgraph=True)`` it is the custom op
    ``torch.ops.symmpo.fused_loss``, compiled without a graph break, same kernels): its kernels
    check the values as they read them, every value of the output (and the gradient) is NaN,
    and the ValueError is raised where the caller next looks: ``out.metrics()`` or
    ``out.raise_if_invalid()`` (one sync, which a trainer already makes to log).
        immediate_checks: Triton only: check at once instead, as the torch path does (one sync
            after the forward without gradients; with gradients the backward raises before
            writing the logits' gradient, so ``inplace_grad``'s logits stay intact).

    Returns a SymMPOOutput whose ``loss`` is the differentiable batch mean.
    """
    config = resolve_config(config, overrides)
    logits = check_sequences("logits", logits)
    if inplace_grad:
        check_inplace_grad("logits", logits)
    rows, seq_len, vocab = logits.shape
    labels = check_labels(labels, rows, seq_len, vocab, config.ignore_index)
    if (ref_logps is None) == (ref_logits is None):
        raise ValueError(
            "pass exactly one reference: ref_logps (5B,) precomputed log-probs or ref_logits "
            f"shaped like logits; got ref_logps={_describe(ref_logps)}, "
            f"ref_logits={_describe(ref_logits)}"
        )
    if ref_logits is not None:
        ref_logits = check_sequences("ref_logits", ref_logits)
        if ref_logits.shape != logits.shape:
            raise ValueError(
                f"ref_logits of shape {tuple(ref_logits.shape)} must match logits, "
                f"expected {tuple(logits.shape)}"
            )
    else:
        ref_logps = check_logps("ref_logps", ref_logps, rows=rows, finite=False)
    check_same_device(logits=logits, labels=labels, ref_logps=ref_logps, ref_logits=ref_logits)
    impl = resolve_impl(impl, logits)
    given_ref_logps = ref_logps
    if impl == "torch":
        check_values(labels, vocab, config.ignore_index, config.allow_empty, ref_logps=ref_logps)

    if ref_logits is not None:
        ref_logps = score_reference(
            ref_logits, labels, config.average_log_prob, config.ignore_index, impl
        )
        if impl == "torch":  # after check_values: bad labels must not be gathered
            check_scored("ref_logits", ref_logps)
    ref_logps = ref_logps.reshape(5, -1)
    if impl == "torch":
        policy = score_sequences(logits, labels, config.average_log_prob, config.ignore_index, impl)
        return _symmpo_output(policy.view(5, -1), ref_logps, config)

    # Triton: the kernels check the values as they read them (labels outside the vocabulary
    # are skipped and counted) and make every output NaN when the input is invalid. Reading
    # their flags is a host sync: by default it waits for the caller (out.metrics() or
    # out.raise_if_invalid()); with immediate_checks it happens here without gradients, and
    # with gradients right before the backward's launch (raising before any gradient).
    # The reference log-probs are checked as read, whether given or scored from ref_logits
    # (then the closure below holds those (5B,) scores, never ref_logits themselves).
    checked_ref = None if given_ref_logps is None else given_ref_logps.float()  # as read
    scored = None if ref_logits is None else ("ref_logits", ref_logps)

    def raise_if_invalid(flags: torch.Tensor) -> None:
        bad_labels, empty, bad_ref = flags.tolist()
        if bad_labels or (empty and not config.allow_empty) or bad_ref:
            raise_invalid_values(
                labels,
                vocab,
                config.ignore_index,
                config.allow_empty,
                scored=scored,
                ref_logps=checked_ref,
            )

    if not immediate_checks:
        result = fused_symmpo(logits, labels, ref_logps, config, inplace_grad)
        return output_from_terms(result, ref_logps.float(), on_invalid=raise_if_invalid)
    in_backward = torch.is_grad_enabled() and logits.requires_grad
    result = fused_symmpo(
        logits,
        labels,
        ref_logps,
        config,
        inplace_grad,
        check_in_backward=raise_if_invalid if in_backward else None,
    )
    if not in_backward:
        raise_if_invalid(result.flags)
    return output_from_terms(result, ref_logps.float())


def symmpo_loss_from_logps(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    config: SymMPOConfig | None = None,
    **overrides,
) -> SymMPOOutput:
    """The SymMPO loss from sequence log-probs, for trainers that score sequences themselves
    (docs/math.md#the-loss; the gradient into policy_logps: docs/math.md#gradients).

    policy_logps and ref_logps: (5B,) kind-major or (5, B); gradients flow into policy_logps.
    """
    config = resolve_config(config, overrides)
    policy_logps = check_logps("policy_logps", policy_logps)
    ref_logps = check_logps("ref_logps", ref_logps, rows=policy_logps.numel())
    check_same_device(policy_logps=policy_logps, ref_logps=ref_logps)
    return _symmpo_output(policy_logps, ref_logps, config)


def dpo_loss(
    policy_logps: torch.Tensor, ref_logps: torch.Tensor, *, beta: float = 0.1
) -> PreferenceOutput:
    """DPO: -log sigmoid(beta((s_w - s_w^ref) - (s_l - s_l^ref))), batch mean.

    See docs/math.md#baselines.

    policy_logps, ref_logps: (2B,) kind-major or (2, B), rows (chosen, rejected).
    """
    beta = _check_beta(beta)
    policy_logps = check_logps("policy_logps", policy_logps, num_kinds=2)
    ref_logps = check_logps("ref_logps", ref_logps, rows=policy_logps.numel(), num_kinds=2)
    ref_logps = ref_logps.to(policy_logps.dtype).detach()
    losses, z = reference.dpo_terms(policy_logps, ref_logps, beta)
    return _preference_output(losses, {"dpo": losses}, {"dpo": z}, beta, policy_logps, ref_logps)


def mdpo_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    cond_weight: float = 1.0,
    anchor_weight: float = 1.0,
) -> PreferenceOutput:
    """mDPO (Wang et al. 2024): L_dpo + cond_weight L_cond + anchor_weight L_anc, batch mean
    (docs/math.md#baselines).

    policy_logps, ref_logps: (3B,) kind-major or (3, B), rows (chosen, rejected, chosen on the
    corrupted image); L_cond = -log sig(beta(r0 - r0c)), L_anc = -log sig(beta r0).
    """
    beta = _check_beta(beta)
    cond_weight = real_option("mdpo_loss's cond_weight", cond_weight, ">= 0")
    anchor_weight = real_option("mdpo_loss's anchor_weight", anchor_weight, ">= 0")
    policy_logps = check_logps("policy_logps", policy_logps, num_kinds=3)
    ref_logps = check_logps("ref_logps", ref_logps, rows=policy_logps.numel(), num_kinds=3)
    ref_logps = ref_logps.to(policy_logps.dtype).detach()
    losses, dpo, cond, anchor, z_dpo, z_cond = reference.mdpo_terms(
        policy_logps, ref_logps, beta, cond_weight, anchor_weight
    )
    return _preference_output(
        losses,
        {"dpo": dpo, "cond": cond, "anchor": anchor},
        {"dpo": z_dpo, "cond": z_cond},
        beta,
        policy_logps,
        ref_logps,
    )


def _symmpo_output(policy_logps, ref_logps, config: SymMPOConfig) -> SymMPOOutput:
    """The torch path: autograd through the eager terms."""
    ref_logps = ref_logps.to(policy_logps.dtype).detach()
    t = reference.symmpo_terms(policy_logps, ref_logps, config)
    terms = torch.stack([t.dpo, t.pair, t.margin, t.anchor]).detach()
    z = torch.stack([t.z_dpo, t.z_p1, t.z_p2]).detach()
    return build_symmpo_output(
        t.loss.mean(), t.loss.detach(), terms, z, policy_logps, ref_logps, config
    )


def _preference_output(losses, terms, z, beta, policy_logps, ref_logps) -> PreferenceOutput:
    return PreferenceOutput(
        loss=losses.mean(),
        per_example_loss=losses.detach(),
        terms={k: v.detach().mean() for k, v in terms.items()},
        accuracies={k: (v.detach() > 0).float().mean() for k, v in z.items()},
        reward_margins={k: v.detach().mean() for k, v in z.items()},
        rewards=beta * (policy_logps.detach() - ref_logps),
    )


def _check_beta(beta) -> float:
    """beta as a Python float; SymMPOConfig checks it, so the message is identical."""
    return SymMPOConfig(beta=beta).beta


def _describe(value) -> str:
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    return type(value).__name__
