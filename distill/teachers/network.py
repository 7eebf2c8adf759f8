"""A trained network as a teacher.

Sources, in the order they are recognised:

* an MLflow model URI (``teacher.uri``) of a model distill logged — its ``student.pt`` is used;
* a ``torch.export`` program (``.pt2``, ``torch.export.load`` under :func:`distill.safeload.no_unpickling`,
  so a program whose members would need unpickling is refused instead of torch's silent
  ``weights_only=False`` fallback) or a TorchScript archive (``torch.jit.load``) — neither runs
  Python code from the file;
* a distill checkpoint (``student.pt`` of a run, or ``teacher train``'s output), which carries its
  architecture and its own input scaling;
* a plain ``state_dict`` (or ``{"state_dict": ...}``) plus ``teacher.arch`` (a registered
  architecture or ``module:Class``) and its kwargs in ``teacher.params``.

Checkpoints are read with ``torch.load(weights_only=True)``: a file whose loading would run code
is refused. The network runs in eval mode under ``torch.inference_mode()``, in batches, on the
configured device, and reads raw features (``teacher.input = "raw"``, the default) or the run's
scaled ones (``"scaled"``). A distill checkpoint always reads raw features and scales them itself.
"""

from __future__ import annotations

import hashlib
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.safeload import load_export_program, load_weights_only
from distill.teachers.base import (
    NotFittedError,
    Teacher,
    probabilities_to_logits,
    register_teacher,
)

__all__ = ["NetworkTeacher", "file_digest"]


@lru_cache(maxsize=8)
def _resolve(source: str, is_uri: bool, tracking_uri: str | None) -> str:
    from distill.students.checkpoint import resolve_checkpoint

    return str(resolve_checkpoint(source, tracking_uri)) if is_uri else source


@lru_cache(maxsize=32)
def file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's bytes (cached per path, size and modification time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _digest(path: Path) -> str:
    stat = path.stat()
    return file_digest(str(path), stat.st_size, stat.st_mtime_ns)


class _Probabilities(nn.Module):
    """Flat rows in, class probabilities out, for a network that emits logits on ``[N, *in_shape]``."""

    def __init__(self, net: nn.Module, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.net = net
        self.in_shape = tuple(in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from distill.metrics.classification import probabilities

        return probabilities(self.net(x.reshape(x.shape[0], *self.in_shape)))


class _Exported(nn.Module):
    """A ``torch.export`` program as a module.

    Its unlifted module refuses ``train()``/``eval()``, so this wrapper does not pass them on. A
    program exported without a dynamic batch dimension only takes batches of the traced size: rows
    then go through in batches of exactly that size (the last one zero-padded, its padding dropped).
    """

    def __init__(self, program: Any) -> None:
        super().__init__()
        self.net = program.module()
        names = list(program.graph_signature.user_inputs)
        shape: tuple[Any, ...] = ()
        for node in program.graph.nodes:
            if node.op == "placeholder" and names and node.name == names[0] and "val" in node.meta:
                shape = tuple(node.meta["val"].shape)
        self.batch = shape[0] if shape and isinstance(shape[0], int) else None
        rows = shape[1:]
        self.row_shape = tuple(rows) if shape and all(isinstance(d, int) for d in rows) else None

    def train(self, mode: bool = True) -> _Exported:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.row_shape is not None and x[0].numel() == int(np.prod(self.row_shape)):
            x = x.reshape(x.shape[0], *self.row_shape)
        if self.batch is None or x.shape[0] == self.batch:
            return self.net(x)
        outs = []
        for i in range(0, x.shape[0], self.batch):
            chunk = x[i : i + self.batch]
            n = chunk.shape[0]
            if n < self.batch:
                chunk = torch.cat([chunk, chunk.new_zeros((self.batch - n, *chunk.shape[1:]))])
            outs.append(self.net(chunk)[:n])
        return torch.cat(outs)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold compiled code (``<name>/code/...``); torch.save files do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


class NetworkTeacher(Teacher):
    """Soft targets from a trained torch network (see the module docstring for the sources).

    It arrives trained (``learns = False``): its outputs do not depend on the rows ``fit`` gets.

    Args:
        num_classes: classes of the dataset; must equal the network's.
        in_shape: the shape of one row as the data gives it (e.g. ``(1, 8, 8)``).
        checkpoint: path to a distill checkpoint, a state_dict file, a ``.pt2`` program or TorchScript.
        uri: MLflow model URI of a distill-logged model.
        arch, arch_kwargs: the architecture of a plain state_dict.
        input: ``"raw"`` or ``"scaled"`` features (a distill checkpoint always reads raw ones).
        device: where the network runs; batch_size: rows per forward pass.
        tracking_uri: the MLflow tracking server that resolves ``uri``.
    """

    learns = False

    def __init__(
        self,
        num_classes: int,
        in_shape: tuple[int, ...] | None = None,
        checkpoint: str | None = None,
        uri: str | None = None,
        arch: str | None = None,
        arch_kwargs: dict[str, Any] | None = None,
        input: str = "raw",
        device: str = "cpu",
        batch_size: int = 4096,
        tracking_uri: str | None = None,
    ) -> None:
        if (checkpoint is None) == (uri is None):
            raise ValueError("teacher.kind = 'network' needs exactly one of teacher.checkpoint or teacher.uri")
        if input not in ("raw", "scaled"):
            raise ValueError(f"teacher.input must be 'raw' or 'scaled', got {input!r}")
        self.num_classes = int(num_classes)
        self.in_shape = tuple(in_shape) if in_shape is not None else None
        self.checkpoint = checkpoint
        self.uri = uri
        self.arch = arch
        self.arch_kwargs = dict(arch_kwargs or {})
        self.input = input
        self.device = device
        self.batch_size = int(batch_size)
        self.tracking_uri = tracking_uri

    # ------------------------------------------------------------------ loading

    @property
    def input_space(self) -> str:  # type: ignore[override]  # read-only: follows the checkpoint's format
        """``raw`` or ``scaled``: which features ``fit``/``logits`` expect."""
        return "raw" if self._path_kind()[1] == "distill" else self.input

    def describe(self) -> str:
        """``network checkpoint runs/teachers/x.pt (cnn, raw inputs)``: the source, the architecture
        (or the file's format) and which features it reads."""
        source = f"checkpoint {self.checkpoint}" if self.checkpoint is not None else f"model {self.uri}"
        payload = getattr(self, "payload_", None)
        try:
            kind: str | None = self._path_kind()[1]
            space = self.input_space
            if payload is None and kind == "distill":
                payload = self._payload(self._path_kind()[0])
        except (ValueError, OSError):  # not readable (yet): say what the config asks for
            kind, space = None, self.input
        arch = self.arch or (payload or {}).get("arch") or {"export": "torch.export program",
                                                            "torchscript": "TorchScript"}.get(str(kind))
        return f"network {source} (" + (f"{arch}, " if arch else "") + f"{space} inputs)"

    def _path_kind(self) -> tuple[Path, str]:
        source = self.uri if self.uri is not None else str(self.checkpoint)
        path = Path(_resolve(source, self.uri is not None, self.tracking_uri))
        if not path.is_file():
            raise ValueError(f"teacher.checkpoint '{path}' not found")
        if path.suffix == ".pt2":
            return path, "export"
        if _is_torchscript(path):
            return path, "torchscript"
        return path, ("distill" if self._payload(path) is not None else "state_dict")

    def _payload(self, path: Path) -> dict[str, Any] | None:
        """The checkpoint's dict when it is a distill checkpoint, else None (refusing pickles)."""
        from distill.students.checkpoint import CHECKPOINT_FORMAT

        stat = path.stat()
        data = _cached_load(str(path), stat.st_size, stat.st_mtime_ns)
        return data if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT else None

    def fingerprint(self) -> str:
        """What identifies this teacher's outputs: the file's bytes and how inputs reach it."""
        path, kind = self._path_kind()
        return f"network:{kind}:{_digest(path)}:{self.arch}:{sorted(self.arch_kwargs.items())}:{self.input_space}"

    def _load(self) -> tuple[nn.Module, dict[str, Any]]:
        path, kind = self._path_kind()
        info: dict[str, Any] = {"estimator": "network", "format": kind, "source": self.uri or self.checkpoint}
        if kind == "distill":
            from distill.students.checkpoint import servable_from_checkpoint

            payload = self._payload(path)
            assert payload is not None
            module: nn.Module = servable_from_checkpoint(
                payload, trusted=(self.arch,) if self.arch else (), where=f"teacher checkpoint '{path}'",
                how=f'set teacher.arch = "{payload["arch"]}" in the experiment',
            )
            in_shape = tuple(payload["in_shape"])
            classes = int(payload["num_classes"])
            info.update(arch=payload["arch"], kwargs=payload["kwargs"], trained_seed=payload.get("seed"),
                        test_accuracy=payload.get("test_accuracy"), role=payload.get("role", "student"))
            self.payload_ = payload
        else:
            if self.in_shape is None:
                raise ValueError("the network teacher needs the data's input shape")
            in_shape = self.in_shape
            net: nn.Module
            if kind == "export":
                exported = _Exported(load_export_program(path))
                if exported.row_shape is not None and int(np.prod(exported.row_shape)) != int(np.prod(in_shape)):
                    raise ValueError(
                        f"the teacher network takes inputs of shape {exported.row_shape} but the data has "
                        f"{tuple(in_shape)}"
                    )
                net = exported
            elif kind == "torchscript":
                try:
                    net = torch.jit.load(str(path), map_location="cpu")
                except Exception as exc:  # noqa: BLE001
                    raise ValueError(f"'{path}' is not a TorchScript archive: {_first_line(exc)}") from None
            else:
                net = self._from_state_dict(path)
            module = _Probabilities(net, in_shape)
            classes = self._output_width(module)
            info.update(arch=self.arch, kwargs=self.arch_kwargs)
        if classes != self.num_classes:
            raise ValueError(f"the teacher network predicts {classes} classes but the data has {self.num_classes}")
        if self.in_shape is not None and int(np.prod(in_shape)) != int(np.prod(self.in_shape)):
            raise ValueError(
                f"the teacher network takes inputs of shape {tuple(in_shape)} but the data has {tuple(self.in_shape)}"
            )
        info["in_shape"] = list(in_shape)
        return module.to(self.device).eval(), info

    def _from_state_dict(self, path: Path) -> nn.Module:
        from distill import students

        stat = path.stat()
        data = _cached_load(str(path), stat.st_size, stat.st_mtime_ns)
        state = data.get("state_dict", data) if isinstance(data, dict) else None
        if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"'{path}' holds no state_dict of tensors (nor a distill checkpoint, TorchScript or "
                             "torch.export program)")
        if not self.arch:
            raise ValueError(
                f"'{path}' holds a plain state_dict; name its architecture with teacher.arch (and kwargs in teacher.params)"
            )
        assert self.in_shape is not None
        last = list(state.values())[-1]  # the output layer's bias (or weight): its first size is the output width
        if last.ndim >= 1:
            width = int(last.shape[0])
            if width not in (students.num_outputs_for(self.num_classes), self.num_classes):
                predicted = 2 if width == 1 else width
                raise ValueError(
                    f"the teacher network predicts {predicted} classes but the data has {self.num_classes}"
                )
        last_error = ""
        for outputs in dict.fromkeys([students.num_outputs_for(self.num_classes), self.num_classes]):
            try:
                net = students.build(self.arch, self.in_shape, self.num_classes, num_outputs=outputs,
                                     key="teacher.arch", **self.arch_kwargs)
                net.load_state_dict(state)
                return net
            except RuntimeError as exc:
                last_error = _first_line(exc)
        raise ValueError(f"'{path}' does not fit teacher.arch '{self.arch}' {self.arch_kwargs}: {last_error}")

    def _output_width(self, module: nn.Module) -> int:
        assert self.in_shape is not None
        try:
            with torch.inference_mode():
                out = module(torch.zeros((2, int(np.prod(self.in_shape)))))
        except Exception as exc:  # noqa: BLE001 - any failure: the network cannot take these inputs
            raise ValueError(
                f"the teacher network cannot take inputs of shape {self.in_shape}: {_first_line(exc)}"
            ) from None
        return int(out.shape[-1])

    # ------------------------------------------------------------------ protocol

    def check(self, in_shape: tuple[int, ...]) -> None:
        """Load the network and check classes and input shape against the data (before any training)."""
        self.in_shape = tuple(in_shape)
        self._load()

    def heldout_rows(self, data_hash: str) -> np.ndarray | None:
        """Rows a distill-trained teacher never saw, when it was trained on this very data; else None."""
        path, kind = self._path_kind()
        if kind != "distill":
            return None
        payload = self._payload(path) or {}
        if payload.get("data_hash") != data_hash or "heldout_rows" not in payload:
            return None
        return np.asarray(payload["heldout_rows"], dtype=np.int64)

    def fit(self, x: np.ndarray, y: np.ndarray) -> "NetworkTeacher":
        """Load the (already trained) network; ``x`` only checks the input width."""
        self.model_, self.info_ = self._load()
        if np.asarray(x).ndim != 2 or self.in_shape is None:
            self.in_shape = self.in_shape or tuple(np.asarray(x).shape[1:])
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """``[N, num_classes]`` probabilities, batched, in eval mode without autograd."""
        if not hasattr(self, "model_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(x, y) first")
        x = np.asarray(x)
        rows = torch.as_tensor(x.reshape(x.shape[0], int(np.prod(x.shape[1:]))), dtype=torch.float32)  # 0 rows too
        outs = []
        with torch.inference_mode():
            for i in range(0, rows.shape[0], self.batch_size):
                outs.append(self.model_(rows[i : i + self.batch_size].to(self.device)).double().cpu())
        return torch.cat(outs).numpy() if outs else np.zeros((0, self.num_classes))

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Clamped log-probabilities: finite even where a probability is 0 or 1."""
        return probabilities_to_logits(self.predict_proba(x))

    def diagnostics(self) -> dict[str, Any]:
        """Where the network came from and what it is."""
        if not hasattr(self, "model_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(x, y) first")
        return {**self.info_, "warnings": []}


def _first_line(exc: BaseException) -> str:
    """The informative line of an error: the first, or the detail after a heading such as
    "Error(s) in loading state_dict for MLP:", or a TorchScript traceback's last line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and lines[0].endswith(":"):
        return lines[1]
    if len(lines) > 1 and "TorchScript interpreter" in lines[0]:
        return lines[-1]
    return lines[0]


@lru_cache(maxsize=4)
def _cached_load(path: str, size: int, mtime_ns: int) -> Any:
    return _load_weights_only(Path(path))


def _load_weights_only(path: Path) -> Any:
    return load_weights_only(path)


@register_teacher("network")
def _create_network(
    num_classes: int,
    in_shape: tuple[int, ...] | None = None,
    checkpoint: str | None = None,
    uri: str | None = None,
    arch: str | None = None,
    params: dict[str, Any] | None = None,
    input: str = "raw",
    device: str = "cpu",
    tracking_uri: str | None = None,
    **_: Any,
) -> NetworkTeacher:
    return NetworkTeacher(
        num_classes, in_shape, checkpoint=checkpoint, uri=uri, arch=arch, arch_kwargs=params, input=input,
        device=device, tracking_uri=tracking_uri,
    )


#: what the config reads before building one: its teachers arrive trained (not a cross-fitted candidate)
_create_network.learns = False
