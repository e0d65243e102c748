"""``afm-ray bench heavy-molecules``: seconds per heavy-set molecule, ETKDG + MMFF94 vs ETKDG + MMFF94 +
GFN2-xTB optimisation, interleaved (needs the heavy extra: RDKit, tblite).

    OMP_NUM_THREADS=1 afm-ray bench heavy-molecules [--molecules 40]

Both include the GFN2-xTB single point for the charges, as ``afm-ray molecules build-heavy`` does.
The two optimisers alternate molecule by molecule so that both see the same machine load; one
thread, as in a Ray task of one CPU. Prints median, mean and max per molecule and the ratio of means.
"""

from __future__ import annotations

import argparse
import statistics
import time


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "heavy-molecules", help="seconds per heavy-set molecule: MMFF94 vs MMFF94 + GFN2-xTB optimisation",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--molecules", type=int, default=40, help="candidates to time (default 40)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from afm_ray.molecules.heavy import OPTIMIZERS, SkipMolecule, build_molecule, candidates

    entries, _ = candidates(limit=args.molecules)
    seconds = {optimizer: [] for optimizer in OPTIMIZERS}
    for entry in entries:
        for optimizer in OPTIMIZERS:
            start = time.perf_counter()
            try:
                build_molecule(entry.smiles, entry.id, optimize=optimizer)
            except SkipMolecule:
                pass
            seconds[optimizer].append(time.perf_counter() - start)
    for optimizer, times in seconds.items():
        print(f"{optimizer}: median {statistics.median(times):.3f} s, mean {statistics.mean(times):.3f} s, "
              f"max {max(times):.2f} s per molecule ({len(times)} molecules)")
    print(f"gfn2 / mmff (means): {statistics.mean(seconds['gfn2']) / statistics.mean(seconds['mmff']):.1f}")
    return 0
