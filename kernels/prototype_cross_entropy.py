"""Fused prototype cross-entropy: the DINO / iBOT loss straight from features and prototypes.

Student logits s[i, b, k] = xs[i, b] . ws[k] / Ts (S student crops, B rows, K prototypes) and the factored teacher
targets P[j, b, k] = exp(xt[j, b] . wt[k] / Tt + a[k] + bt[j, b]) (T target crops; see fastvit.ops.prototype_targets)
are recomputed tile by tile: a program computes one [BLOCK_B, BLOCK_K] tile of s with tl.dot and the matching tiles
of P, so the [rows, K] logits never exist in memory (the fused linear cross-entropy pattern of Liger-Kernel, here
with soft, factored targets and row weights).

    forward  grid (S * cdiv(B, BLOCK_B), cdiv(K, BLOCK_K)): per tile the online-logsumexp partials of s (max, sum of
             exp) and, per target crop j, sum_k P * s and sum_k P; the host folds the K-tiles together (tiny).
    dX       grid (S * cdiv(B, BLOCK_B), SPLIT): each program walks every SPLIT-th K-tile and accumulates
             g_s @ ws [BLOCK_B, D] with g_s = (csum * softmax(s) - sum_j coef_j P_j) / Ts; partials summed on the host.
    dW       grid (cdiv(K, BLOCK_K),): each program owns a K-tile and walks all student rows: g_s^T @ xs [BLOCK_K, D].
coef[i, j, b] = dL[i, j] * row_weight[b], csum[i, b] = sum_j coef[i, j, b] * sum_k P[j, b, k].
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _tile_dot(
    x_ptr, rows, mask_r, w_ptr, offs_k, mask_k, D, DC: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr
):
    """x[rows] @ w[offs_k]^T as an fp32 [len(rows), len(offs_k)] tile (rows of D contiguous values), DC columns of
    D at a time so that the operand tiles stay small whatever D is."""
    acc = tl.zeros([rows.shape[0], offs_k.shape[0]], tl.float32)
    for d0 in range(0, D, DC):
        offs_d = d0 + tl.arange(0, DC)
        mask_d = offs_d < D
        x = tl.load(x_ptr + rows[:, None] * D + offs_d[None, :], mask=mask_r[:, None] & mask_d[None, :], other=0.0)
        w = tl.load(w_ptr + offs_k[:, None] * D + offs_d[None, :], mask=mask_k[:, None] & mask_d[None, :], other=0.0)
        if UPCAST:  # the interpreter multiplies raw bf16 bits
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc += tl.dot(x, tl.trans(w), input_precision=PREC)
    return acc


@triton.jit
def _targets_tile(xt_ptr, wt_ptr, a, bt_ptr, j, offs_b, mask_b, offs_k, mask_k, B, D, inv_tt, DC, UPCAST, PREC):
    """P[j, offs_b, offs_k] (fp32, 0 outside the masks)."""
    rows = B.to(tl.int64) * j + offs_b  # j is a Python int in the interpreter
    t = _tile_dot(xt_ptr, rows, mask_b, wt_ptr, offs_k, mask_k, D, DC, UPCAST, PREC)
    bt = tl.load(bt_ptr + rows, mask=mask_b, other=0.0)
    return tl.where(mask_b[:, None] & mask_k[None, :], tl.exp(t * inv_tt + a[None, :] + bt[:, None]), 0.0)


@triton.jit
def _pce_fwd_kernel(
    xs_ptr,  # [S * B, D] student features, contiguous
    ws_ptr,  # [K, D] student prototypes, contiguous, dtype of xs
    xt_ptr,  # [T * B, D] teacher features, contiguous
    wt_ptr,  # [K, D] teacher prototypes, contiguous, dtype of xt
    a_ptr,  # [K] fp32 per-prototype log scale of the targets
    bt_ptr,  # [T * B] fp32 per-row log scale of the targets
    m_ptr,  # [NK, S * B] fp32 out: max over the K-tile of s
    l_ptr,  # [NK, S * B] fp32 out: sum over the K-tile of exp(s - max)
    cross_ptr,  # [NK, S, T, B] fp32 out: sum over the K-tile of P[j] * s[i]
    psum_ptr,  # [NK, T, B] fp32 out: sum over the K-tile of P[j]
    S,
    T,
    B,
    K,
    D,
    inv_ts,
    inv_tt,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DC: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    pid_r = tl.program_id(0)
    kt = tl.program_id(1).to(tl.int64)
    nb = tl.cdiv(B, BLOCK_B)
    i = pid_r // nb
    offs_b = (pid_r % nb) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    offs_k = kt * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
    mask_k = offs_k < K
    rows = i.to(tl.int64) * B + offs_b
    s = _tile_dot(xs_ptr, rows, mask_b, ws_ptr, offs_k, mask_k, D, DC, UPCAST, PREC) * inv_ts
    s = tl.where(mask_k[None, :], s, -1.0e30)  # every K-tile holds a valid column: exp(-1e30 - max) == 0
    m = tl.max(s, axis=1)
    out = kt * S * B + rows
    tl.store(m_ptr + out, m, mask=mask_b)
    tl.store(l_ptr + out, tl.sum(tl.exp(s - m[:, None]), axis=1), mask=mask_b)
    a = tl.load(a_ptr + offs_k, mask=mask_k, other=0.0)
    for j in range(T):
        p = _targets_tile(xt_ptr, wt_ptr, a, bt_ptr, j, offs_b, mask_b, offs_k, mask_k, B, D, inv_tt, DC, UPCAST, PREC)
        cross = tl.sum(tl.where(mask_k[None, :], p * s, 0.0), axis=1)
        tl.store(cross_ptr + ((kt * S + i) * T + j) * B + offs_b, cross, mask=mask_b)
        if i == 0:
            tl.store(psum_ptr + (kt * T + j) * B + offs_b, tl.sum(p, axis=1), mask=mask_b)


@triton.jit
def _grad_logits_tile(
    xs_ptr,
    ws_ptr,
    xt_ptr,
    wt_ptr,
    a_ptr,
    bt_ptr,
    lse_ptr,
    csum_ptr,
    coef_ptr,
    i,
    offs_b,
    mask_b,
    offs_k,
    mask_k,
    T,
    B,
    K,
    D,
    inv_ts,
    inv_tt,
    DC,
    UPCAST,
    PREC,
):
    """dL/ds for the tile: (csum * softmax(s) - sum_j coef[i, j] * P[j]) / Ts, fp32, 0 outside the masks."""
    rows = i.to(tl.int64) * B + offs_b
    s = _tile_dot(xs_ptr, rows, mask_b, ws_ptr, offs_k, mask_k, D, DC, UPCAST, PREC) * inv_ts
    lse = tl.load(lse_ptr + rows, mask=mask_b, other=0.0)
    csum = tl.load(csum_ptr + rows, mask=mask_b, other=0.0)
    g = csum[:, None] * tl.exp(s - lse[:, None])
    a = tl.load(a_ptr + offs_k, mask=mask_k, other=0.0)
    for j in range(T):
        p = _targets_tile(xt_ptr, wt_ptr, a, bt_ptr, j, offs_b, mask_b, offs_k, mask_k, B, D, inv_tt, DC, UPCAST, PREC)
        coef = tl.load(coef_ptr + (i.to(tl.int64) * T + j) * B + offs_b, mask=mask_b, other=0.0)
        g -= coef[:, None] * p
    return tl.where(mask_b[:, None] & mask_k[None, :], g * inv_ts, 0.0)


@triton.jit
def _pce_bwd_dx_kernel(
    xs_ptr,  # [S * B, D] student features
    ws_ptr,  # [K, D] student prototypes, dtype of xs
    xt_ptr,  # [T * B, D] teacher features
    wt_ptr,  # [K, D] teacher prototypes, dtype of xt
    a_ptr,  # [K] fp32 target log scale per prototype
    bt_ptr,  # [T * B] fp32 target log scale per row
    lse_ptr,  # [S * B] fp32 logsumexp_k s from the forward
    csum_ptr,  # [S * B] fp32 sum_j coef[i, j, b] * psum[j, b]
    coef_ptr,  # [S, T, B] fp32 dL[i, j] * row_weight[b]
    dx_ptr,  # [SPLIT, S * B, D] fp32 out: partial gradients of xs
    S,
    T,
    B,
    K,
    D,
    inv_ts,
    inv_tt,
    SPLIT,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DC: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    pid_r = tl.program_id(0)
    split = tl.program_id(1)
    nb = tl.cdiv(B, BLOCK_B)
    i = pid_r // nb
    offs_b = (pid_r % nb) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    acc = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)
    for kt in range(split, tl.cdiv(K, BLOCK_K), SPLIT):
        offs_k = kt * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
        mask_k = offs_k < K
        g = _grad_logits_tile(
            xs_ptr,
            ws_ptr,
            xt_ptr,
            wt_ptr,
            a_ptr,
            bt_ptr,
            lse_ptr,
            csum_ptr,
            coef_ptr,
            i,
            offs_b,
            mask_b,
            offs_k,
            mask_k,
            T,
            B,
            K,
            D,
            inv_ts,
            inv_tt,
            DC,
            UPCAST,
            PREC,
        )
        w = tl.load(ws_ptr + offs_k[:, None] * D + offs_d[None, :], mask=mask_k[:, None] & mask_d[None, :], other=0.0)
        if UPCAST:
            acc += tl.dot(g, w.to(tl.float32), input_precision=PREC)
        else:
            acc += tl.dot(g.to(w.dtype), w, input_precision=PREC)
    rows = i.to(tl.int64) * B + offs_b
    out = dx_ptr + (split.to(tl.int64) * S * B + rows)[:, None] * D + offs_d[None, :]
    tl.store(out, acc, mask=mask_b[:, None] & mask_d[None, :])


@triton.jit
def _pce_bwd_dw_kernel(
    xs_ptr,  # [S * B, D] student features
    ws_ptr,  # [K, D] student prototypes, dtype of xs
    xt_ptr,  # [T * B, D] teacher features
    wt_ptr,  # [K, D] teacher prototypes, dtype of xt
    a_ptr,  # [K] fp32 target log scale per prototype
    bt_ptr,  # [T * B] fp32 target log scale per row
    lse_ptr,  # [S * B] fp32 logsumexp_k s from the forward
    csum_ptr,  # [S * B] fp32 sum_j coef[i, j, b] * psum[j, b]
    coef_ptr,  # [S, T, B] fp32 dL[i, j] * row_weight[b]
    dw_ptr,  # [K, D] fp32 out: gradient of ws
    S,
    T,
    B,
    K,
    D,
    inv_ts,
    inv_tt,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DC: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    offs_k = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
    mask_k = offs_k < K
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    nb = tl.cdiv(B, BLOCK_B)
    acc = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
    for rb in range(0, S.to(tl.int64) * nb):
        i = rb // nb
        offs_b = (rb % nb) * BLOCK_B + tl.arange(0, BLOCK_B)
        mask_b = offs_b < B
        g = _grad_logits_tile(
            xs_ptr,
            ws_ptr,
            xt_ptr,
            wt_ptr,
            a_ptr,
            bt_ptr,
            lse_ptr,
            csum_ptr,
            coef_ptr,
            i,
            offs_b,
            mask_b,
            offs_k,
            mask_k,
            T,
            B,
            K,
            D,
            inv_ts,
            inv_tt,
            DC,
            UPCAST,
            PREC,
        )
        rows = i.to(tl.int64) * B + offs_b
        x = tl.load(xs_ptr + rows[:, None] * D + offs_d[None, :], mask=mask_b[:, None] & mask_d[None, :], other=0.0)
        if UPCAST:
            acc += tl.dot(tl.trans(g), x.to(tl.float32), input_precision=PREC)
        else:
            acc += tl.dot(tl.trans(g.to(x.dtype)), x, input_precision=PREC)
    tl.store(dw_ptr + offs_k[:, None] * D + offs_d[None, :], acc, mask=mask_k[:, None] & mask_d[None, :])


INTERPRETED = type(_pce_fwd_kernel).__name__ == "InterpretedFunction"  # defined under TRITON_INTERPRET=1

# Tiles: a [BLOCK_B, BLOCK_K] logits tile per dot, D padded to a power of two (bottlenecks 256 / 384 -> 256 / 512).
# GPU tiles per kernel, for bf16 / fp16 operands and (halved: fp32 operands hold twice the registers) for fp32;
# each compiles spill-free on sm_80 and sm_90a (fastvit.kernels.aot). The interpreter runs one larger tile, which
# costs it fewer numpy calls (its time goes per op, not per element).
_TILES = {  # (BLOCK_B, BLOCK_K, num_warps, DC: columns of D per dot of the logits tiles)
    "fwd": {"low": (64, 64, 8, 64), "fp32": (32, 64, 8, 64)},
    # fp32 dX at BLOCK_D 512 (DINOv2's 384-wide bottleneck): 16 x 16 spills 100 B on sm_90a, 16 x 32 none on either;
    # bf16 / fp16 dX at 512 with 64-bit row indices: DC 64 spills 12 B at 255 registers on sm_80, DC 32 holds 235
    "dx": {"low": (32, 32, 8, 64), "low.d512": (32, 32, 8, 32), "fp32": (16, 16, 8, 64), "fp32.d512": (16, 32, 8, 32)},
    "dw": {"low": (16, 32, 8, 64), "fp32": (16, 16, 8, 32)},
}
_INTERPRETER_TILE = (64, 64, 4, 64)


def _gpu_tile(kind, dtype, block_d=None):
    """(BLOCK_B, BLOCK_K, num_warps, DC) on a GPU: the entry for this BLOCK_D if there is one, else the dtype's."""
    row, key = _TILES[kind], "fp32" if dtype == torch.float32 else "low"
    return row.get(f"{key}.d{block_d}", row[key])


def _tile(kind, dtype, block_d=None):
    """{"BLOCK_B", "BLOCK_K", "DC", "num_warps", "num_stages"} of one kernel for operands of `dtype`."""
    b, k, w, dc = _INTERPRETER_TILE if INTERPRETED else _gpu_tile(kind, dtype, block_d)
    return {"BLOCK_B": b, "BLOCK_K": k, "DC": dc, "num_warps": w, "num_stages": 2}


_SM_PROGRAMS = 132 * 4  # programs that fill an H100 / H200 (132 SMs) a few times over


MAX_D = 512  # bottleneck widths up to 512 (DINOv2: 256 / 384)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK_DS = (128, 256, 512)  # BLOCK_D of the backward: D padded to a power of two, at least 128 (fp32: 256)


def _block_ds(dtype):
    """BLOCK_D values of the backward for operands of `dtype`: fp32 starts at 256 (at 128, ptxas holds the fp32
    kernels to 128 registers and spills; measured with fastvit.kernels.aot)."""
    return BLOCK_DS[1:] if dtype == torch.float32 else BLOCK_DS


def _block_d(D, dtype):
    if D > MAX_D:
        raise ValueError(f"prototype cross-entropy supports feature widths up to {MAX_D}, got {D}")
    return max(16 if INTERPRETED else _block_ds(dtype)[0], triton.next_power_of_2(D))


def _prec_of(dtype):
    """fp32 dots in full precision (torch's default, no TF32): exponents of t / 0.04 amplify TF32's error."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _prec(x):
    return _prec_of(x.dtype)


def _dx_split(n_row_programs, K, block_k):
    """K-splits of the dX pass: enough programs to fill a GPU, no more than there are K-tiles."""
    return max(1, min(triton.cdiv(K, block_k), triton.cdiv(_SM_PROGRAMS, max(n_row_programs, 1)), 64))


def _operands(xs, ws, xt, wt):
    """Matmul operands in one dtype: theirs when all four share bf16 / fp16 / fp32, else fp32 (exact upcast)."""
    dts = {t.dtype for t in (xs, ws, xt, wt)}
    dt = dts.pop() if len(dts) == 1 and xs.dtype in _DTYPES else torch.float32
    return tuple(t.to(dt).contiguous() for t in (xs, ws, xt, wt))


def check_inputs(xs, ws, xt, wt, a, bt):
    if xs.dim() != 3 or xt.dim() != 3 or ws.dim() != 2 or wt.dim() != 2:
        raise ValueError(
            f"prototype cross-entropy expects features [S, B, D], [T, B, D] and prototypes [K, D], got "
            f"{tuple(xs.shape)}, {tuple(xt.shape)}, {tuple(ws.shape)}, {tuple(wt.shape)}"
        )
    (_, B, D), (T, Bt, Dt), (K, Dw), (Kt, Dtw) = xs.shape, xt.shape, ws.shape, wt.shape
    if B != Bt or D != Dw or Dt != Dtw or K != Kt:
        raise ValueError(
            f"prototype cross-entropy shapes do not fit: student {tuple(xs.shape)} x {tuple(ws.shape)}, "
            f"teacher {tuple(xt.shape)} x {tuple(wt.shape)}"
        )
    if D > MAX_D:
        raise ValueError(f"prototype cross-entropy supports feature widths up to {MAX_D}, got {D}")
    if a.shape != (K,) or bt.shape != (T, B) or a.dtype != torch.float32 or bt.dtype != torch.float32:
        raise ValueError(
            f"target scales must be fp32 a [{K}] and b [{T}, {B}], got {a.dtype} {tuple(a.shape)}, "
            f"{bt.dtype} {tuple(bt.shape)}"
        )


def prototype_cross_entropy_fwd_triton(xs, ws, xt, wt, a, bt, student_temp, inv_tt):
    """(cross [S, T, B], lse [S, B], psum [T, B]) fp32: sum_k P s, logsumexp_k s and sum_k P, s = xs ws^T / Ts."""
    check_inputs(xs, ws, xt, wt, a, bt)
    (S, B, D), T, K = xs.shape, xt.shape[0], ws.shape[0]
    dev = xs.device
    if S * B == 0 or K == 0:
        lse = torch.full((S, B), float("-inf"), device=dev)
        return torch.zeros(S, T, B, device=dev), lse, torch.zeros(T, B, device=dev)
    xs, ws, xt, wt = _operands(xs, ws, xt, wt)
    c = _tile("fwd", xs.dtype)
    nk = triton.cdiv(K, c["BLOCK_K"])
    m, l = (torch.empty(nk, S * B, device=dev) for _ in range(2))
    cross, psum = torch.empty(nk, S, T, B, device=dev), torch.empty(nk, T, B, device=dev)
    grid = (S * triton.cdiv(B, c["BLOCK_B"]), nk)
    _pce_fwd_kernel[grid](
        xs,
        ws,
        xt,
        wt,
        a.contiguous(),
        bt.contiguous(),
        m,
        l,
        cross,
        psum,
        S,
        T,
        B,
        K,
        D,
        1.0 / student_temp,
        inv_tt,
        BLOCK_B=c["BLOCK_B"],
        BLOCK_K=c["BLOCK_K"],
        DC=c["DC"],
        UPCAST=INTERPRETED,
        PREC=_prec(xs),
        num_warps=c["num_warps"],
        num_stages=c["num_stages"],
    )
    m_max = m.amax(0)
    lse = m_max + torch.log((l * torch.exp(m - m_max)).sum(0))
    return cross.sum(0), lse.view(S, B), psum.sum(0)


def prototype_cross_entropy_bwd_triton(xs, ws, xt, wt, a, bt, lse, coef, csum, student_temp, inv_tt):
    """(grad xs [S, B, D] fp32, grad ws [K, D] fp32) for coef [S, T, B] and csum [S, B] (see the module doc)."""
    check_inputs(xs, ws, xt, wt, a, bt)
    (S, B, D), T, K = xs.shape, xt.shape[0], ws.shape[0]
    dev = xs.device
    if S * B == 0 or K == 0:
        return torch.zeros(S, B, D, device=dev), torch.zeros(K, D, device=dev)
    xs, ws, xt, wt = _operands(xs, ws, xt, wt)
    args = (xs, ws, xt, wt, a.contiguous(), bt.contiguous(), lse.contiguous(), csum.contiguous(), coef.contiguous())
    consts = (S, T, B, K, D, 1.0 / student_temp, inv_tt)
    c = _tile("dx", xs.dtype, _block_d(D, xs.dtype))
    n_rows = S * triton.cdiv(B, c["BLOCK_B"])
    split = _dx_split(n_rows, K, c["BLOCK_K"])
    dx = torch.empty(split, S * B, D, device=dev)
    _pce_bwd_dx_kernel[(n_rows, split)](
        *args,
        dx,
        *consts,
        split,
        BLOCK_B=c["BLOCK_B"],
        BLOCK_K=c["BLOCK_K"],
        BLOCK_D=_block_d(D, xs.dtype),
        DC=c["DC"],
        UPCAST=INTERPRETED,
        PREC=_prec(xs),
        num_warps=c["num_warps"],
        num_stages=c["num_stages"],
    )
    c = _tile("dw", xs.dtype)
    dw = torch.empty(K, D, device=dev)
    _pce_bwd_dw_kernel[(triton.cdiv(K, c["BLOCK_K"]),)](
        *args,
        dw,
        *consts,
        BLOCK_B=c["BLOCK_B"],
        BLOCK_K=c["BLOCK_K"],
        BLOCK_D=_block_d(D, xs.dtype),
        DC=c["DC"],
        UPCAST=INTERPRETED,
        PREC=_prec(xs),
        num_warps=c["num_warps"],
        num_stages=c["num_stages"],
    )
    return dx.sum(0).view(S, B, D), dw


def prototype_cross_entropy_ref(xs, ws, xt, wt, a, bt, student_temp, inv_tt, row_weight):
    """Plain torch, materialising s [S, B, K] and P [T, B, K]: L[i, j] = sum_b w_b * -sum_k P log_softmax(s).
    fp32 compute (float64 stays float64)."""
    dt = torch.float64 if xs.dtype == torch.float64 else torch.float32
    lsm = torch.log_softmax((xs.to(dt) @ ws.to(dt).t()) / student_temp, dim=-1)  # [S, B, K]
    p = torch.exp((xt.to(dt) @ wt.to(dt).t()) * inv_tt + a.to(dt) + bt.to(dt)[..., None])  # [T, B, K]
    ce = -(p[None] * lsm[:, None]).sum(-1)  # [S, T, B]
    return (ce * row_weight.to(dt)).sum(-1)


_OPERANDS = ("xs_ptr", "ws_ptr", "xt_ptr", "wt_ptr")


def launch_variants():
    """Every (kernel, dtype, BLOCK_D) the wrappers can launch on a GPU, for fastvit.kernels.aot."""
    from fastvit.kernels.aot import Variant, dtype_name, signature

    kernels = {"fwd": _pce_fwd_kernel, "dx": _pce_bwd_dx_kernel, "dw": _pce_bwd_dw_kernel}
    out = []
    for dtype in _DTYPES:
        ty = dtype_name(dtype)
        for kind, fn in kernels.items():
            for block_d in BLOCK_DS[:1] if kind == "fwd" else _block_ds(dtype):  # the forward has no D-wide tile
                b, k, warps, dc = _gpu_tile(kind, dtype, None if kind == "fwd" else block_d)
                ce = dict(BLOCK_B=b, BLOCK_K=k, DC=dc, UPCAST=False, PREC=_prec_of(dtype))
                if kind != "fwd":
                    ce["BLOCK_D"] = block_d
                ptrs = {a: (ty if a in _OPERANDS else "fp32") for a in fn.arg_names if a.endswith("_ptr")}
                sig = signature(fn, ce, ptrs, fp32=("inv_ts", "inv_tt"))
                name = f"prototype_cross_entropy.{kind}.{ty}" + ("" if kind == "fwd" else f".d{block_d}")
                out.append(Variant(name, fn, sig, ce, warps, 2))
    return out
