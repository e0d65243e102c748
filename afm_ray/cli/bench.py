"""``afm-ray bench …``: throughput benchmarks that print figures (never timed unit tests).

Each benchmark lives in ``afm_ray/bench/<name>.py`` (the one home of benchmarks; ``benchmarks/`` keeps only the
GPU shell drivers) and exposes ``register(subparsers)``; its heavy imports wait for its ``run``.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARK_MODULES: tuple[str, ...] = (
    "afm_ray.bench.models", "afm_ray.bench.sim", "afm_ray.bench.descriptors", "afm_ray.bench.batch",
    "afm_ray.bench.pipeline", "afm_ray.bench.predict", "afm_ray.bench.train_step",
    # comparisons and one-off studies: ppafm as the reference, two checkouts, Ray Data, sweeps, the heavy set
    "afm_ray.bench.sim_vs_ppafm", "afm_ray.bench.published_on_ppafm", "afm_ray.bench.batch_host_ab",
    "afm_ray.bench.ray_data_stream", "afm_ray.bench.sweep_concurrency", "afm_ray.bench.heavy_molecules")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="measure throughput (simulator, models, pipeline)",
        description="Benchmarks print median figures of several runs; compare ratios from one run.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_subparsers = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for name in BENCHMARK_MODULES:
        importlib.import_module(name).register(bench_subparsers)
    parser.set_defaults(handler=lambda args: parser.print_help() or 1)
