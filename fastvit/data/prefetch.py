"""prefetched: the items of a producer made ahead on a background thread, so that making the next batch overlaps
the training step that uses this one.

The DALI loaders read, decode (DALI), crop (the fused kernel) and mask whole batches in the training process;
without this, each batch is made when the loop asks for it and loading never overlaps the step. Decoding, the
multi-crop kernel and file reads release the GIL, and so do the step's torch ops. Exact resume is kept by the
consumer: a loader records its position (sampler advance, stream state) when a batch is handed over, never when
it is made, so a checkpoint holds the batches the trainer consumed, not those waiting in the queue.

    for batch, state in prefetched(make_batches, depth=2):   # depth 1: made on demand, on this thread
        self.position = state                                # what the trainer has consumed
        yield batch
"""

import queue
import threading

import torch

_END = object()


def prefetched(produce, depth, *, device_id=None):
    """Yields the items of the iterator `produce()` in order. depth >= 2: a daemon thread makes them up to
    depth - 1 ahead (a bounded queue; one more may be in the making); depth 1: made on demand on this thread.
    device_id: the CUDA device the thread works on (current-device state is per thread). An exception of the
    producer is raised here, at the item it failed on; closing this generator stops and joins the thread."""
    if depth < 1:
        raise ValueError(f"prefetch depth must be >= 1 (1: no prefetching), got {depth}")
    if depth == 1:
        yield from produce()
        return
    items, stop = queue.Queue(maxsize=depth - 1), threading.Event()

    def put(x):
        while not stop.is_set():
            try:
                items.put(x, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            if device_id is not None:
                torch.cuda.set_device(device_id)
            for item in produce():
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as e:  # handed to the consumer, raised there
            put((None, e))

    thread = threading.Thread(target=work, name="fastvit-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = items.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()
