"""The pipeline's own settings: which samples to make (:class:`SampleSettings`) and how (:class:`PipelineSettings`).

:class:`~afm_ray.recipe.TrainConfig` holds these and hands them down
(``config.sample_settings``); nothing in :mod:`afm_ray.pipeline` reads the training config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from afm_ray.samples.augment import AugmentConfig
from afm_ray.config import StrictModel
from afm_ray.models import ModelSpec, get_model_spec, validated_model_spec
from afm_ray.pipeline.dispatch import DispatchLimits
from afm_ray.descriptors.config import DescriptorsConfig
from afm_ray.sim.config import SimConfig


class DataSettings(StrictModel):
    """Molecules, split and rotations."""

    database: Path = Field(Path("data/qm9.parquet"), description="molecule database (afm-ray molecules …)")
    split: str = Field("dataset1", description="split column of the database (thesis: dataset1 or dataset2)")
    max_train_molecules: int | None = Field(None, ge=1, description="use at most this many training molecules")
    max_eval_molecules: int | None = Field(None, ge=1, description="use at most this many val / test molecules")
    rotations_per_molecule: int | None = Field(
        None, ge=1, le=100, description="best rotations by thesis Eq. 25 (default: the model's, 20 for dsh/es, 30 for xyz)")
    eval_rotations_per_molecule: int | None = Field(
        None, ge=1, le=100, description="best rotations of each val/test molecule in the fixed evaluation sets "
                                        "(default: the model's, as the thesis does in every split: 20 for dsh/es, "
                                        "30 for xyz)")
    rotation_candidates: int = Field(100, ge=1, description="candidate directions on the sphere (thesis 100)")
    rotation_beta_per_angstrom: float = Field(1.0, gt=0, description="β of the rotation score S (thesis 1 Å⁻¹)")
    fixed_set_dir: Path = Field(Path("data/fixed_sets"),
                                description="where simulated val/test sets are stored as Parquet shards")
    fixed_set_cache_mib: float | None = Field(
        None, ge=0, description="decoded validation shards each training rank keeps in memory after the first "
                                "epoch, MiB (a rank holds 1/W of the set; beyond the bound shards are re-read); "
                                "None = half the memory available when the rank starts, shared by the ranks of its "
                                "node (fixed_sets.cache_budget_mib)")


class PipelineSettings(StrictModel):
    """Simulation actors: how many, where, how much work each consumer keeps in flight, and when to give up.

    The dispatch rules behind these fields are in :mod:`afm_ray.pipeline.dispatch`."""

    num_sim_actors: int = Field(2, ge=1, description="simulation actors (each owns one OpenCL simulator)")
    sim_num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (fractional allowed: 0.5 = two actors per GPU, "
                                                       "one's host work overlapping the other's kernels; 0 = CPU OpenCL)")
    sim_num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per actor")
    sim_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources per actor, e.g. {sim_gpu: 1} (KubeRay worker groups)")
    max_in_flight_per_worker: int | None = Field(
        None, ge=1, description="at most this many batches made or being made for each train worker; None = bounded "
                                "by object_store_budget_mib_per_worker alone")
    object_store_budget_mib_per_worker: float = Field(
        2048.0, gt=0, description="object store (MiB) each train worker's batches may take, made or being made: the "
                                  "pool keeps making them while the worker validates or checkpoints (2 GiB ≈ 44 DSH "
                                  "batches of 32 in float32)")
    actor_queue_depth: int = Field(
        2, ge=1, description="calls an actor holds at once (one being made, one queued behind it so that it never "
                             "waits for the dispatcher); the rest wait in the pool's queue for whichever actor frees")
    opencl_device: str = Field("auto", description="auto | cpu | gpu | ray (the GPU Ray assigned the actor) | nvidia:<N> | index | name")
    augment_on: Literal["auto", "actor", "trainer"] = Field(
        "auto", description="where training batches are augmented: trainer = in torch on each training worker's device "
                            "from the raw Δf the actor ships (every simulated slice: ~2× the bytes, none of the actor's "
                            "CPU); actor = NumPy on the simulation actor; auto = trainer when the workers have GPUs. "
                            "Same draws either way: the batches are equal")
    raw_df_dtype: Literal["float32", "float16"] = Field(
        "float16", description="dtype of the raw Δf (Hz) the actors ship when the trainer augments: float16 halves "
                               "the bytes, with no effect on training beyond run-to-run noise (README: quickstart and "
                               "a short xyz run, float32 vs float16)")
    raw_df_slices: Literal["read", "all"] = Field(
        "read", description="which raw Δf slices the actors ship when the trainer augments: read = only those its "
                            "augmentation reads (the batch's seeded scan-height choice: K of nz, e.g. 10 of 20), all = "
                            "every simulated slice")
    target_dtype: Literal["float32", "float16"] = Field(
        "float16", description="dtype of the targets (Å, V; xyz classes and offsets in Å) shipped with raw Δf; the "
                               "trainer computes in float32 either way")
    prefetch_next_epoch: bool = Field(
        True, description="request the next two epochs' batches while the current one ends, validates and "
                          "checkpoints (made within object_store_budget_mib_per_worker)")
    batch_timeout_s: float = Field(
        300.0, gt=0, description="the most seconds a call to an actor may take (sent → result) before the batch is "
                                 "tried on another actor; the adaptive limit is timeout_p95_factor × the p95 of "
                                 "recent calls, at least batch_timeout_floor_s, at most this")
    batch_timeout_floor_s: float = Field(
        30.0, gt=0, description="the adaptive call timeout is never below this many seconds, nor batch_timeout_s "
                                "(and a slow call is hedged after at least half of it)")
    timeout_p95_factor: float = Field(8.0, gt=1, description="adaptive call timeout = this × p95 of recent calls (s)")
    hedge_p95_factor: float = Field(
        3.0, gt=1, description="a call slower than this × p95 of recent calls is sent to a second actor too (first "
                               "result wins; counts as an attempt)")
    max_attempts_per_batch: int = Field(
        3, ge=1, description="tries of a batch (each on another actor where there is one) before it is dropped "
                             "and reported; a rank waits at most max_attempts_per_batch × batch_timeout_s for a batch")
    consumer_lease_s: float = Field(
        60.0, gt=0, description="a train worker silent this many seconds (a stopped trial) loses its queued batches")
    actor_startup_timeout_s: float = Field(
        900.0, gt=0, description="seconds to wait for all simulation actors to be placed and build their simulator")


    @property
    def retry_budget_s(self) -> float:
        """The longest a train worker can wait for one batch before it is dropped (s)."""
        return self.max_attempts_per_batch * self.batch_timeout_s

    def dispatch_limits(self) -> DispatchLimits:
        return DispatchLimits(actor_queue_depth=self.actor_queue_depth,
                              timeout_floor_s=min(self.batch_timeout_floor_s, self.batch_timeout_s),
                              timeout_cap_s=self.batch_timeout_s, timeout_factor=self.timeout_p95_factor,
                              hedge_factor=self.hedge_p95_factor, lease_s=self.consumer_lease_s)

    def actor_identity(self) -> dict:
        """The fields the simulation pool (actors and dispatcher) is started with (the rest is each consumer's own)."""
        return self.model_dump(mode="json", include={"num_sim_actors", "sim_num_gpus", "sim_num_cpus",
                                                     "sim_resources", "opencl_device", "actor_queue_depth",
                                                     "batch_timeout_s", "batch_timeout_floor_s", "timeout_p95_factor",
                                                     "hedge_p95_factor", "consumer_lease_s"})


class SampleSettings(StrictModel):
    """Everything that turns a :class:`~afm_ray.samples.plan.BatchSpec` into a batch: model task, molecules, stages."""

    model: str = Field("dsh", description="the registered model whose inputs and targets are made")
    model_module: str | None = Field(None, description="the module that registers it, if not afm-ray's own")
    element_classes: list[list[str]] | None = Field(None, description="xyz element groups (None = one atom class)")
    data: DataSettings = Field(default_factory=DataSettings)
    train_rotations_per_molecule: int = Field(20, ge=1, description="rotations per training molecule")
    sim: SimConfig = Field(default_factory=SimConfig)
    descriptors: DescriptorsConfig = Field(default_factory=DescriptorsConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @model_validator(mode="after")
    def _registered(self) -> "SampleSettings":
        # validated again in every actor from JSON: this imports a plugin model's module there too
        validated_model_spec(self.model, self.model_module)
        return self

    @property
    def model_spec(self) -> ModelSpec:
        return get_model_spec(self.model, self.model_module)

    @property
    def eval_rotations_per_molecule(self) -> int:
        """Rotations of each validation / test molecule: ``data.eval_rotations_per_molecule`` or the model's."""
        return self.data.eval_rotations_per_molecule or self.model_spec.rotations_per_molecule

    def actor_identity(self) -> dict:
        """What the simulation actors make batches from (not the consumers' own settings, such as caches)."""
        return self.model_dump(mode="json", exclude={"data": {"fixed_set_cache_mib"}})

    def eval_identity(self) -> dict:
        """What determines a validation or test sample (the fixed sets' hash) besides the database's content:
        no training-only fields, not where files are."""
        data = self.data.model_dump(mode="json", include={"split", "max_eval_molecules",
                                                          "eval_rotations_per_molecule", "rotation_candidates",
                                                          "rotation_beta_per_angstrom"})
        data["eval_rotations_per_molecule"] = self.eval_rotations_per_molecule
        return {"model": self.model, "element_classes": self.element_classes, "data": data,
                "sim": self.sim.model_dump(mode="json", exclude={"device"}),
                "descriptors": self.descriptors.model_dump(mode="json"),
                "augment": self.augment.model_dump(mode="json")}
