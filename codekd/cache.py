"""Teacher-output cache: a frozen teacher's outputs on one split, computed once and memory-mapped.

Distillation's cost is the teacher. In eval mode under `no_grad` it is deterministic, so its outputs on a
split can be computed once and reused by every student, method and seed that trains on that split.

A cache lives at `cache_dir(root, cache_key(...))`; the key hashes everything the outputs depend on
(teacher weights and config, the exact token ids, the stored fields and their precision), so a changed
input means a different directory and a stale cache is never read. Layout of a cache directory, for N
examples of n_i tokens (T = Σ n_i), L layers, width H, A attention heads and C classes:

- `lengths.npy`, int64 [N]: tokens per example; example i's token rows are `offsets[i]:offsets[i+1]`
  with `offsets = [0, cumsum(lengths)]`, and its attention rows likewise from the cumulative sums of n_i².
- `logits.npy`, float32 [N, C] (always stored, always fp32).
- `first_token.npy` [N, L+1, H]: each layer's first-token vector (stored with the hidden states too,
  as `run` gives both).
- `hidden_states.npy` [T, L+1, H]: every real token's vector at every layer (0: embeddings).
- `attentions.npy` [Σ n_i², L, A]: example i's (query, key) pairs in query-major order, then layer, head.
- `values.npy` [T, A, H/A]: every real token's last-layer value vector, per head (MiniLM's value relation).
- A method that reads only some layers of `hidden_states` or `attentions` (`Method.teacher_layers`) has only
  those stored (the manifest's `layers` names them); `TeacherCache.outputs` gives None for the others.
- `targets.npy` [T, F]: every real token's targets for one method (`codekd.methods.TeacherTargets`, CKD's
  relations), computed once from the teacher's outputs, which are then not stored unless the method reads them.
- `owner`: host and process id of the build (tells a later build whether a leftover temporary is stale).
- `manifest.json`, written last: what the cache holds and what it was built from.

Under several processes (`accelerate launch` / `torchrun`) each runs the teacher on every P-th batch of
the batches one process would run; the unpadded rows are gathered to the main process after every round
of P batches, and it alone writes, so the files are the same bytes as a one-process build's. A process
killed mid-way stops the build before the manifest and the rename: nothing looks complete.

Padding is never stored: `TeacherCache.outputs` pads with zeros, where a live teacher has whatever the
model computed at pad positions. Losses that mask pads see identical values; ones that do not (e.g.
CKD's `study_padding=True`) would not, and should run the teacher live.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Sequence
from contextlib import nullcontext
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate.utils import broadcast_object_list, gather_object
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from codekd.data.text import shown
from codekd.device import autocast, process_state, to_device
from codekd.encoding import EncodedData, batch_order
from codekd.io import atomic_dir, disk_errors, exclusive_lock, is_main_process, process_alive, read_json, write_json
from codekd.models.adapters import NEEDS, Outputs, run_frozen
from codekd.models.teacher import source_files

if TYPE_CHECKING:
    from codekd.methods import TeacherTargets

FORMAT = 1  # bump when the layout changes: it is part of every key
MANIFEST = "manifest.json"
OWNER = "owner"
FREE_MARGIN = 64 * 2**20  # bytes a cache build leaves free on its disk (the manifest, other writers)
DTYPES = {"fp16": (torch.float16, np.float16), "fp32": (torch.float32, np.float32)}
CHUNK = 16 * 2**20
console = Console(stderr=True, quiet=not is_main_process())


def data_fingerprint(items: list[dict]) -> str:
    """sha256 over the exact token ids (and token types) of every example, in order.

    The ids are what the teacher sees, so this covers the data, the tokenizer, the maximum length,
    truncation and any prefix at once. Each sequence is length-prefixed, so no two inputs collide.
    """
    h = hashlib.sha256()
    for item in items:
        for key in ("input_ids", "token_type_ids"):
            if key in item:
                ids = np.asarray(item[key], dtype=np.int64)
                h.update(f"{key}:{ids.size};".encode())
                h.update(ids.tobytes())
        h.update(b"|")
    return h.hexdigest()


def teacher_fingerprint(teacher_dir: str | Path) -> str:
    """sha256 over the teacher's weight files, configs and `codekd.json` (names and bytes), with its base
    model's for an adapter (`codekd.models.teacher.source_files`).

    Content, not path: a copied teacher keeps its caches, a re-trained one in the same place does not.
    """
    h = hashlib.sha256()
    for path in source_files(teacher_dir):
        h.update(f"{path.name}:{path.stat().st_size};".encode())
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    return h.hexdigest()


def stored_needs(needs: Sequence[str]) -> tuple[str, ...]:
    """What a cache for `needs` holds: the logits always, the first-token vectors with the hidden states."""
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"unknown model outputs {sorted(unknown)}; known: {NEEDS}")
    wanted = {"logits", *needs, *(["first_token"] if "hidden_states" in needs else [])}
    return tuple(n for n in NEEDS if n in wanted)


def key_inputs(teacher_dir: str | Path, task: str, split: str, items: list[dict], needs: Sequence[str],
               dtype: str, precision: str = "fp32", targets: TeacherTargets | None = None,
               layers: dict[str, list[int]] | None = None, same_as: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything a cache's content depends on, as names and fingerprints (recorded in its manifest).

    `precision` is the teacher's autocast precision (`TrainConfig.precision`): bf16 outputs differ from
    fp32 ones. `dtype` only matters when something besides the (always fp32) logits is stored. With a method's
    `targets`, the teacher's outputs stored are the ones it names, and the targets' name and parameters count;
    with `layers` (`Method.teacher_layers`), the layers kept. `same_as`, the key inputs of another cache of the
    same teacher and items, saves hashing them again.
    """
    if dtype not in DTYPES:
        raise ValueError(f"cache dtype {shown(dtype)}: expected one of {', '.join(DTYPES)}")
    stored = stored_needs(targets.stored if targets else needs)
    inputs = {"format": FORMAT, "task": task, "split": split, "needs": list(stored),
              "teacher": same_as["teacher"] if same_as else teacher_fingerprint(teacher_dir),
              "data": same_as["data"] if same_as else data_fingerprint(items),
              "dtype": dtype if len(stored) > 1 or targets else "fp32", "precision": precision}
    if targets:
        inputs["targets"] = target_key(targets)
    if layers:
        inputs["layers"] = {name: list(kept) for name, kept in sorted(layers.items())}
    return inputs


def target_key(targets: TeacherTargets) -> dict[str, Any]:
    """What a cache records of a method's targets: their name and parameters."""
    return {"name": targets.name, **targets.params}


def cache_key(teacher_dir: str | Path, task: str, split: str, items: list[dict], needs: Sequence[str],
              dtype: str, precision: str = "fp32", targets: TeacherTargets | None = None,
              layers: dict[str, list[int]] | None = None) -> str:
    """Content hash of `key_inputs`: changes with the teacher, the token ids, the stored fields and layers, the
    method's targets or their precision, and with nothing else (not the order of `needs`, not where the teacher
    lies)."""
    return key_of(key_inputs(teacher_dir, task, split, items, needs, dtype, precision, targets, layers))


def key_of(inputs: dict[str, Any]) -> str:
    """The cache key of already computed `key_inputs` (hashing the teacher's files is the costly part)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def cache_dir(root: str | Path, key: str) -> Path:
    return Path(root) / key


def default_cache_root() -> Path:
    """`$CODEKD_CACHE`, else `$XDG_CACHE_HOME/codekd`, else `~/.cache/codekd`."""
    if os.environ.get("CODEKD_CACHE"):
        return Path(os.environ["CODEKD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "codekd"


def _offsets(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each example's rows start and end [N+1]: token rows, and (query, key) pair rows."""
    return np.concatenate([[0], np.cumsum(lengths)]), np.concatenate([[0], np.cumsum(lengths ** 2)])


class TeacherCache:
    """A complete cache directory, memory-mapped: a batch's teacher `Outputs` without the teacher."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self.needs: tuple[str, ...] = tuple(manifest["needs"])
        self.lengths = np.load(path / "lengths.npy")
        self.offsets, self.pair_offsets = _offsets(self.lengths)
        names = [*self.needs, *(["targets"] if manifest.get("targets") else [])]
        self.layers: dict[str, dict[str, Any]] = manifest.get("layers") or {}
        self.arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in names}

    @classmethod
    def open(cls, path: str | Path) -> TeacherCache | None:
        """The cache at `path`, or None when there is none or it is not complete (no manifest yet)."""
        path = Path(path)
        if not (path / MANIFEST).is_file():
            return None
        return cls(path, read_json(path / MANIFEST))

    def covers(self, needs: Sequence[str]) -> bool:
        return set(needs) <= set(self.needs)

    def _all_layers(self, name: str, states: Tensor) -> tuple[Tensor | None, ...]:
        """(L', …) stored layers as the tuple of every layer, None where a layer was not stored."""
        if name not in self.layers:
            return tuple(states.unbind(0))
        every: list[Tensor | None] = [None] * self.layers[name]["of"]
        for state, i in zip(states.unbind(0), self.layers[name]["kept"], strict=True):
            every[i] = state
        return tuple(every)

    def _rows(self, name: str, offsets: np.ndarray, i: int) -> Tensor:
        return torch.from_numpy(np.array(self.arrays[name][offsets[i]:offsets[i + 1]]))

    def outputs(self, index: Tensor, device: torch.device | str = "cpu") -> Outputs:
        """The teacher's `Outputs` for the examples `index` (a batch's "index"), as `run_frozen` gives them
        on that batch with dynamic (right) padding: the same shapes, mask and values at real tokens, in
        float32; zeros at pad positions."""
        idx = index.tolist()
        lengths = self.lengths[idx]
        width, size = int(lengths.max()), len(idx)
        mask = (torch.arange(width) < torch.from_numpy(lengths)[:, None]).long()
        out = Outputs(logits=torch.from_numpy(self.arrays["logits"][idx]).to(device), mask=mask.to(device))
        if "first_token" in self.arrays:
            first = torch.from_numpy(self.arrays["first_token"][idx]).float().transpose(0, 1).contiguous()
            out.first_token = tuple(first.to(device).unbind(0))
        if "hidden_states" in self.arrays:
            _, layers, hidden = self.arrays["hidden_states"].shape
            states = torch.zeros(layers, size, width, hidden)
            for b, i in enumerate(idx):
                states[:, b, :lengths[b]] = self._rows("hidden_states", self.offsets, i).transpose(0, 1)
            out.hidden_states = self._all_layers("hidden_states", states.to(device))
        if "attentions" in self.arrays:
            _, layers, heads = self.arrays["attentions"].shape
            attn = torch.zeros(layers, size, heads, width, width)
            for b, i in enumerate(idx):
                n = int(lengths[b])
                attn[:, b, :, :n, :n] = self._rows("attentions", self.pair_offsets, i).view(n, n, layers, heads) \
                    .permute(2, 3, 0, 1)
            out.attentions = self._all_layers("attentions", attn.to(device))
        if "values" in self.arrays:
            out.values = self._tokens("values", idx, lengths, width).transpose(1, 2).to(device)
        if "targets" in self.arrays:
            out.targets = self._tokens("targets", idx, lengths, width).to(device)
        return out

    def _tokens(self, name: str, idx: list[int], lengths: np.ndarray, width: int) -> Tensor:
        """(B, width, …) float32: the token rows of `name` for the examples `idx`, zeros past each one's length."""
        padded = torch.zeros(len(idx), width, *self.arrays[name].shape[1:])
        for b, i in enumerate(idx):
            padded[b, :lengths[b]] = self._rows(name, self.offsets, i).float()
        return padded


def _running(owner: Path) -> bool:
    """Whether the build that wrote `owner` may still be running (unknown owners are assumed to be)."""
    try:
        host, pid = owner.read_text().split()
        return process_alive(host, int(pid))
    except (OSError, ValueError):
        return True


def _remove_stale(path: Path) -> None:
    """Delete the temporary siblings (`.name.*.tmp`) that builds killed outright left behind."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        if not _running(tmp / OWNER):
            shutil.rmtree(tmp, ignore_errors=True)


def _rows(out: Outputs, stored: Sequence[str], lengths: Sequence[int], dtype: torch.dtype,
          targets: TeacherTargets | None = None, layers: dict[str, list[int]] | None = None) -> dict[str, list]:
    """One batch's outputs (and a method's `targets` from them) as the cache stores them, per example and without
    padding, on the CPU: the logits in fp32, the rest in `dtype`, of `hidden_states` and `attentions` the `layers`
    kept (all without). Only these rows travel between processes."""
    def stacked(states: tuple[Tensor, ...], dim: int, name: str = "") -> np.ndarray:
        kept = [states[i] for i in layers[name]] if layers and name in layers else states
        return torch.stack([s.to(dtype) for s in kept], dim).cpu().numpy()

    rows: dict[str, list] = {"logits": list(out.logits.float().cpu().numpy())}
    if "first_token" in stored:
        rows["first_token"] = list(stacked(out.first_token, 1))
    if "hidden_states" in stored:
        hidden = stacked(out.hidden_states, 2, "hidden_states")  # (B, N, L+1, H)
        rows["hidden_states"] = [hidden[b, :n] for b, n in enumerate(lengths)]
    if "attentions" in stored:
        attn = np.moveaxis(stacked(out.attentions, 4, "attentions"), 1, -1)  # (B, N, N, L, A)
        rows["attentions"] = [attn[b, :n, :n].reshape(n * n, *attn.shape[3:]) for b, n in enumerate(lengths)]
    if "values" in stored:
        values = out.values.transpose(1, 2).to(dtype).cpu().numpy()  # (B, N, A, H/A)
        rows["values"] = [values[b, :n] for b, n in enumerate(lengths)]
    if targets:
        per_token = targets.compute(out).to(dtype).cpu().numpy()  # (B, N, F)
        rows["targets"] = [per_token[b, :n] for b, n in enumerate(lengths)]
    return rows


def _store(arrays: dict[str, np.ndarray], rows: dict[str, list], indices: Sequence[int], offsets: np.ndarray,
           pair_offsets: np.ndarray) -> None:
    """Write one batch's rows (`_rows`) into the cache's arrays at its examples' places."""
    for name, values in rows.items():
        for i, value in zip(indices, values, strict=True):
            if name in ("hidden_states", "values", "targets"):
                arrays[name][offsets[i]:offsets[i + 1]] = value
            elif name == "attentions":
                arrays[name][pair_offsets[i]:pair_offsets[i + 1]] = value
            else:
                arrays[name][i] = value


def build_cache(teacher: nn.Module, data: EncodedData, view: str, needs: Sequence[str], path: str | Path,
                dtype: str = "fp16", budget_bytes: int = 2 * 2**30, batch_size: int = 64,
                precision: str = "fp32", inputs: dict[str, Any] | None = None,
                targets: TeacherTargets | None = None,
                layers: dict[str, list[int]] | None = None) -> TeacherCache | None:
    """Run `teacher` once over the `view` encodings of `data` and cache what `needs` names at `path`; with a
    method's `targets`, those computed from what `needs` names, and of the outputs only what `targets.stored` does;
    of `hidden_states` and `attentions`, only the `layers` a method reads (`Method.teacher_layers`).

    Returns the cache, or None (having written nothing) when it would exceed `budget_bytes` or the disk's free
    space (less `FREE_MARGIN`); the caller then runs the teacher live. One build per key runs at a time (a lock
    beside it): a second waits for the first and then returns its cache. The size is known after one forward
    pass (on the longest batch: batches go longest first, so padding is least and a memory error shows at
    once). Logits are stored in fp32, the rest in `dtype`. The directory appears only when complete (`atomic_dir`);
    an existing complete cache at `path` is returned as it is. The teacher runs on this process's device with
    autocast at `precision` (`fp32`, `bf16`); `inputs` (`key_inputs`) is recorded in the manifest. Every process of
    a launch calls this and gets the cache; the teacher's work is shared out (see the module's notes).
    """
    path = Path(path)
    if dtype not in DTYPES:
        raise ValueError(f"cache dtype {shown(dtype)}: expected one of {', '.join(DTYPES)}")
    state = process_state()
    if state.is_main_process:
        with disk_errors(path.parent):
            path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")  # one build per key at a time; a second waits, then finds it
    with exclusive_lock(lock, f"teacher cache {path}", wait=True) if state.is_main_process else nullcontext():
        try:
            state.wait_for_everyone()
            return _build(teacher, data, view, needs, path, dtype, budget_bytes, batch_size, precision, inputs,
                          targets, layers or {})
        finally:  # a waiter that opened it already keeps its lock, and then finds the cache built
            if state.is_main_process:
                lock.unlink(missing_ok=True)


def _allocate(arrays: dict[str, np.ndarray]) -> None:
    """Reserve the disk blocks of the memory-mapped arrays now: a disk that fills up later is then an ENOSPC
    here, not a SIGBUS while the cache is written (memory-mapped files are sparse until written)."""
    for array in arrays.values():
        if hasattr(os, "posix_fallocate") and array.filename:
            with open(array.filename, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)


def _build(teacher: nn.Module, data: EncodedData, view: str, needs: Sequence[str], path: Path, dtype: str,
           budget_bytes: int, batch_size: int, precision: str, inputs: dict[str, Any] | None,
           targets: TeacherTargets | None, layers: dict[str, list[int]]) -> TeacherCache | None:
    """`build_cache`, under the key's lock."""
    computed = stored_needs(needs)
    stored = stored_needs(targets.stored) if targets else computed
    existing = TeacherCache.open(path)
    if existing is not None and existing.covers(stored):
        return existing
    state = process_state()
    main = state.is_main_process
    if main:
        _remove_stale(path)
    teacher = teacher.to(state.device)
    items, pad_id = data.views[view]
    only_view = EncodedData(data.labels, {view: (items, pad_id)})
    lengths = np.array(data.lengths(view), dtype=np.int64)
    batches = batch_order(lengths.tolist(), batch_size, bucket=True, chunk=len(items))  # one chunk: longest first
    mine = batches[state.process_index::state.num_processes]
    torch_dtype, np_dtype = DTYPES[dtype]

    counts: dict[str, int] = {}  # how many layers each per-layer output has, for `layers`' negative indices
    kept: dict[str, list[int]] = {}  # `layers` as non-negative indices, once `counts` is known

    def rows(indices: list[int]) -> dict[str, list]:
        with autocast(precision, state.device):
            out = run_frozen(teacher, to_device(only_view.collate(indices)[view], state.device), computed)
        if not counts:
            counts.update({name: len(getattr(out, name)) for name in layers if name in stored})
            kept.update({name: sorted({i % counts[name] for i in layers[name]}) for name in counts})
        return _rows(out, stored, lengths[indices].tolist(), torch_dtype, targets, kept)

    started = time.perf_counter()
    first = rows(mine[0]) if mine else None
    n = len(items)
    offsets, pair_offsets = _offsets(lengths)
    shapes: dict[str, tuple[int, ...]] = {}
    if main:  # from the longest batch, which is the main process's first
        shapes["logits"] = (n, len(first["logits"][0]))
        if "first_token" in stored:
            shapes["first_token"] = (n, *first["first_token"][0].shape)
        if "hidden_states" in stored:
            shapes["hidden_states"] = (int(offsets[-1]), *first["hidden_states"][0].shape[1:])
        if "attentions" in stored:
            shapes["attentions"] = (int(pair_offsets[-1]), *first["attentions"][0].shape[1:])
        if "values" in stored:
            shapes["values"] = (int(offsets[-1]), *first["values"][0].shape[1:])
        if targets:
            shapes["targets"] = (int(offsets[-1]), *first["targets"][0].shape[1:])
    free = shutil.disk_usage(path.parent).free if main else 0
    shapes, free = broadcast_object_list([(shapes, free)])[0]
    dtypes = {name: np.float32 if name == "logits" else np_dtype for name in shapes}
    size = lengths.nbytes + sum(int(np.prod(s)) * np.dtype(dtypes[k]).itemsize for k, s in shapes.items())
    if size > budget_bytes:
        console.print(f"teacher cache: needs {size / 2**30:.2f} GiB, budget {budget_bytes / 2**30:.2f} GiB")
        return None
    if size + FREE_MARGIN > free:
        console.print(f"teacher cache: needs {size / 2**30:.2f} GiB, only {free / 2**30:.2f} GiB free on "
                      f"{path.parent} (keeping {FREE_MARGIN // 2**20} MiB spare): the teacher runs live",
                      soft_wrap=True)  # one line, however long the path
        return None

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console, disable=not main)
    with atomic_dir(path, replace=True) if main else nullcontext() as tmp, progress:
        arrays: dict[str, np.ndarray] = {}
        if main:
            (tmp / OWNER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
            np.save(tmp / "lengths.npy", lengths)
            arrays = {name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtypes[name],
                                                      shape=shape) for name, shape in shapes.items()}
            _allocate(arrays)
        bar = progress.add_task(f"caching {view} outputs", total=len(batches))
        for step in range(-(-len(batches) // state.num_processes)):  # every process takes part in every round
            local = [(mine[step], first if step == 0 else rows(mine[step]))] if step < len(mine) else []
            first = None  # the longest batch's rows: free them before the next forward
            for indices, batch_rows in gather_object(local):  # one round: up to one batch per process
                if main:
                    _store(arrays, batch_rows, indices, offsets, pair_offsets)
                progress.advance(bar)
        if main:
            for array in arrays.values():
                array.flush()
            write_json(tmp / MANIFEST, {
                "format": FORMAT, "codekd_version": version("codekd"), "inputs": inputs, "view": view,
                "needs": list(stored), "targets": target_key(targets) if targets else None,
                "layers": {name: {"kept": kept[name], "of": counts[name]} for name in counts},
                "dtype": dtype, "precision": precision, "examples": n,
                "shapes": {name: list(shape) for name, shape in shapes.items()}, "bytes": size,
                "build_seconds": round(time.perf_counter() - started, 3)})
    state.wait_for_everyone()  # the main process has renamed the complete directory into place
    return TeacherCache.open(path)
