"""Where a result came from: code version, library versions, device, precision, data source."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

_REPO = Path(__file__).resolve().parent.parent


# Outputs, not code: `make run` rewrites the committed example report under results/, and that must not mark
# every later run's code as changed.
_NOT_CODE = (":(exclude)results",)


def code_version(repo: Path = _REPO) -> str:
    """Returns the git commit of the checkout at `repo` (with "+dirty" when its code has uncommitted changes),
    or "unknown"."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *_NOT_CODE],
                               cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    """Returns a human name for the device results were computed on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def provenance(device: torch.device, data_source: str, precision: str = "fp32") -> dict:
    """Returns the provenance fields every result record carries."""
    return {"code_version": code_version(), "torch_version": torch.__version__, "device": device_name(device),
            "precision": precision, "data_source": data_source, "python": platform.python_version()}
