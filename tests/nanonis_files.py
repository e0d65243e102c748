"""Nanonis files written to nanonispy2's layout (tests/integration/test_predict.py, tests/unit/cli/test_bad_inputs.py)."""

from __future__ import annotations

import numpy as np


def write_3ds(path, df: np.ndarray, size_angstrom: tuple[float, float], z_metres: np.ndarray) -> None:
    """A Nanonis grid: Δf(z) per pixel, ``df`` (nx, ny, n) with ``z_metres`` (n,) the sweep (Z (m))."""
    nx, ny, n = df.shape
    header = [f'Grid dim="{nx} x {ny}"', f"Grid settings=0;0;{size_angstrom[0] * 1e-10};{size_angstrom[1] * 1e-10};0",
              'Sweep Signal="Z (m)"', 'Fixed parameters="Sweep Start;Sweep End"',
              'Experiment parameters="X (m);Y (m);Z (m)"', "# Parameters (4 byte)=5", f"Experiment size (bytes)={4 * n}",
              f"Points={n}", 'Channels="OC M1 Freq. Shift (Hz)"', "Delay before measuring (s)=0", 'Experiment="Grid"',
              'Start time="01.01.2026 00:00:00"', 'End time="01.01.2026 01:00:00"', 'User=""', 'Comment=""', ":HEADER_END:"]
    pixels = np.zeros((ny, nx, 5 + n), dtype=">f4")  # rows are y
    pixels[:, :, 0], pixels[:, :, 1] = z_metres[0], z_metres[-1]
    pixels[:, :, 5:] = df.transpose(1, 0, 2)
    path.write_bytes(("\r\n".join(header) + "\r\n").encode() + pixels.tobytes())


def write_sxm(path, image: np.ndarray, size_angstrom: tuple[float, float], scan_dir: str = "up") -> None:
    """A Nanonis image of one Δf slice ``image`` (nx, ny); row 0 of the file is the first scan line."""
    nx, ny = image.shape
    rows = image.T if scan_dir == "up" else image.T[::-1]  # (ny, nx), first recorded line first
    header = [":NANONIS_VERSION:", "2", ":SCAN_PIXELS:", f"{nx} {ny}", ":SCAN_TIME:", "1 1", ":SCAN_RANGE:",
              f"{size_angstrom[0] * 1e-10} {size_angstrom[1] * 1e-10}", ":SCAN_OFFSET:", "0 0", ":SCAN_ANGLE:", "0",
              ":SCAN_DIR:", scan_dir, ":BIAS:", "0", ":ACQ_TIME:", "1", ":DATA_INFO:",
              "\tChannel\tName\tUnit\tDirection\tCalibration\tOffset", "\t14\tOC_M1_Freq._Shift\tHz\tboth\t1\t0",
              "", ":SCANIT_END:"]
    data = np.stack([rows, rows[:, ::-1]]).astype(">f4")  # forward, backward
    path.write_bytes(("\n".join(header) + "\n").encode() + b"\n\n\x1a\x04" + data.tobytes())
