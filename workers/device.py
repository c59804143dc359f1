"""Pick the compute device for this worker process (never in the prefork parent)."""

from __future__ import annotations

import importlib.util


def pick_device(forced: str = "", process_index: int = 0) -> str:
    """``cuda:N`` (round-robin over visible GPUs by pool process index) or ``cpu``.

    torch is only imported when installed; CUDA is only touched here, which runs in
    ``worker_process_init`` of each child, so the parent never holds a CUDA context that
    forked children would inherit broken.
    """
    if forced:  # OPENIMM_DEVICE pins the device (e.g. "cpu" on a GPU host)
        return forced
    if importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{process_index % count}" if count else "cpu"
