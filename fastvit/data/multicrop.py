"""All crops of a batch in one call: the fused kernel (C++/OpenMP or CUDA) and its torch reference.

Inputs: decoded uint8 HWC RGB images of any sizes, described by a base address, byte offsets and
shapes: the CUDA kernel gets them packed into one flat device buffer, the CPU kernel reads the
arrays in place (base 0, offsets = their addresses); and a crop table (n_crops, NUM_COLS) from
`fastvit.data.augment`. Output: one flat float32 or bf16 buffer holding each crop as CHW, crop
after crop in table order (in shared memory when called in a DataLoader worker).

Semantics (defined by `multicrop_ref`, matched by both kernels):
1. resample the crop box [y0, y0+h) x [x0, x0+w) (float coordinates) to S x S with the
   antialiased Keys bicubic (a=-0.5) filter widened by the downscale factor, taps limited to the
   pixels the box touches; divide by 255 and clamp to [0, 1];
2. mirror horizontally if FLIP;
3. if JITTER: brightness, contrast (blend with the crop's mean gray), saturation (blend with the
   pixel's gray), hue (shift in HSV), each clamped to [0, 1], in the order ORDER0..3;
4. grayscale (0.299 R + 0.587 G + 0.114 B into all channels);
5. Gaussian blur with sigma SIGMA (> 0), kernel 2 * blur_radius + 1, reflect padding;
6. solarize (x >= 0.5 -> 1 - x); 7. (x - mean) / std.
"""

import numpy as np
import torch
import torch.nn.functional as F

from fastvit import _ext
from fastvit.data import augment as A

BACKENDS = ("auto", "cpp", "cuda", "torch")


def _check_image(i: int, im) -> None:
    if im.ndim != 3 or im.shape[2] != 3 or im.dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"image {i} must be HWC uint8 RGB, got shape {tuple(im.shape)} dtype {im.dtype}")


def pack_images(images) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(flat uint8, byte offsets int64 (B,), shapes int64 (B, 2)) from HWC uint8 arrays or tensors."""
    if len(images) == 0:
        raise ValueError("pack_images needs at least one image")
    for i, im in enumerate(images):
        _check_image(i, im)
    shapes = [im.shape[:2] for im in images]
    sizes = np.array([h * w * 3 for h, w in shapes], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    if isinstance(images[0], torch.Tensor):
        device = images[0].device
        flat = torch.cat([im.contiguous().reshape(-1) for im in images])
    else:
        device = torch.device("cpu")
        flat = torch.from_numpy(np.concatenate([np.ascontiguousarray(im).reshape(-1) for im in images]))
    to = lambda a: torch.from_numpy(a).to(device)
    return flat, to(offsets), to(np.asarray(shapes, np.int64).reshape(-1, 2))


def address_images(images) -> tuple[list, np.ndarray, np.ndarray]:
    """The CPU kernel's view of images without packing them: (contiguous arrays to keep alive while the
    kernel runs, their addresses int64 (B,) = byte offsets from address 0, shapes int64 (B, 2))."""
    if len(images) == 0:
        raise ValueError("multicrop needs at least one image")
    keep, addresses = [], []
    for i, im in enumerate(images):
        _check_image(i, im)
        if isinstance(im, torch.Tensor):
            if im.device.type != "cpu":
                raise ValueError(f"backend='cpp' needs CPU images, image {i} is on {im.device}")
            im = im.contiguous()
            addresses.append(im.data_ptr())
        else:
            im = np.ascontiguousarray(im)
            addresses.append(im.ctypes.data)
        keep.append(im)
    shapes = np.array([im.shape[:2] for im in keep], np.int64).reshape(-1, 2)
    return keep, np.array(addresses, np.int64), shapes


def _new_output(total: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The flat output; in a DataLoader worker it is allocated in shared memory, as torch's default
    collate does, so that handing the batch to the main process does not copy it once more."""
    if device.type == "cpu" and torch.utils.data.get_worker_info() is not None:
        storage = torch.UntypedStorage._new_shared(total * dtype.itemsize)
        return torch.empty(0, dtype=dtype).set_(storage, 0, (total,), (1,))
    return torch.empty(total, dtype=dtype, device=device)


def crop_offsets(params: np.ndarray) -> tuple[np.ndarray, int]:
    """Element offset of each crop in the flat output, and the total element count."""
    sizes = 3 * params[:, A.SIZE].astype(np.int64) ** 2
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64), int(sizes.sum())


def crop_views(flat: torch.Tensor, params: np.ndarray) -> list[torch.Tensor]:
    """Each crop (3, S, S) as a view of the flat output."""
    offsets, _ = crop_offsets(params)
    out = []
    for off, s in zip(offsets.tolist(), params[:, A.SIZE].astype(int).tolist()):
        out.append(flat[off : off + 3 * s * s].view(3, s, s))
    return out


def _check_params(params: np.ndarray, shapes_BHW: np.ndarray, blur_radius: int) -> np.ndarray:
    params = np.ascontiguousarray(params, np.float32)
    if params.ndim != 2 or params.shape[1] != A.NUM_COLS:
        raise ValueError(f"crop table must be (n_crops, {A.NUM_COLS}), got {params.shape}")
    img = params[:, A.IMAGE].astype(np.int64)
    if img.min(initial=0) < 0 or img.max(initial=0) >= len(shapes_BHW):
        raise ValueError(f"crop table IMAGE column must index {len(shapes_BHW)} images, got {img.min()}..{img.max()}")
    if np.any(params[:, A.SIZE] <= blur_radius):
        raise ValueError(f"crop sizes {np.unique(params[:, A.SIZE])} must exceed blur_radius={blur_radius}")
    h, w = shapes_BHW[img, 0], shapes_BHW[img, 1]
    y0, x0, bh, bw = (params[:, c] for c in (A.Y0, A.X0, A.BOX_H, A.BOX_W))
    if np.any(bh <= 0) or np.any(bw <= 0) or np.any(y0 < 0) or np.any(x0 < 0):
        raise ValueError("crop boxes need y0, x0 >= 0 and positive h, w")
    if np.any(y0 + bh > h + 1e-3) or np.any(x0 + bw > w + 1e-3):
        raise ValueError("a crop box extends past its image")
    return params


def pick_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    return "cuda" if device.type == "cuda" else "cpp"


def multicrop(
    images,
    params: np.ndarray,
    *,
    mean=A.IMAGENET_MEAN,
    std=A.IMAGENET_STD,
    blur_radius: int = 4,
    out_dtype: torch.dtype = torch.float32,
    backend: str = "auto",
    num_threads: int = 0,
) -> torch.Tensor:
    """Flat output (sum of 3*S*S,) of every crop of `params` over `images` (list of HWC uint8).

    backend: "auto" (cuda for CUDA tensors, else cpp), "cpp", "cuda" or "torch" (the reference).
    num_threads: OpenMP threads of the cpp backend (0: OpenMP's default).
    The cpp backend reads the images in place (no packing copy) and, in a DataLoader worker, writes
    into shared memory.
    """
    if out_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"out_dtype must be torch.float32 or torch.bfloat16, got {out_dtype}")
    cpu = all(isinstance(im, np.ndarray) or im.device.type == "cpu" for im in images)
    backend = pick_backend(backend, torch.device("cpu" if cpu else "cuda"))
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if backend == "cpp":
        keep, addresses, shapes = address_images(images)
        params = _check_params(params, shapes, blur_radius)
        out_off, total = crop_offsets(params)
        out = _new_output(total, out_dtype, torch.device("cpu"))
        _ext.cpp().multicrop(
            0,
            addresses.ctypes.data,
            shapes.ctypes.data,
            len(keep),
            params.ctypes.data,
            len(params),
            out.data_ptr(),
            out_off.ctypes.data,
            out_dtype == torch.bfloat16,
            mean,
            std,
            blur_radius,
            num_threads,
        )
        return out
    flat_u8, offsets, shapes = pack_images(images)
    params = _check_params(params, shapes.cpu().numpy(), blur_radius)
    if backend == "torch":
        crops = multicrop_ref(images, params, mean=mean, std=std, blur_radius=blur_radius)
        return torch.cat([c.reshape(-1) for c in crops]).to(out_dtype)
    if flat_u8.device.type != "cuda":
        raise ValueError(f"backend='cuda' needs CUDA images, got {flat_u8.device}")
    stream = torch.cuda.current_stream(flat_u8.device).cuda_stream
    module = _ext.require_cuda()
    return launch_kernels(module, flat_u8, offsets, shapes, params, mean, std, blur_radius, out_dtype, stream)


def launch_kernels(module, flat_u8, offsets, shapes, params, mean, std, blur_radius, out_dtype, stream=0):
    """The flat output of the CUDA kernels' `module.multicrop` (fastvit._C_cuda, or fastvit._C_emulated on CPU
    tensors) over packed images (pack_images) and a checked crop table, with its buffers on the images' device."""
    device = flat_u8.device
    out_off, total = crop_offsets(params)
    out = torch.empty(total, dtype=out_dtype, device=device)
    params_t = torch.from_numpy(params).to(device)
    out_off_t = torch.from_numpy(out_off).to(device)
    workspace = torch.empty(2 * total, dtype=torch.float32, device=device)
    module.multicrop(
        flat_u8.data_ptr(),
        offsets.data_ptr(),
        shapes.data_ptr(),
        params_t.data_ptr(),
        len(params),
        int(params[:, A.SIZE].max()),
        out.data_ptr(),
        out_off_t.data_ptr(),
        total,
        out_dtype == torch.bfloat16,
        mean,
        std,
        blur_radius,
        workspace.data_ptr(),
        stream,
    )
    return out


# ---- the reference ------------------------------------------------------------------------------


def _cubic(x: torch.Tensor) -> torch.Tensor:
    a, x = -0.5, x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resample_matrix(start: float, length: float, n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) float64 weights of the antialiased bicubic resampling of one axis span."""
    scale = length / n_out
    stretch = max(scale, 1.0)
    center = start + (torch.arange(n_out, dtype=torch.float64)[:, None] + 0.5) * scale
    j = torch.arange(n_in, dtype=torch.float64)[None, :]
    w = _cubic((j + 0.5 - center) / stretch)
    inside = (j >= max(np.floor(start), 0)) & (j < min(np.ceil(start + length), n_in))
    w = w * inside
    return w / w.sum(1, keepdim=True)


def _gray(x_3SS: torch.Tensor) -> torch.Tensor:
    return 0.299 * x_3SS[0] + 0.587 * x_3SS[1] + 0.114 * x_3SS[2]


def _hue(x_3SS: torch.Tensor, shift: float) -> torch.Tensor:
    r, g, b = x_3SS
    mx, mn = x_3SS.max(0).values, x_3SS.min(0).values
    chroma = mx - mn
    colour = chroma > 0
    safe = torch.where(colour, chroma, torch.ones_like(chroma))
    s = chroma / torch.where(colour, mx, torch.ones_like(mx))
    h = torch.where(mx == r, (g - b) / safe, torch.where(mx == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = h / 6 + shift
    h6 = (h - torch.floor(h)) * 6
    out = []
    for n in (5.0, 3.0, 1.0):  # HSV -> RGB channel by channel: v - v * s * clamp(min(k, 4 - k), 0, 1)
        k = n + h6
        k = k - 6 * torch.floor(k / 6)
        out.append((mx - mx * s * torch.minimum(k, 4 - k).clamp(0, 1)).clamp(0, 1))
    return torch.where(colour, torch.stack(out), x_3SS)


def _color_op(x_3SS: torch.Tensor, op: int, f: float) -> torch.Tensor:
    if op == 0:
        return (x_3SS * f).clamp(0, 1)
    if op == 1:
        return (f * x_3SS + (1 - f) * _gray(x_3SS).mean()).clamp(0, 1)
    if op == 2:
        return (f * x_3SS + (1 - f) * _gray(x_3SS)).clamp(0, 1)
    return _hue(x_3SS, f)


def _blur(x_3SS: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    k = torch.arange(-radius, radius + 1, dtype=x_3SS.dtype)
    w = torch.exp(-0.5 * (k / sigma) ** 2)
    w = w / w.sum()
    x = F.pad(x_3SS[:, None], (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, w.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(x, w.view(1, 1, -1, 1))[:, 0]


def multicrop_ref(images, params: np.ndarray, *, mean=A.IMAGENET_MEAN, std=A.IMAGENET_STD, blur_radius: int = 4):
    """The semantics, straightforwardly in float64 torch: a list of float32 (3, S, S) crops."""
    out = []
    mean_t = torch.tensor(mean, dtype=torch.float64)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float64)[:, None, None]
    for row in np.asarray(params, np.float64):
        img = torch.as_tensor(images[int(row[A.IMAGE])]).cpu().to(torch.float64)  # (H, W, 3)
        S = int(row[A.SIZE])
        wy = resample_matrix(row[A.Y0], row[A.BOX_H], S, img.shape[0])
        wx = resample_matrix(row[A.X0], row[A.BOX_W], S, img.shape[1])
        x = torch.einsum("yh,hwc,xw->cyx", wy, img, wx).div(255).clamp(0, 1)  # (3, S, S)
        if row[A.FLIP]:
            x = x.flip(-1)
        if row[A.JITTER]:
            for op in row[A.ORDER0 : A.ORDER0 + 4].astype(int):
                x = _color_op(x, int(op), float(row[A.BRIGHTNESS + op]))
        if row[A.GRAY]:
            x = _gray(x).expand(3, S, S)
        if row[A.SIGMA] > 0:
            x = _blur(x, float(row[A.SIGMA]), blur_radius)
        if row[A.SOLARIZE]:
            x = torch.where(x >= 0.5, 1 - x, x)
        out.append(((x - mean_t) / std_t).float())
    return out
