"""Hostile files for the security tests: each, if loaded unsafely, creates ``marker``."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import torch


class _RunsCode:
    """Unpickling this calls ``os.system`` (what an attacker's file would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: D105
        return (os.system, (f"touch {self.marker}",))


def code_pickle(marker: Path) -> bytes:
    """Raw pickle bytes whose loading runs ``touch marker``."""
    return pickle.dumps(_RunsCode(marker), protocol=2)


def exported_program(path: Path, in_features: int = 4, classes: int = 3) -> Path:
    """An honest ``torch.export`` program of a one-layer network."""
    model = torch.nn.Sequential(torch.nn.Linear(in_features, classes)).eval()
    torch.export.save(torch.export.export(model, (torch.zeros(2, in_features),)), str(path))
    return path


def _rewrite(source: Path, target: Path, change) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = change(info.filename, old.read(info.filename))
            new.writestr(info, data)
    return target


def pt2_with_pickled_sample_inputs(folder: Path, marker: Path) -> Path:
    """A real ``.pt2`` whose sample-inputs member is a code pickle: torch retries it with weights_only=False."""
    good = exported_program(folder / "good.pt2")
    return _rewrite(good, folder / "evil_inputs.pt2",
                    lambda name, data: code_pickle(marker) if name.endswith("sample_inputs/model.pt") else data)


def pt2_with_pickled_weight(folder: Path, marker: Path) -> Path:
    """A real ``.pt2`` whose weight config says ``use_pickle`` and whose weight file is a code pickle."""
    good = exported_program(folder / "good.pt2")
    config = next(n for n in zipfile.ZipFile(good).namelist() if n.endswith("model_weights_config.json"))
    entries = json.loads(zipfile.ZipFile(good).read(config))["config"]
    victim = entries["0.bias"]["path_name"]

    def change(name: str, data: bytes) -> bytes:
        if name == config:
            document = json.loads(data)
            document["config"]["0.bias"]["use_pickle"] = True
            return json.dumps(document).encode()
        if name.endswith(f"data/weights/{victim}"):
            return code_pickle(marker)
        return data

    return _rewrite(good, folder / "evil_weight.pt2", change)
