"""to_device_async: host-side values (a list or a numpy array) on a device without making the host wait.

A copy from pageable memory blocks the host until the device has the data; from pinned (page-locked) memory
with non_blocking=True it is queued on the current stream and the host goes on. PyTorch's caching host
allocator keeps the pinned buffer alive until the copy has run. On a CPU device the tensor is returned as is.
"""

import torch


def to_device_async(values, dtype, device):
    """torch tensor of `values` (list / numpy array) with `dtype` on `device`: pinned + non-blocking off the CPU."""
    t = torch.as_tensor(values, dtype=dtype)
    device = torch.device(device)
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)
