"""Non-causal FlashAttention-2 style attention for dense (B, H, N, D) and packed (T, H, D) inputs.

One launch covers every sequence: the grid is (query or key blocks, heads, sequences) and a
sequence's start and length come from int32 cu_seqlens (packed) or from b * N (dense). Keys
outside a sequence are masked, so sequences of different lengths (257- and 50-token crops) share
a launch. Forward: online softmax in base 2 with fp32 accumulation; it saves the natural-log
log-sum-exp of the scaled scores, lse (T, H) (dense: (B, H, N) stored token-major). Backward:
delta = rowsum(dO * O), then one kernel for dK/dV (loop over query blocks) and one for dQ (loop
over key blocks), recomputing P from lse; no N x N matrix is ever stored. Head dims are padded with
masks to BLOCK_D = 64 (up to 64) or 128 (65-128): tl.arange and tl.dot take power-of-two extents, so
head dim 80 runs the 128-wide tile and 37.5% of its MMA work is padding (a 64 + 16 split of the head
dim is not implemented). Addresses are one int64 base per tile plus int32 offsets inside it. On a GPU
the kernels take fp16 / bf16 (fp32 tl.dot lowers to FMAs and spills; fastvit.ops.attention runs fp32 on
SDPA); low-precision values are upcast to fp32 before tl.dot only under the interpreter (UPCAST), where
bf16 arithmetic is not emulated.
"""

import functools

import torch
import triton
import triton.language as tl

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_LOG2E = 1.4426950408889634


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _seq_bounds(cu_ptr, s, N, PACKED: tl.constexpr):
    """(first row in the (T, H) statistics, first token index, both int64; length, int32) of sequence s."""
    if PACKED:
        start = tl.load(cu_ptr + s)
        row0 = start.to(tl.int64)
        tok0 = row0
        seq_len = tl.load(cu_ptr + s + 1) - start
    else:  # dense rows are b * N + n; tokens are addressed through the batch stride
        row0 = s * N
        tok0 = s * 0
        seq_len = (s * 0 + N).to(tl.int32)
    return row0, tok0, seq_len


@triton.jit
def _tile(ptr, s, tok, h, offs, offs_d, stride_b, stride_t, stride_h):
    """Pointers to rows tok + offs of sequence s (batch stride 0 when packed), head h: one 64-bit base per tile
    (s, tok, h are int64 scalars) plus 32-bit in-tile offsets (offs < BLOCK, offs_d < BLOCK_D)."""
    base = ptr + s * stride_b + tok * stride_t + h * stride_h
    return base + (offs[:, None] * stride_t + offs_d[None, :])


@triton.jit
def _attn_fwd_kernel(
    q_ptr,  # (B, N, H, D) or (T, H, D): q_ptr + s * stride_qb + token * stride_qt + h * stride_qh + d
    k_ptr,  # like q, with the k strides
    v_ptr,  # like q, with the v strides
    o_ptr,  # output like q, with the o strides
    lse_ptr,  # (T, H) fp32 log-sum-exp of the scaled scores (dense: T = B * N), contiguous
    cu_ptr,  # (S + 1,) int32 sequence offsets (PACKED only)
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_ob,
    stride_ot,
    stride_oh,
    N,  # dense: sequence length; packed: max_seqlen bucket (the autotune key only)
    H,
    HEAD_DIM,
    scale_log2,  # softmax scale * log2(e)
    PACKED: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m, h, s = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    row0, tok0, seq_len = _seq_bounds(cu_ptr, s, N, PACKED)
    m0 = pid_m * BLOCK_M
    if m0 >= seq_len:
        return
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m_ok = (m0 + offs_m) < seq_len
    m_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(_tile(q_ptr, s, tok0 + m0, h, offs_m, offs_d, stride_qb, stride_qt, stride_qh), m_mask, other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start_n in range(0, seq_len, BLOCK_N):
        n_ok = (start_n + offs_n) < seq_len
        n_mask = n_ok[:, None] & d_ok[None, :]
        tok_n = tok0 + start_n
        k = tl.load(_tile(k_ptr, s, tok_n, h, offs_n, offs_d, stride_kb, stride_kt, stride_kh), n_mask, other=0.0)
        v = tl.load(_tile(v_ptr, s, tok_n, h, offs_n, offs_d, stride_vb, stride_vt, stride_vh), n_mask, other=0.0)
        qk = _dot(q, tl.trans(k), UPCAST, PRECISION) * scale_log2  # (BLOCK_M, BLOCK_N), base-2 logits
        qk = tl.where(n_ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST, PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    o_ptrs = _tile(o_ptr, s, tok0 + m0, h, offs_m, offs_d, stride_ob, stride_ot, stride_oh)
    tl.store(o_ptrs, acc.to(o_ptr.dtype.element_ty), m_mask)
    lse_ptrs = (lse_ptr + (row0 + m0) * H + h) + offs_m * H
    tl.store(lse_ptrs, (m_i + tl.math.log2(l_i)) * 0.6931471805599453, m_ok)


@triton.jit
def _attn_bwd_delta_kernel(
    o_ptr,  # forward output, (B, N, H, D) or (T, H, D) with the o strides
    do_ptr,  # output gradient like o, with the do strides
    delta_ptr,  # (T, H) fp32 rowsum(dO * O), contiguous
    cu_ptr,  # (S + 1,) int32 sequence offsets (PACKED only)
    stride_ob,
    stride_ot,
    stride_oh,
    stride_dob,
    stride_dot,
    stride_doh,
    N,
    H,
    HEAD_DIM,
    PACKED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m, h, s = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    row0, tok0, seq_len = _seq_bounds(cu_ptr, s, N, PACKED)
    m0 = pid_m * BLOCK_M
    if m0 >= seq_len:
        return
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = (m0 + offs_m) < seq_len
    mask = m_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(_tile(o_ptr, s, tok0 + m0, h, offs_m, offs_d, stride_ob, stride_ot, stride_oh), mask, other=0.0)
    do = tl.load(_tile(do_ptr, s, tok0 + m0, h, offs_m, offs_d, stride_dob, stride_dot, stride_doh), mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store((delta_ptr + (row0 + m0) * H + h) + offs_m * H, delta, m_ok)


@triton.jit
def _attn_bwd_dkdv_kernel(
    q_ptr,  # (B, N, H, D) or (T, H, D) with the q strides, as in the forward
    k_ptr,  # like q, with the k strides
    v_ptr,  # like q, with the v strides
    do_ptr,  # output gradient like q, with the do strides
    lse_ptr,  # (T, H) fp32 natural-log log-sum-exp from the forward, contiguous
    delta_ptr,  # (T, H) fp32 rowsum(dO * O), contiguous
    dk_ptr,  # key gradient like q, with the dk strides
    dv_ptr,  # value gradient like q, with the dk strides too
    cu_ptr,  # (S + 1,) int32 sequence offsets (PACKED only)
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_dob,
    stride_dot,
    stride_doh,
    stride_dkb,
    stride_dkt,
    stride_dkh,
    N,
    H,
    HEAD_DIM,
    scale,
    PACKED: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_n, h, s = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    row0, tok0, seq_len = _seq_bounds(cu_ptr, s, N, PACKED)
    n0 = pid_n * BLOCK_N
    if n0 >= seq_len:
        return
    offs_n = tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    n_mask = ((n0 + offs_n) < seq_len)[:, None] & d_ok[None, :]
    k = tl.load(_tile(k_ptr, s, tok0 + n0, h, offs_n, offs_d, stride_kb, stride_kt, stride_kh), n_mask, other=0.0)
    v = tl.load(_tile(v_ptr, s, tok0 + n0, h, offs_n, offs_d, stride_vb, stride_vt, stride_vh), n_mask, other=0.0)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    scale_log2 = scale * 1.4426950408889634
    for start_m in range(0, seq_len, BLOCK_M):
        m_ok = (start_m + offs_m) < seq_len
        m_mask = m_ok[:, None] & d_ok[None, :]
        tok_m = tok0 + start_m
        q = tl.load(_tile(q_ptr, s, tok_m, h, offs_m, offs_d, stride_qb, stride_qt, stride_qh), m_mask, other=0.0)
        do = tl.load(_tile(do_ptr, s, tok_m, h, offs_m, offs_d, stride_dob, stride_dot, stride_doh), m_mask, other=0.0)
        row_base = (row0 + start_m) * H + h  # int64 scalar; offs_m * H stays int32
        lse2 = tl.load((lse_ptr + row_base) + offs_m * H, m_ok, other=0.0) * 1.4426950408889634
        delta = tl.load((delta_ptr + row_base) + offs_m * H, m_ok, other=0.0)
        qk_T = _dot(k, tl.trans(q), UPCAST, PRECISION) * scale_log2  # (BLOCK_N, BLOCK_M)
        p_T = tl.where(m_ok[None, :], tl.math.exp2(qk_T - lse2[None, :]), 0.0)
        dv += _dot(p_T.to(do.dtype), do, UPCAST, PRECISION)
        dp_T = _dot(v, tl.trans(do), UPCAST, PRECISION)
        ds_T = p_T * (dp_T - delta[None, :])
        dk += _dot(ds_T.to(q.dtype), q, UPCAST, PRECISION)
    dk_ptrs = _tile(dk_ptr, s, tok0 + n0, h, offs_n, offs_d, stride_dkb, stride_dkt, stride_dkh)
    dv_ptrs = _tile(dv_ptr, s, tok0 + n0, h, offs_n, offs_d, stride_dkb, stride_dkt, stride_dkh)
    tl.store(dk_ptrs, (dk * scale).to(dk_ptr.dtype.element_ty), n_mask)
    tl.store(dv_ptrs, dv.to(dv_ptr.dtype.element_ty), n_mask)


@triton.jit
def _attn_bwd_dq_kernel(
    q_ptr,  # (B, N, H, D) or (T, H, D) with the q strides, as in the forward
    k_ptr,  # like q, with the k strides
    v_ptr,  # like q, with the v strides
    do_ptr,  # output gradient like q, with the do strides
    lse_ptr,  # (T, H) fp32 natural-log log-sum-exp from the forward, contiguous
    delta_ptr,  # (T, H) fp32 rowsum(dO * O), contiguous
    dq_ptr,  # query gradient like q, with the dq strides
    cu_ptr,  # (S + 1,) int32 sequence offsets (PACKED only)
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_dob,
    stride_dot,
    stride_doh,
    stride_dqb,
    stride_dqt,
    stride_dqh,
    N,
    H,
    HEAD_DIM,
    scale,
    PACKED: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m, h, s = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    row0, tok0, seq_len = _seq_bounds(cu_ptr, s, N, PACKED)
    m0 = pid_m * BLOCK_M
    if m0 >= seq_len:
        return
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m_ok = (m0 + offs_m) < seq_len
    m_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(_tile(q_ptr, s, tok0 + m0, h, offs_m, offs_d, stride_qb, stride_qt, stride_qh), m_mask, other=0.0)
    do = tl.load(_tile(do_ptr, s, tok0 + m0, h, offs_m, offs_d, stride_dob, stride_dot, stride_doh), m_mask, other=0.0)
    row_base = (row0 + m0) * H + h  # int64 scalar; offs_m * H stays int32
    lse2 = tl.load((lse_ptr + row_base) + offs_m * H, m_ok, other=0.0) * 1.4426950408889634
    delta = tl.load((delta_ptr + row_base) + offs_m * H, m_ok, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    scale_log2 = scale * 1.4426950408889634
    for start_n in range(0, seq_len, BLOCK_N):
        n_ok = (start_n + offs_n) < seq_len
        n_mask = n_ok[:, None] & d_ok[None, :]
        tok_n = tok0 + start_n
        k = tl.load(_tile(k_ptr, s, tok_n, h, offs_n, offs_d, stride_kb, stride_kt, stride_kh), n_mask, other=0.0)
        v = tl.load(_tile(v_ptr, s, tok_n, h, offs_n, offs_d, stride_vb, stride_vt, stride_vh), n_mask, other=0.0)
        qk = _dot(q, tl.trans(k), UPCAST, PRECISION) * scale_log2
        p = tl.where(n_ok[None, :], tl.math.exp2(qk - lse2[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), UPCAST, PRECISION)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, UPCAST, PRECISION)
    dq_ptrs = _tile(dq_ptr, s, tok0 + m0, h, offs_m, offs_d, stride_dqb, stride_dqt, stride_dqh)
    tl.store(dq_ptrs, (dq * scale).to(dq_ptr.dtype.element_ty), m_mask)


# True when this module was imported with TRITON_INTERPRET=1: the kernels then run on CPU tensors.
INTERPRETED = type(_attn_fwd_kernel).__name__ == "InterpretedFunction"


def _configs(tiles):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st) for m, n, w, st in tiles]


# (BLOCK_M, BLOCK_N, num_warps, num_stages) each kernel may run with, per BLOCK_D (the head dim padded to 64 or
# 128). On a GPU the autotuner picks one per (head dim, length, layout, dtype); launch_variants() lists the same
# tiles for the ahead-of-time compile check (tests/kernels/test_compile.py), which holds every one of them
# spill-free on sm_80 and sm_90a. At BLOCK_D 128 the fp32 accumulators of 128-row tiles need 8 warps, and these
# spill on one target or both (ptxas -v): fwd 128 x 128 / 8 warps (sm_90a, packed), fwd 64 x 64 / 4 and 8 warps
# (sm_80), dK/dV 32 x 128 / 8 warps and 32 x 64 / 4 warps (sm_80), dQ 128 x 64 / 8 warps and 64 x 64 / 8 warps
# (sm_80).
TILES = {
    "fwd": {
        64: [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3)],
        128: [(128, 64, 8, 3), (128, 32, 8, 3)],
    },
    "dkdv": {
        64: [(32, 128, 8, 3), (64, 128, 8, 2), (32, 64, 4, 3), (64, 64, 4, 2)],
        128: [(64, 64, 8, 2), (32, 64, 8, 3)],
    },
    "dq": {
        64: [(128, 32, 4, 3), (128, 64, 8, 2), (64, 64, 4, 3), (64, 32, 4, 3)],
        128: [(128, 32, 8, 2), (64, 64, 4, 2), (64, 32, 4, 3)],
    },
}
BLOCK_DS = (64, 128)  # every BLOCK_D the wrappers launch: head dims up to 64 share one kernel, 65-128 the other
# fp32 on a GPU would lower tl.dot to FMAs and spill kilobytes in every tile (and need 160+ KB of shared memory
# at BLOCK_D 128): fastvit.ops.attention sends fp32 to SDPA there, and the kernels take fp16 / bf16 only.
GPU_DTYPES = (torch.float16, torch.bfloat16)
_DELTA = {"BLOCK_M": 64, "num_warps": 4, "num_stages": 3}  # the delta kernel's fixed launch
_KERNELS = {"fwd": _attn_fwd_kernel, "dkdv": _attn_bwd_dkdv_kernel, "dq": _attn_bwd_dq_kernel}


def tiles(kind, block_d):
    return TILES[kind][block_d]


# The autotune key: head dim, dense length (packed: max_seqlen rounded up to a power of two, see _Layout), layout;
# the autotuner adds the tensors' dtypes itself.
_KEY = ["HEAD_DIM", "N", "PACKED"]


@functools.cache
def _tuned(kind, block_d):
    return triton.autotune(_configs(tiles(kind, block_d)), _KEY)(_KERNELS[kind])


def _kernel(kind, block_d):
    """The launchable kernel: autotuned over TILES on a GPU; the interpreter runs one fixed 64 x 64 tile (never
    autotune without a GPU)."""
    return _KERNELS[kind] if INTERPRETED else _tuned(kind, block_d)


_TILE = {"BLOCK_M": 64, "BLOCK_N": 64} if INTERPRETED else {}


def _block_d(head_dim):
    return max(triton.next_power_of_2(head_dim), BLOCK_DS[0])


def launch_variants():
    """Every (kernel, dtype, layout, BLOCK_D, tile) the wrappers can launch on a GPU, for fastvit.kernels.aot."""
    from fastvit.kernels.aot import Variant, dtype_name, signature

    out = []
    for dtype in GPU_DTYPES:
        ty = dtype_name(dtype)
        for packed in (False, True):
            for block_d in BLOCK_DS:
                tag = f"{ty}.{'packed' if packed else 'dense'}.d{block_d}"
                base = dict(PACKED=packed, BLOCK_D=block_d)
                fn = _attn_bwd_delta_kernel
                ce = dict(base, BLOCK_M=_DELTA["BLOCK_M"])
                sig = _signature(fn, ce, ty, signature)
                out.append(Variant(f"attention.delta.{tag}", fn, sig, ce, _DELTA["num_warps"], _DELTA["num_stages"]))
                for kind, fn in _KERNELS.items():
                    for m, n, w, st in tiles(kind, block_d):
                        ce = dict(base, UPCAST=False, PRECISION=_precision(dtype), BLOCK_M=m, BLOCK_N=n)
                        sig = _signature(fn, ce, ty, signature)
                        out.append(Variant(f"attention.{kind}.{tag}.{m}x{n}.w{w}s{st}", fn, sig, ce, w, st))
    return out


def _signature(fn, constexprs, ty, signature):
    ptrs = {a: ty for a in fn.arg_names if a.endswith("_ptr")}
    ptrs.update({a: "fp32" for a in ("lse_ptr", "delta_ptr") if a in ptrs}, cu_ptr="i32")
    # The ViT launches: strides and head dims are multiples of 16 (the JIT specialises them the same way).
    div16 = [a for a in fn.arg_names if a.startswith("stride")] + ["HEAD_DIM"]
    return signature(fn, constexprs, ptrs, fp32=("scale", "scale_log2"), div16=div16)


class _Layout:
    """How the kernels see a dense (B, H, N, D) or packed (T, H, D) problem."""

    def __init__(self, q, cu_seqlens, max_seqlen):
        self.packed = cu_seqlens is not None
        self.D = q.shape[-1]
        if self.packed:
            self.T, self.H = q.shape[0], q.shape[1]
            # N is unused by the packed kernels but keys their autotuning: max_seqlen rounded up to a power of
            # two, so a batch of 50-token crops and one of 257-token crops tune separately.
            self.S, self.N, self.max_seqlen = cu_seqlens.numel() - 1, triton.next_power_of_2(max_seqlen), max_seqlen
        else:
            B, self.H, self.N = q.shape[0], q.shape[1], q.shape[2]
            self.T, self.S, self.max_seqlen = B * self.N, B, self.N
        self.cu = cu_seqlens if self.packed else torch.zeros(1, dtype=torch.int32, device=q.device)

    def strides(self, t):
        """(batch, token, head) strides of a (B, H, N, D) or (T, H, D) tensor; batch is 0 when packed."""
        assert t.stride(-1) == 1, "kernel tensors need a unit stride on the head dim"
        return (0, t.stride(0), t.stride(1)) if self.packed else (t.stride(0), t.stride(2), t.stride(1))

    def empty_like_q(self, q):
        """Output / gradient buffer: dense ones are (B, N, H, D) in memory, viewed as (B, H, N, D)."""
        if self.packed:
            return torch.empty(q.shape, dtype=q.dtype, device=q.device)
        B, H, N, D = q.shape
        return torch.empty((B, N, H, D), dtype=q.dtype, device=q.device).transpose(1, 2)

    def empty_stats(self, q):
        """(T, H) fp32 row statistics; dense ones are returned as (B, H, N) views of (B, N, H) memory."""
        stats = torch.empty((self.T, self.H), dtype=torch.float32, device=q.device)
        return stats if self.packed else stats.view(self.T // self.N, self.N, self.H).permute(0, 2, 1)

    def grid(self, meta, block):
        return (triton.cdiv(self.max_seqlen, meta[block]), self.H, self.S)


def _check(q, k, v, cu_seqlens, max_seqlen):
    """The kernels' own limits; the layout (shapes, ranks, one dtype, int32 cu_seqlens) is fastvit.ops.attention's
    to validate, and only asserted here."""
    assert q.shape == k.shape == v.shape and q.dim() == (4 if cu_seqlens is None else 3), (q.shape, k.shape, v.shape)
    assert q.dtype == k.dtype == v.dtype and (cu_seqlens is None or cu_seqlens.dtype == torch.int32)
    if q.dtype not in _DTYPES:
        raise ValueError(f"attention (triton) supports {_DTYPES}, got {q.dtype}")
    if q.device.type == "cuda" and q.dtype not in GPU_DTYPES:
        raise ValueError(
            f"attention (triton) on a GPU takes {GPU_DTYPES}, got {q.dtype} (backend='torch' runs fp32 through SDPA)"
        )
    if q.shape[-1] > BLOCK_DS[-1]:  # the tiles are sized (and compile-checked) for head dims up to 128
        raise ValueError(f"attention (triton) supports head dims up to {BLOCK_DS[-1]}, got {q.shape[-1]}")
    if cu_seqlens is not None and (max_seqlen is None or max_seqlen < 0):
        raise ValueError(f"packed attention (triton) needs max_seqlen >= 0, got {max_seqlen}")


def _unit(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _precision(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"  # fp32 inputs stay fp32 (no TF32 rounding)


def attention_fwd(q, k, v, scale, cu_seqlens=None, max_seqlen=None):
    """Dense (B, H, N, D) or packed (T, H, D) + cu_seqlens -> (out like q, lse (T, H) or (B, H, N) fp32)."""
    _check(q, k, v, cu_seqlens, max_seqlen)
    q, k, v = _unit(q), _unit(k), _unit(v)
    lay = _Layout(q, cu_seqlens, max_seqlen)
    o, lse = lay.empty_like_q(q), lay.empty_stats(q)
    if lay.T and lay.max_seqlen:
        _kernel("fwd", _block_d(lay.D))[lambda meta: lay.grid(meta, "BLOCK_M")](
            q,
            k,
            v,
            o,
            lse,
            lay.cu,
            *lay.strides(q),
            *lay.strides(k),
            *lay.strides(v),
            *lay.strides(o),
            lay.N,
            lay.H,
            lay.D,
            scale * _LOG2E,
            PACKED=lay.packed,
            UPCAST=INTERPRETED,
            PRECISION=_precision(q.dtype),
            BLOCK_D=_block_d(lay.D),
            **_TILE,
        )
    return o, lse


def attention_bwd(do, q, k, v, o, lse, scale, cu_seqlens=None, max_seqlen=None):
    """Gradients (dq, dk, dv) of attention_fwd, recomputing the probabilities from lse."""
    _check(q, k, v, cu_seqlens, max_seqlen)
    if do.shape != q.shape or o.shape != q.shape:
        raise ValueError(
            f"attention backward: do {tuple(do.shape)} and o {tuple(o.shape)} must match q {tuple(q.shape)}"
        )
    q, k, v, o, do = (_unit(t) for t in (q, k, v, o, do))
    lay = _Layout(q, cu_seqlens, max_seqlen)
    dq, dk, dv, delta = lay.empty_like_q(q), lay.empty_like_q(q), lay.empty_like_q(q), lay.empty_stats(q)
    if not (lay.T and lay.max_seqlen):
        return dq.zero_(), dk.zero_(), dv.zero_()
    block_d = _block_d(lay.D)
    _attn_bwd_delta_kernel[(triton.cdiv(lay.max_seqlen, _DELTA["BLOCK_M"]), lay.H, lay.S)](
        o,
        do,
        delta,
        lay.cu,
        *lay.strides(o),
        *lay.strides(do),
        lay.N,
        lay.H,
        lay.D,
        PACKED=lay.packed,
        BLOCK_D=block_d,
        **_DELTA,
    )
    common = dict(PACKED=lay.packed, UPCAST=INTERPRETED, PRECISION=_precision(q.dtype), BLOCK_D=block_d, **_TILE)
    qkv_do = (*lay.strides(q), *lay.strides(k), *lay.strides(v), *lay.strides(do))
    _kernel("dkdv", block_d)[lambda meta: lay.grid(meta, "BLOCK_N")](
        q, k, v, do, lse, delta, dk, dv, lay.cu, *qkv_do, *lay.strides(dk), lay.N, lay.H, lay.D, scale, **common
    )
    _kernel("dq", block_d)[lambda meta: lay.grid(meta, "BLOCK_M")](
        q, k, v, do, lse, delta, dq, lay.cu, *qkv_do, *lay.strides(dq), lay.N, lay.H, lay.D, scale, **common
    )
    return dq, dk, dv


def attention_ref(q, k, v, scale=None, cu_seqlens=None):
    """Plain-torch reference: softmax(q k^T * scale) v per sequence, computed the straightforward way."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if cu_seqlens is None:
        return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v
    bounds = cu_seqlens.tolist()
    outs = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        q_HND, k_HND, v_HND = (t[a:b].transpose(0, 1) for t in (q, k, v))
        outs.append((torch.softmax(q_HND @ k_HND.transpose(-1, -2) * scale, dim=-1) @ v_HND).transpose(0, 1))
    return torch.cat(outs) if outs else q.new_empty(q.shape)
