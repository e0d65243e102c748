"""Reading AFM stacks to predict on: NumPy files and Nanonis files.

Every reader returns :class:`AfmStack` objects: ``df`` of shape ``(C, nx, ny, nz)`` — C probe
channels (tips), x along axis 1, y along axis 2 (row 0 at the bottom, ``imshow(df[c, :, :, k].T,
origin="lower")``), z slices ordered **far → close** (k = 0 is the highest tip position) — with the
physical scan size in Å when the file records it.

Formats
-------
``.npz`` (NumPy archive)
    * ``df`` or ``stack`` (required): Δf in Hz (any unit works: slices are normalised), shape
      ``(nx, ny, nz)`` one stack; ``(N, nx, ny, nz)`` N stacks of one tip; ``(N, C, nx, ny, nz)``
      N stacks of C tips. A 4-D array with a ``tips`` key of length C is one stack
      ``(C, nx, ny, nz)`` instead.
    * ``scan_size_angstrom`` (optional): ``(2,)`` x, y extent of the scan in Å. Without it the
      scan is assumed to cover the model's training window (a note is printed).
    * ``tip`` (one name) or ``tips`` (C names, e.g. ``["CO", "Xe"]``) (optional): checked against
      the model's tips; without them the channels are taken in the model's order.
    * ``ids`` (optional): ``(N,)`` names of the stacks, used in output file names.

    The file ``afm-ray simulate`` writes (``df`` (N, nx, ny, nz), ``tip``, ``ids``,
    ``scan_size_angstrom``) is read as is.
``.npy``
    One array as ``df`` above, without metadata (tip CO assumed, scan = the model's window).
``.3ds`` (Nanonis grid spectroscopy)
    A Δf(z) curve per pixel: sweep signal ``Z (m)``, channel chosen by ``channel`` (default: the
    first forward channel whose unit is Hz or whose name contains "Freq"). Slices are ordered by
    decreasing Z (Nanonis: larger Z = tip farther away). Scan size from ``Grid settings``.
``.sxm`` (Nanonis image)
    One constant-height Δf image = one slice (forward direction; ``scan_dir = down`` images are
    flipped so that row 0 is the bottom). Give several ``.sxm`` files joined by commas to make a
    stack, far → close: ``far.sxm,mid.sxm,close.sxm``. Scan size from ``SCAN_RANGE``; the scan
    angle is ignored.

A comma-joined group of files makes one stack: ``.sxm`` images are stacked as slices; single-tip
``.npz``/``.npy`` stacks with different ``tip`` names are stacked as channels (ES model: CO, Xe).

Nanonis files are read with ``nanonispy2`` (PyPI). The readers are tested on small synthetic files
written to its layout (tests/integration/test_predict.py); real instrument files may differ in header details.
Nanonis' Z grows as the tip retracts, so decreasing Z is far → close. nanonispy2 zero-pads a short
``.3ds`` (and ignores extra bytes), so its data's length is checked against the header: a truncated
grid is refused, never predicted on (a ``.sxm`` of the wrong length fails in nanonispy2's reshape).
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from afm_ray.config import one_line
from afm_ray.errors import InputError

STACK_KEYS = ("df", "stack")
NUMPY_SUFFIXES = (".npz", ".npy")
NANONIS_SUFFIXES = (".3ds", ".sxm")
SUPPORTED_SUFFIXES = NUMPY_SUFFIXES + NANONIS_SUFFIXES
METRES_TO_ANGSTROM = 1e10


@dataclass(frozen=True)
class AfmStack:
    """One AFM stack to predict on.

    Attributes:
        name: stem for output files (file stem, plus the id or index for multi-stack files).
        df: (C, nx, ny, nz) float32, z far → close (Hz for Δf; any unit is fine, slices get normalised).
        tips: the probe of each channel, or None when the file does not say.
        scan_size_angstrom: (x, y) extent of the scan in Å, or None when the file does not say.
        source: the file(s) it was read from.
    """

    name: str
    df: np.ndarray
    tips: tuple[str, ...] | None
    scan_size_angstrom: tuple[float, float] | None
    source: str

    @property
    def n_slices(self) -> int:
        return int(self.df.shape[3])


def read_stacks(item: str | Path, channel: str | None = None) -> list[AfmStack]:
    """The stacks in one ``--input`` item: a file, or a comma-joined group of files (module docstring).

    ``channel``: Nanonis channel holding Δf (default: detected). Raises :class:`InputError` for a
    missing file, an unsupported suffix, a malformed array or non-finite values.
    """
    parts = [part.strip() for part in str(item).split(",") if part.strip()]
    if not parts:
        raise InputError("--input", "empty input name")
    if len(parts) == 1:
        stacks = _read_file(Path(parts[0]), channel)
    else:
        stacks = [_combine_group([_single(Path(part), channel) for part in parts], str(item))]
    for stack in stacks:
        _check_finite(stack)
    return stacks


def _read_file(path: Path, channel: str | None) -> list[AfmStack]:
    if not path.is_file():
        raise InputError(str(path), "no such file" if not path.exists() else "not a regular file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path)
    if suffix == ".npy":
        return _stacks_from_array(path, _load_npy(path), tips=None, scan_size=None, ids=None)
    if suffix == ".3ds":
        return [_read_3ds(path, channel)]
    if suffix == ".sxm":
        return [_read_sxm(path, channel)]
    raise InputError(str(path), f"unsupported file type {suffix or '(none)'!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")


def _single(path: Path, channel: str | None) -> AfmStack:
    stacks = _read_file(path, channel)
    if len(stacks) != 1:
        raise InputError(str(path), f"holds {len(stacks)} stacks; a comma-joined group takes files of one stack each")
    return stacks[0]


def _combine_group(stacks: list[AfmStack], where: str) -> AfmStack:
    """Stack single-slice images along z, or single-tip stacks along the channel axis."""
    shapes = {s.df.shape[1:3] for s in stacks}
    if len(shapes) != 1:
        raise InputError(where, f"files of one group must have the same pixels, got {sorted(shapes)}")
    sizes = {s.scan_size_angstrom for s in stacks}
    if len(sizes) != 1:
        raise InputError(where, f"files of one group must have the same scan size, got {sorted(map(str, sizes))}")
    name = "+".join(Path(s.source).stem for s in stacks)
    if all(s.n_slices == 1 and s.df.shape[0] == 1 for s in stacks):
        tips = {s.tips for s in stacks}
        if len(tips) != 1:
            raise InputError(where, "slices of one stack must come from one tip")
        df = np.concatenate([s.df for s in stacks], axis=3)
        return AfmStack(name, df, stacks[0].tips, stacks[0].scan_size_angstrom, where)
    if all(s.df.shape[0] == 1 for s in stacks):
        tips = [s.tips[0] if s.tips else None for s in stacks]
        if None in tips or len(set(tips)) != len(tips):
            raise InputError(where, "to combine stacks as channels every file needs its own 'tip' name "
                                    f"(got {tips})")
        depths = {s.n_slices for s in stacks}
        if len(depths) != 1:
            raise InputError(where, f"channel stacks must have the same number of slices, got {sorted(depths)}")
        df = np.concatenate([s.df for s in stacks], axis=0)
        return AfmStack(name, df, tuple(tips), stacks[0].scan_size_angstrom, where)
    raise InputError(where, "a comma-joined group is either single-slice images (.sxm) or single-tip stacks")


def _check_finite(stack: AfmStack) -> None:
    bad = ~np.isfinite(stack.df)
    if bad.any():
        channel, x, y, z = (int(v) for v in np.argwhere(bad)[0])
        raise InputError(stack.source, f"stack {stack.name!r} has {int(bad.sum())} non-finite values (NaN/inf), "
                                       f"first at channel {channel}, pixel ({x}, {y}), slice {z}; fill or crop them first")


# -- NumPy ----------------------------------------------------------------------------------------
def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(str(path), f"not a readable .npy array ({exc})") from None


_UNREADABLE_ARCHIVE = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)  # truncated or corrupt


def _read_npz(path: Path) -> list[AfmStack]:
    try:
        return _read_npz_archive(path)
    except InputError:
        raise
    except _UNREADABLE_ARCHIVE as exc:
        raise InputError(str(path), f"not a readable .npz archive, truncated or corrupt? ({one_line(exc, 200)})") from None


def _read_npz_archive(path: Path) -> list[AfmStack]:
    with np.load(path, allow_pickle=False) as archive:
        key = next((k for k in STACK_KEYS if k in archive.files), None)
        if key is None:
            raise InputError(str(path), f"no stack: expected a key {' or '.join(STACK_KEYS)!r}, found {archive.files}")
        array = archive[key]
        tips = _tip_names(archive, path)
        scan_size = None
        if "scan_size_angstrom" in archive.files:
            size = np.asarray(archive["scan_size_angstrom"], dtype=np.float64).ravel()
            if size.shape != (2,) or not np.all(np.isfinite(size)) or np.any(size <= 0):
                raise InputError(str(path), f"scan_size_angstrom must be two positive numbers (x, y Å), got {size.tolist()}")
            scan_size = (float(size[0]), float(size[1]))
        ids = [str(v) for v in np.atleast_1d(archive["ids"])] if "ids" in archive.files else None
    return _stacks_from_array(path, array, tips, scan_size, ids)


def _tip_names(archive, path: Path) -> tuple[str, ...] | None:
    if "tips" in archive.files:
        return tuple(str(t) for t in np.atleast_1d(archive["tips"]))
    if "tip" in archive.files:
        tip = np.atleast_1d(archive["tip"])
        if tip.size != 1:
            raise InputError(str(path), f"'tip' must be one name; use 'tips' for several channels, got {tip.tolist()}")
        return (str(tip[0]),)
    return None


def _stacks_from_array(path: Path, array: np.ndarray, tips: tuple[str, ...] | None,
                       scan_size: tuple[float, float] | None, ids: list[str] | None) -> list[AfmStack]:
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise InputError(str(path), f"stack must be numeric, got dtype {array.dtype}")
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3:
        stacks = array[None, None]
    elif array.ndim == 4 and tips is not None and len(tips) > 1:
        stacks = array[None]
    elif array.ndim == 4:
        stacks = array[:, None]
    elif array.ndim == 5:
        stacks = array
    else:
        raise InputError(str(path), f"stack must be (nx, ny, nz), (N, nx, ny, nz) or (N, C, nx, ny, nz); got shape {array.shape}")
    if min(stacks.shape[2:]) < 1:
        raise InputError(str(path), f"stack is empty: shape {array.shape}")
    if tips is not None and len(tips) != stacks.shape[1]:
        raise InputError(str(path), f"{len(tips)} tip names {list(tips)} for {stacks.shape[1]} channels")
    count = stacks.shape[0]
    if ids is not None and len(ids) != count:
        raise InputError(str(path), f"{len(ids)} ids for {count} stacks")
    names = ([path.stem] if count == 1 else
             [f"{path.stem}_{_safe(ids[i]) if ids else i}" for i in range(count)])
    return [AfmStack(names[i], np.ascontiguousarray(stacks[i]), tips, scan_size, str(path)) for i in range(count)]


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


# -- Nanonis --------------------------------------------------------------------------------------
def _nanonis():
    try:
        import nanonispy2
    except ImportError:
        raise InputError("--input", "reading Nanonis files needs nanonispy2: pip install nanonispy2") from None
    return nanonispy2


def _pick_channel(names: list[str], units: list[str], requested: str | None, path: Path) -> str:
    if requested is not None:
        if requested not in names:
            raise InputError(str(path), f"no channel {requested!r}; channels: {names}")
        return requested
    for name, unit in zip(names, units):
        if "[bwd]" not in name and (unit.strip().lower() == "hz" or "freq" in name.lower()):
            return name
    raise InputError(str(path), f"no frequency-shift channel found (unit Hz or 'Freq' in the name); "
                                f"pass --channel, one of {names}")


def _read_3ds(path: Path, channel: str | None) -> AfmStack:
    nanonispy2 = _nanonis()
    try:
        grid = nanonispy2.read.Grid(str(path))
    except Exception as exc:  # the reader raises KeyError/ValueError/... for malformed headers
        raise InputError(str(path), f"cannot read Nanonis grid: {one_line(exc, 200)}") from None
    header = grid.header
    sweep = str(header.get("sweep_signal", ""))
    if not sweep.lower().startswith("z"):
        raise InputError(str(path), f"grid sweeps {sweep!r}, not Z: an AFM stack needs Δf(z) curves")
    names = [str(c) for c in header["channels"]]
    units = [name[name.rfind("(") + 1:name.rfind(")")] if "(" in name else "" for name in names]
    chosen = _pick_channel(names, units, channel, path)
    nx, ny = (int(v) for v in header["dim_px"])
    values_per_pixel = int(header["num_parameters"]) + int(header["num_sweep_signal"]) * len(names)
    _check_data_length(path, grid, nx * ny * values_per_pixel,
                       f"{nx}×{ny} px × {values_per_pixel} values (parameters + points × channels)")
    data = np.asarray(grid.signals[chosen], dtype=np.float64)  # (ny, nx, n_sweep), rows = y
    z_values = np.asarray(grid.signals["sweep_signal"], dtype=np.float64)
    order = np.argsort(-z_values, kind="stable")  # far (large Z) → close
    df = data.transpose(1, 0, 2)[:, :, order][None].astype(np.float32)
    size = tuple(float(v) * METRES_TO_ANGSTROM for v in header["size_xy"])
    return AfmStack(path.stem, np.ascontiguousarray(df), None, (size[0], size[1]), str(path))


def _read_sxm(path: Path, channel: str | None) -> AfmStack:
    nanonispy2 = _nanonis()
    try:
        scan = nanonispy2.read.Scan(str(path))
    except Exception as exc:  # the reader raises KeyError/ValueError/... for malformed headers
        raise InputError(str(path), f"cannot read Nanonis scan: {one_line(exc, 200)}") from None
    header = scan.header
    info = header.get("data_info", {})
    names = [str(n) for n in info.get("Name", ())]
    units = [str(u) for u in info.get("Unit", ())]
    chosen = _pick_channel(names, units, channel, path)
    image = np.asarray(scan.signals[chosen]["forward"], dtype=np.float64)  # (ny, nx), rows = y
    if str(header.get("scan_dir", "up")).strip().lower() == "down":
        image = image[::-1]
    df = image.T[None, :, :, None].astype(np.float32)
    size = tuple(float(v) * METRES_TO_ANGSTROM for v in header["scan_range"])
    return AfmStack(path.stem, np.ascontiguousarray(df), None, (size[0], size[1]), str(path))


def _check_data_length(path: Path, reader, n_values: int, layout: str) -> None:
    """Refuse a Nanonis grid whose data after the header is not the ``n_values`` values the header
    describes (``layout``, for the message): nanonispy2 would zero-pad a short one."""
    value_bytes = np.dtype(reader.data_format).itemsize
    expected = n_values * value_bytes
    found = path.stat().st_size - reader.byte_offset
    if found != expected:
        state = "truncated" if found < expected else "longer than its header says"
        raise InputError(str(path), f"{state}: the header's {layout} need {expected} bytes of data "
                                    f"({value_bytes}-byte values), the file holds {found}")


def with_name(stack: AfmStack, name: str) -> AfmStack:
    """A copy of ``stack`` under another output name."""
    return replace(stack, name=name)
