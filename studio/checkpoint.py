"""Atomic, pickle-free checkpoints for long jobs (training, erasure, batch runs).

A checkpoint is one safetensors file: the tensors of the modules and optimisers it holds, plus a
JSON `meta` entry in the safetensors metadata (step, config, optimiser hyper-parameters, anything
else a job needs to resume). It is written to a temporary file in the same folder and moved into
place with `os.replace`, so a job killed mid-write leaves the previous checkpoint intact.

    save_checkpoint(path, {"unet": unet}, {"opt": opt}, meta={"step": 100})
    meta = load_checkpoint(path, {"unet": unet}, {"opt": opt})   # strict: every key must match
"""

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    """`safetensors.torch.save_file`, written atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict, dict]:
    """Split an optimiser's state into tensors (for safetensors) and JSON-able settings."""
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, pstate in state["state"].items():
        for name, value in pstate.items():
            key = f"{prefix}.state.{idx}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value
            else:
                scalars[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, prefix: str, tensors: dict, info: dict) -> None:
    state: dict = {}
    for key, value in tensors.items():
        if not key.startswith(prefix + ".state."):
            continue
        idx, name = key[len(prefix) + 7 :].split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in info["scalars"].items():
        idx, name = key[len(prefix) + 7 :].split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def save_checkpoint(path, modules: dict, optimizers: dict | None = None, meta: dict | None = None, tensors: dict | None = None) -> None:
    """Write modules' state dicts, optimisers' states, extra tensors and JSON meta, atomically.

    Only parameters and buffers are saved; for a large frozen model pass just the trained part
    (for example a dict of the trained parameters wrapped in `ParamDict`).
    """
    out = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            out[f"module.{name}.{key}"] = value
    opt_info = {}
    for name, opt in (optimizers or {}).items():
        t, info = optimizer_tensors(opt, f"optim.{name}")
        out.update(t)
        opt_info[name] = info
    for key, value in (tensors or {}).items():
        out[f"tensor.{key}"] = value
    metadata = {"meta": json.dumps(meta or {}), "optimizers": json.dumps(opt_info), "format": "pt"}
    atomic_save_tensors(path, out, metadata)


def load_checkpoint(path, modules: dict, optimizers: dict | None = None) -> tuple[dict, dict]:
    """Load what `save_checkpoint` wrote into `modules` and `optimizers` (strictly). Returns (meta, extra tensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for name, module in modules.items():
        prefix = f"module.{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        module.load_state_dict(state, strict=True)
    opt_info = json.loads(metadata.get("optimizers", "{}"))
    for name, opt in (optimizers or {}).items():
        if name not in opt_info:
            raise KeyError(f"checkpoint {path} holds no optimiser {name!r}")
        load_optimizer(opt, f"optim.{name}", tensors, opt_info[name])
    extra = {k[len("tensor.") :]: v for k, v in tensors.items() if k.startswith("tensor.")}
    return json.loads(metadata.get("meta", "{}")), extra


class ParamDict(torch.nn.Module):
    """A module that holds a named subset of another module's parameters, for checkpoints of trained parts only."""

    def __init__(self, named_params: dict):
        super().__init__()
        self._names = list(named_params)
        self.params = torch.nn.ParameterList(named_params.values())

    def state_dict(self, *args, **kwargs):
        return {n: p.detach() for n, p in zip(self._names, self.params)}

    def load_state_dict(self, state, strict=True):
        missing = set(self._names) - set(state)
        unexpected = set(state) - set(self._names)
        if strict and (missing or unexpected):
            raise KeyError(
                f"checkpoint does not match the trained parameters: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        with torch.no_grad():
            for n, p in zip(self._names, self.params):
                if n in state:
                    p.copy_(state[n])
        return None
