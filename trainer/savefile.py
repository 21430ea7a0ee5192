"""Safe output names and atomic file writes.

:func:`resolve_output_path` turns a user-typed file name into a path that is guaranteed to be a
plain file inside the output folder: subfolders only where the caller allows them (``project/name``),
no ``..``, no absolute paths or drive letters, no control characters, no symlink that leads out of
the folder.

``if_exists`` policies:

* ``"increment"`` (default): ``name.safetensors`` if free, else ``name_00001.safetensors``,
  ``name_00002.safetensors``, ... : one more than the highest ``name_NNNNN`` already present (so
  numbers never go back after a deletion). Counters have at least 5 digits.
* ``"error"``: :class:`FileExistsError` naming the file and the fix.
* ``"overwrite"``: replace the existing file (only when explicitly chosen).

The writers put data in a temporary file in the same directory (``.<name>.<random>.tmp``), flush
and ``fsync`` it, then ``os.replace`` it over the target, so readers (ComfyUI's LoRA loader,
a crash, a full disk) never see a partial file. On any error the temp file is removed and the
target is left as it was. Two processes resolving the same ``increment`` name at the same instant
may pick the same name; the later ``os.replace`` wins (no partial file either way).
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
from typing import Callable, Dict, Mapping, Optional

import torch

log = logging.getLogger(__name__)

__all__ = [
    "IF_EXISTS",
    "validate_filename",
    "resolve_output_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_save_safetensors",
]

IF_EXISTS = ("increment", "error", "overwrite")
_COUNTER_DIGITS = 5
_WINDOWS_BAD = '<>:"|?*'
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(1, 10)} | {f"LPT{i}" for i in range(1, 10)}


def _check_component(part: str, filename: str) -> None:
    if part in (".", ".."):
        raise ValueError(f"file name {filename!r} contains a {part!r} component; give a name inside the output folder")
    if not part:
        raise ValueError(f"file name {filename!r} has an empty folder name (two separators in a row, or one at "
                         "the end)")
    bad = sorted({c for c in part if c in _WINDOWS_BAD})
    if bad:
        raise ValueError(f"file name {filename!r} contains {''.join(bad)!r}, which is not allowed in file names")
    if part != part.strip() or part.endswith("."):
        raise ValueError(f"file name {filename!r} has a part that starts or ends with a space or ends with a dot "
                         f"({part!r}); remove them")
    if part.split(".")[0].upper() in _WINDOWS_RESERVED:
        raise ValueError(f"file name {filename!r} uses {part!r}, a reserved device name on Windows; choose another "
                         "name")
    if len(part.encode("utf-8")) > 240:
        raise ValueError(f"file name {filename[:40]!r}... is too long (max 240 bytes per name)")


def validate_filename(filename: str, subfolders: bool = False) -> str:
    """Return ``filename`` if it is a safe name inside the output folder, else raise ``ValueError`` saying why.

    With ``subfolders``, ``project/name`` is allowed (``/`` or ``\\`` between parts, like ComfyUI's own save
    nodes); the result then uses ``/``. Absolute paths, drive letters, ``..`` and ``.`` parts never pass."""
    if not isinstance(filename, str):
        raise ValueError(f"file name must be text, got {type(filename).__name__}")
    name = filename
    if not name.strip():
        raise ValueError("file name is empty; type a name such as 'my_lora'")
    if "\x00" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"file name {filename!r} contains control characters; remove them")
    if re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"file name {filename!r} starts with a drive letter; give a name inside the output folder")
    if name.startswith(("/", "\\")) or os.path.isabs(name):
        raise ValueError(f"file name {filename!r} is an absolute path; give a name inside the output folder")
    parts = re.split(r"[\\/]", name)
    if ".." in parts:
        raise ValueError(f"file name {filename!r} contains a '..' component; give a name inside the output folder")
    if len(parts) > 1 and not subfolders:
        raise ValueError(f"file name {filename!r} contains a path separator ('/' or '\\'); subfolders are not "
                         "allowed here")
    for part in parts:
        _check_component(part, filename)
    return "/".join(parts)


def inside(folder_real: str, path: str) -> bool:
    """Whether ``path`` (symlinks resolved) lies strictly inside the real folder ``folder_real``."""
    real = os.path.realpath(path)
    try:
        return os.path.commonpath([folder_real, real]) == folder_real and real != folder_real
    except ValueError:  # different drives on Windows
        return False


def resolve_output_path(
    folder: str, filename: str, ext: str = ".safetensors", if_exists: str = "increment", subfolders: bool = False
) -> str:
    """Safe target path for ``filename`` in ``folder`` (see module doc for the rules).

    ``ext`` is appended unless the name already ends with it (case-insensitive). The folder need
    not exist yet. Returns an absolute path whose realpath lies inside ``folder``'s realpath.
    ``subfolders``: allow ``project/name`` (created on write); a subfolder that is a symlink leading
    outside ``folder`` is refused.
    """
    if if_exists not in IF_EXISTS:
        raise ValueError(f"if_exists must be one of {', '.join(IF_EXISTS)}, got {if_exists!r}")
    rel = validate_filename(filename, subfolders=subfolders)
    sub, _, name = rel.rpartition("/")
    if ext and not ext.startswith("."):
        ext = "." + ext
    if ext and not name.lower().endswith(ext.lower()):
        name = name + ext
    stem = name[: len(name) - len(ext)] if ext else name
    if ext and not stem:
        raise ValueError(f"file name {filename!r} has no name before {ext!r}")
    root_abs = os.path.abspath(folder)
    folder_real = os.path.realpath(root_abs)
    folder_abs = os.path.join(root_abs, *sub.split("/")) if sub else root_abs
    if sub and not inside(folder_real, folder_abs):
        raise ValueError(f"{folder_abs!r} resolves outside the output folder {root_abs!r} (symlink?); choose "
                         "another name")

    def check(path: str) -> str:
        if not inside(folder_real, path):
            raise ValueError(
                f"{path!r} resolves outside the output folder {root_abs!r} (symlink?); choose another name"
            )
        if os.path.isdir(path):
            raise ValueError(f"{path!r} is a folder; choose another file name")
        return path

    path = os.path.join(folder_abs, name)
    if not os.path.lexists(path) or if_exists == "overwrite":
        return check(path)
    if if_exists == "error":
        raise FileExistsError(
            f"{path} already exists; choose another file name, or set if-exists to 'increment' or 'overwrite'"
        )
    pattern = re.compile(re.escape(stem) + r"_(\d{%d,})" % _COUNTER_DIGITS + re.escape(ext) + r"$", re.IGNORECASE)
    highest = 0
    try:
        for entry in os.listdir(folder_abs):
            m = pattern.match(entry)
            if m:
                highest = max(highest, int(m.group(1)))
    except FileNotFoundError:
        pass
    n = highest + 1
    while True:
        cand = os.path.join(folder_abs, f"{stem}_{n:0{_COUNTER_DIGITS}d}{ext}")
        if not os.path.lexists(cand):
            return check(cand)
        n += 1


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------

def _fsync_dir(directory: str) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic(path: str, write: Callable[[str, int], None]) -> str:
    """Create a temp file next to ``path``, let ``write(tmp_path, fd)`` fill it, fsync, replace."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder; cannot write a file there")
    mode = None
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path)[:100] + ".", suffix=".tmp")
    try:
        try:
            write(tmp, fd)
        finally:
            try:
                os.close(fd)
            except OSError:
                pass
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode if mode is not None else 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)
    return path


def atomic_write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; returns the absolute path."""
    data = bytes(data)

    def write(tmp: str, fd: int) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    return _atomic(path, write)


def atomic_write_text(path: str, text: str, encoding: str = "utf-8") -> str:
    """Write ``text`` to ``path`` atomically; returns the absolute path."""
    return atomic_write_bytes(path, text.encode(encoding))


def _prepare_tensors(tensors: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    seen = set()
    for key, t in tensors.items():
        if not isinstance(key, str):
            raise TypeError(f"tensor names must be str, got {type(key).__name__} ({key!r})")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"value for {key!r} is a {type(t).__name__}, not a torch.Tensor")
        t = t.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        t = t.contiguous()
        storage = t.untyped_storage()
        whole = storage.nbytes() == t.numel() * t.element_size() and t.storage_offset() == 0
        if storage.data_ptr() in seen or not whole:
            t = t.clone()  # safetensors refuses tensors that share memory
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str, metadata: Optional[Mapping[str, str]] = None
) -> str:
    """Save ``tensors`` (made contiguous, on CPU) with string ``metadata`` to ``path`` atomically."""
    from safetensors.torch import save_file

    meta: Optional[Dict[str, str]] = None
    if metadata is not None:
        meta = {}
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(
                    f"safetensors metadata must be str -> str; {k!r} has a {type(v).__name__} value "
                    "(convert it with str() or json.dumps())"
                )
            meta[k] = v
    prepared = _prepare_tensors(tensors)

    def write(tmp: str, fd: int) -> None:
        os.close(fd)  # safetensors opens the path itself (Windows cannot share an open temp file)
        save_file(prepared, tmp, metadata=meta)

    return _atomic(path, write)
