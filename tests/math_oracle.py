"""An independent float64 NumPy transcription of docs/math.md: the loss and its analytic gradient.

It shares no code with symmpo: loops over sequences and positions, numpy's logaddexp, and the
formulas of docs/math.md#sequence-log-probs, docs/math.md#the-loss and docs/math.md#gradients
written out term by term.
"""

from __future__ import annotations

import numpy as np


def log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def sigmoid(z):
    return np.exp(log_sigmoid(z))


def sequence_logps(logits, labels, average=False, ignore_index=-100):
    """logits (N, T, V), labels (N, T) -> s (N,), n (N,), lse (N, T) float64."""
    logits = np.asarray(logits, dtype=np.float64)
    n_rows, seq_len, _ = logits.shape
    s = np.zeros(n_rows)
    n = np.zeros(n_rows)
    lse = np.zeros((n_rows, seq_len))
    for i in range(n_rows):
        for t in range(seq_len - 1):
            y = labels[i, t + 1]
            if y == ignore_index:
                continue
            row = logits[i, t]
            m = row.max()
            lse[i, t] = m + np.log(np.exp(row - m).sum())
            s[i] += row[y] - lse[i, t]
            n[i] += 1
    if average:
        s = s / np.maximum(n, 1)
    return s, n, lse


def symmpo(
    policy,
    ref,
    beta=0.1,
    beta_contrast=None,
    pair_weight=0.5,
    margin_weight=1e-4,
    anchor_weight=1.0,
    delta=0.0,
):
    """policy, ref (5, B) -> (mean loss, dL/ds (5, B)) with the batch mean's 1/B included
    (docs/math.md#the-loss, docs/math.md#batch-mean)."""
    bc = beta if beta_contrast is None else beta_contrast
    policy = np.asarray(policy, np.float64)
    ref = np.asarray(ref, np.float64)
    r = policy - ref
    batch = r.shape[1]
    z_dpo = beta * (r[0] - r[1])
    z_p1 = beta * (r[0] - r[2])
    z_p2 = beta * (r[4] - r[3])
    mgn = (r[0] - r[2]) - (r[4] - r[3])
    a1 = beta * r[0] - delta
    a2 = bc * r[4] - delta
    loss = (
        -log_sigmoid(z_dpo)
        + pair_weight * (-log_sigmoid(z_p1) - log_sigmoid(z_p2))
        + margin_weight * mgn**2
        + anchor_weight * (-log_sigmoid(a1) - log_sigmoid(a2))
    )
    g = np.zeros_like(r)
    g[0] = (
        -beta * sigmoid(-z_dpo)
        - pair_weight * beta * sigmoid(-z_p1)
        + 2 * margin_weight * mgn
        - anchor_weight * beta * sigmoid(-a1)
    )
    g[1] = beta * sigmoid(-z_dpo)
    g[2] = pair_weight * beta * sigmoid(-z_p1) - 2 * margin_weight * mgn
    g[3] = pair_weight * beta * sigmoid(-z_p2) + 2 * margin_weight * mgn
    g[4] = (
        -pair_weight * beta * sigmoid(-z_p2)
        - 2 * margin_weight * mgn
        - anchor_weight * bc * sigmoid(-a2)
    )
    return loss.mean(), g / batch


def logits_grad(logits, labels, grad_logps, n, lse, average=False, ignore_index=-100):
    """docs/math.md#gradients: dL/dlogits[t, v] = g_k (1[v == y] - softmax_v) at targets, 0
    elsewhere."""
    logits = np.asarray(logits, dtype=np.float64)
    grad = np.zeros_like(logits)
    n_rows, seq_len, _ = logits.shape
    for i in range(n_rows):
        g = grad_logps[i] / max(n[i], 1) if average else grad_logps[i]
        for t in range(seq_len - 1):
            y = labels[i, t + 1]
            if y == ignore_index:
                continue
            grad[i, t] = -g * np.exp(logits[i, t] - lse[i, t])
            grad[i, t, y] += g
    return grad


def symmpo_from_logits(logits, labels, ref_logps, average=False, ignore_index=-100, **weights):
    """(5B, T, V) logits -> (loss, dL/dlogits) per docs/math.md."""
    s, n, lse = sequence_logps(logits, labels, average, ignore_index)
    batch = len(s) // 5
    loss, g = symmpo(s.reshape(5, batch), np.asarray(ref_logps).reshape(5, batch), **weights)
    return loss, logits_grad(logits, labels, g.reshape(-1), n, lse, average, ignore_index)
