"""``afm-ray molecules …``: build, import, split and inspect the Parquet molecule database."""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

DESCRIPTION = """\
The molecule database is one Parquet file: a row per molecule with id, source, SMILES,
atomic numbers, positions (Å), partial charges (e), and one column per train/val/test split.
Every write is atomic: a failed or interrupted command leaves the existing file untouched.

examples:
  afm-ray molecules build-qm9 --out data/qm9.parquet          # QM9 from qm9pack + split dataset1
  afm-ray molecules build-heavy --out data/heavy.parquet      # Si/P/S/Cl/Br set from RDKit's SMILES lists, on Ray
  afm-ray molecules import heavy/*.xyz heavy/*.sdf --out data/heavy.parquet
  afm-ray molecules import mols.sdf --charges mmff --out data/heavy.parquet --append
  afm-ray molecules from-smiles 'ClC1=CC=C(Br)C=C1' --out data/heavy.parquet --append
  afm-ray molecules split data/qm9.parquet --name dataset2 --merge data/heavy.parquet --out data/ds2.parquet
  afm-ray molecules info data/qm9.parquet
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("molecules", help="build and inspect the molecule database",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="molecules_command", metavar="SUBCOMMAND")
    parser.set_defaults(handler=lambda args: parser.print_help() or 1)

    build = commands.add_parser("build-qm9", help="all of QM9 (qm9pack) → database, with the dataset1 split",
                                description="Read every QM9 molecule shipped by the qm9pack package (geometries "
                                            "in Å, Mulliken charges in e) into a new database and assign the "
                                            "thesis' dataset1 split (5000/1500/2500) when there are enough molecules.")
    build.add_argument("--out", required=True, type=Path, help="database file to write (.parquet)")
    build.add_argument("--qm9-csv", nargs="+", type=Path, metavar="CSV",
                       help="qm9pack-format CSV parts to read instead of the installed package (for tests)")
    build.add_argument("--seed", type=int, default=0, help="seed of the dataset1 split (default 0)")
    build.set_defaults(handler=_build_qm9)

    heavy = commands.add_parser(
        "build-heavy", help="a heavy set (Si, P, S, Cl, Br) like the thesis': SMILES → 3D + GFN2-xTB charges, on Ray",
        description="Build a heavy molecule set from the SMILES lists shipped in the RDKit wheel (NCI, WEHI, NIBR; "
                    "plus --extra-smiles files): filter to the thesis' heavy set (H C N O F Si P S Cl Br with one "
                    "of Si P S Cl Br, 2–47 atoms, neutral closed-shell, inside the 16 Å window in any rotation), "
                    "embed with ETKDG, optimise (MMFF94, or GFN2-xTB with --optimize gfn2), and take GFN2-xTB "
                    "partial charges (tblite). One Ray task per shard; finished shards (OUT.shards/) are kept, so "
                    "an interrupted build resumes when the same command runs again. Skipped molecules are "
                    "listed with their reason in OUT_STEM.skipped.csv. Not the thesis' DFT set: see README.")
    heavy.add_argument("--out", required=True, type=Path, help="database file to write (.parquet)")
    heavy.add_argument("--optimize", choices=("mmff", "gfn2"), default="mmff",
                       help="geometry optimiser: MMFF94 (default) or GFN2-xTB (tblite + ASE BFGS to 0.05 eV/Å; "
                            "about 20× the time per molecule)")
    heavy.add_argument("--limit", type=int, metavar="N", help="build at most N candidates, a few from each source")
    heavy.add_argument("--molecules", type=int, default=None, metavar="N",
                       help="keep the N built molecules whose element shares come closest to thesis Table 1's "
                            "heavy column (default 4317, the thesis' count; 0 = keep all)")
    heavy.add_argument("--extra-smiles", nargs="+", type=Path, default=(), metavar="SMI",
                       help="more .smi files ('SMILES [name]' per line) as further sources")
    heavy.add_argument("--no-rdkit-sources", action="store_true", help="use only the --extra-smiles files")
    heavy.add_argument("--shard-size", type=int, default=32, help="molecules per Ray task and shard file (default 32)")
    heavy.add_argument("--max-shards", type=int, metavar="N",
                       help="build at most N shards in this run and stop (resume by running again): for time-boxed jobs")
    heavy.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all; ignored with RAY_ADDRESS)")
    heavy.add_argument("--seed", type=int, default=0, help="seed of the ETKDG embedding (default 0)")
    heavy.add_argument("--fresh", action="store_true", help="discard the shards of an earlier build and start over")
    heavy.set_defaults(handler=_build_heavy)

    importer = commands.add_parser("import", help="your xyz (with charge column) / extended xyz / SDF files",
                                   description="Import molecules from files. xyz needs a 5th charge column "
                                               "(e), extended xyz a charges array, SDF PubChem MMFF94 charges — "
                                               "or pass --charges to compute them with RDKit.")
    importer.add_argument("files", nargs="+", type=Path, help="molecule files (.xyz, .extxyz, .sdf, .mol)")
    _add_output_options(importer)
    importer.add_argument("--charges", choices=("gasteiger", "mmff"),
                          help="compute partial charges with RDKit instead of reading them")
    importer.set_defaults(handler=_import_files)

    smiles = commands.add_parser("from-smiles", help="3D molecules from SMILES (RDKit ETKDG + MMFF94 + charges)")
    smiles.add_argument("smiles", nargs="*", help="SMILES strings (ids smiles:0, smiles:1, …)")
    smiles.add_argument("--file", type=Path, help=".smi file: 'SMILES [id]' per line")
    _add_output_options(smiles)
    smiles.add_argument("--charges", choices=("gasteiger", "mmff"), default="mmff",
                        help="partial-charge model (default mmff)")
    smiles.add_argument("--seed", type=int, default=0, help="seed of the 3D embedding")
    smiles.set_defaults(handler=_from_smiles)

    split = commands.add_parser("split", help="assign a reproducible train/val/test split (thesis Table 5)",
                                description="Assign the split NAME as a column of the database. dataset1 and "
                                            "dataset2 use the thesis' sizes; other names need --sizes. "
                                            "Light = only H,C,N,O,F; heavy = anything else.")
    split.add_argument("database", type=Path)
    split.add_argument("--name", required=True, help="dataset1, dataset2, or your own split name")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--sizes", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"), help="light molecules")
    split.add_argument("--heavy-sizes", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                       help="heavy molecules (default 0 0 0 for custom splits)")
    split.add_argument("--merge", type=Path, help="add this database's molecules first (e.g. a heavy set)")
    split.add_argument("--out", type=Path, help="write here instead of rewriting DATABASE")
    split.set_defaults(handler=_split)

    info = commands.add_parser("info", help="counts, element statistics (thesis Table 1), size range, splits")
    info.add_argument("database", type=Path)
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(handler=_info)


def _add_output_options(parser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="database file to write (.parquet)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--append", action="store_true", help="add to an existing database (ids must stay unique)")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing database")


def _write_new_molecules(table, args) -> int:
    import pyarrow as pa

    from afm_ray.errors import InputError
    from afm_ray.molecules.database import read_database, write_table_atomic

    if args.out.exists() and not args.out.is_dir() and not (args.append or args.overwrite):
        raise InputError(str(args.out), "database exists; pass --append to add to it or --overwrite to replace it")
    if args.append and args.out.exists():
        existing = read_database(args.out)
        table = pa.concat_tables([existing, table], promote_options="default")
    write_table_atomic(table, args.out)
    print(f"wrote {args.out}: {table.num_rows:,} molecules")
    return 0


def _build_qm9(args) -> int:
    from afm_ray.molecules.database import write_table_atomic
    from afm_ray.molecules.qm9 import read_qm9
    from afm_ray.molecules.splits import THESIS_SPLITS, assign_split, heavy_mask
    from afm_ray.molecules.summary import format_summary, summarize

    start = time.perf_counter()
    table = read_qm9(args.qm9_csv)
    sizes = THESIS_SPLITS["dataset1"]
    n_light = int((~heavy_mask(table)).sum())
    if n_light >= sum(sizes.light):
        table = assign_split(table, "dataset1", sizes, seed=args.seed)
    else:
        print(f"note: dataset1 split skipped: it needs {sum(sizes.light)} light molecules, found {n_light}; "
              f"assign a smaller one with `afm-ray molecules split {args.out} --name NAME --sizes …`")
    write_table_atomic(table, args.out)
    elapsed = time.perf_counter() - start
    print(format_summary(summarize(table), str(args.out)))
    print(f"built in {elapsed:.1f} s, {args.out.stat().st_size / 2**20:.1f} MiB")
    return 0


def _build_heavy(args) -> int:
    from afm_ray.errors import InputError
    from afm_ray.molecules.database import read_database
    from afm_ray.molecules.heavy import THESIS_HEAVY_MOLECULES, candidates
    from afm_ray.molecules.summary import format_summary, summarize
    from afm_ray.pipeline.heavy_build import build_heavy_set

    start = time.perf_counter()
    for name in ("limit", "molecules", "max_shards"):
        if getattr(args, name) is not None and getattr(args, name) < (0 if name == "molecules" else 1):
            raise InputError(f"--{name.replace('_', '-')}", f"must be positive, got {getattr(args, name)}")
    for module, package in (("rdkit", "rdkit"), ("tblite", "tblite")):
        if importlib.util.find_spec(module) is None:
            raise InputError("build-heavy", f"{package} is not installed: pip install 'afm-ray[heavy]'")
    if args.no_rdkit_sources and not args.extra_smiles:
        raise InputError("--no-rdkit-sources", "needs --extra-smiles: there would be no source")
    entries, filtered = candidates(args.extra_smiles, args.limit, include_rdkit=not args.no_rdkit_sources)
    print(f"{len(entries):,} candidates; filtered out: "
          + (", ".join(f"{reason} {count:,}" for reason, count in sorted(filtered.items(), key=lambda kv: -kv[1]))
             or "none"), flush=True)
    n_molecules = THESIS_HEAVY_MOLECULES if args.molecules is None else args.molecules or None
    report = build_heavy_set(args.out, entries, optimize=args.optimize, seed=args.seed, shard_size=args.shard_size,
                             n_molecules=n_molecules, max_shards=args.max_shards, num_cpus=args.num_cpus,
                             fresh=args.fresh)
    elapsed = time.perf_counter() - start
    if not report.complete:
        done = report.shards_resumed + report.shards_built
        print(f"stopped after {report.shards_built} shards (--max-shards): {done} of {report.shards_total} done; "
              f"run the same command again to resume ({elapsed:.1f} s)")
        return 0
    reasons: dict[str, int] = {}
    for entry in report.skipped:
        reason = entry.reason.split(":")[0]
        reasons[reason] = reasons.get(reason, 0) + 1
    print(f"built {report.molecules_built:,} molecules, skipped {len(report.skipped):,} "
          f"(listed in {report.skipped_csv})" + "".join(f"\n  {count:>6,}  {reason}" for reason, count in
                                                         sorted(reasons.items(), key=lambda kv: -kv[1])))
    print(format_summary(summarize(read_database(args.out)), str(args.out)))
    print(f"{report.molecules_in_database:,} molecules in {args.out}; built in {elapsed:.1f} s "
          f"({report.shards_built} shards built, {report.shards_resumed} resumed)")
    return 0


def _import_files(args) -> int:
    from tqdm import tqdm

    from afm_ray.molecules.database import molecules_to_table
    from afm_ray.molecules.io import read_molecule_file

    molecules = []
    for path in tqdm(args.files, desc="reading", unit="file", disable=len(args.files) < 20):
        molecules.extend(read_molecule_file(path, charges=args.charges))
    return _write_new_molecules(molecules_to_table(molecules), args)


def _from_smiles(args) -> int:
    from tqdm import tqdm

    from afm_ray.errors import InputError
    from afm_ray.molecules.database import molecules_to_table
    from afm_ray.molecules.smiles import molecule_from_smiles, read_smiles_file

    entries = [(smiles, f"smiles:{index}") for index, smiles in enumerate(args.smiles)]
    if args.file:
        entries += read_smiles_file(args.file)
    if not entries:
        raise InputError("from-smiles", "give SMILES strings or --file")
    molecules = [molecule_from_smiles(smiles, molecule_id, charges=args.charges, seed=args.seed)
                 for smiles, molecule_id in tqdm(entries, desc="embedding", unit="mol", disable=len(entries) < 20)]
    return _write_new_molecules(molecules_to_table(molecules), args)


def _split(args) -> int:
    import pyarrow as pa

    from afm_ray.errors import InputError
    from afm_ray.molecules.database import SPLIT_PREFIX, read_database, split_metadata, write_table_atomic
    from afm_ray.molecules.splits import THESIS_SPLITS, SplitSizes, assign_split, heavy_mask, split_counts

    table = read_database(args.database)
    if args.merge:
        merged = read_database(args.merge)
        metadata = split_metadata(table)
        merged = merged.drop_columns([name for name in merged.column_names if name.startswith(SPLIT_PREFIX)])
        table = pa.concat_tables([table, merged], promote_options="default")  # optional columns (licence) kept
        table = table.replace_schema_metadata({b"afm_ray.splits": json.dumps(metadata).encode()})
    if args.sizes:
        sizes = SplitSizes(tuple(args.sizes), tuple(args.heavy_sizes or (0, 0, 0)))
    elif args.name in THESIS_SPLITS:
        sizes = THESIS_SPLITS[args.name]
    else:
        raise InputError("--sizes", f"split {args.name!r} is not a thesis split (dataset1, dataset2): give --sizes")
    table = assign_split(table, args.name, sizes, seed=args.seed)
    out = args.out or args.database
    write_table_atomic(table, out)
    counts = split_counts(table, args.name)
    heavy = heavy_mask(table)
    groups = ", ".join(f"{group} " + "/".join(f"{count:,}" for count in split_counts(table, args.name, rows).values())
                       for group, rows in (("light", ~heavy), ("heavy", heavy)))
    print(f"wrote {out}: split {args.name} (seed {args.seed}) train {counts['train']:,} / val {counts['val']:,} / "
          f"test {counts['test']:,} ({groups})")
    return 0


def _info(args) -> int:
    from afm_ray.molecules.database import read_database
    from afm_ray.molecules.summary import format_summary, summarize

    summary = summarize(read_database(args.database))
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary, str(args.database)))
    return 0
