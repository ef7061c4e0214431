"""The run config schema: one typed object shared by `mixer train` and every sweep trial.

A config is data: a YAML mapping with the sections `model`, `data`, `train` and `eval`. Unknown keys and
wrong types are errors that name the key path, so a typo never silently falls back to a default.

Every rule about a run config lives here, as a validator of these models, and so does every setting derived
from others (filled in by a validator), so `mixer train`, `mixer data`, `mixer sweep validate`, the sweep plan
and every trial see the same config and refuse the same configs with the same messages. Reading configs and
`--set` overrides is `mixer_core.config_io`; formatting validation errors is `mixer_core.config_messages`.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from mixer_core.config_messages import shown, suggestion
from mixer_core.variants import VARIANTS

DATASET_NAMES = (
    "digits",
    "mnist_idx",
    "cifar10",
    "cifar100",
    "mnist",
    "fashion_mnist",
    "imagefolder",
    "parquet",
    "synthetic",
)
# Section 3.4 compares "patches_and_pixels_within_patches" (patch order and in-patch pixels) against "pixels" (global)
PERMUTATIONS = ("none", "patches", "pixels_within_patches", "patches_and_pixels_within_patches", "pixels")
RANDAUGMENT_MAX_MAGNITUDE = 20  # the paper's Appendix B searches RandAugment magnitudes up to 20
SOURCES_WITHOUT_PATH = ("digits", "synthetic")  # every other source reads its files from data.path
# Run lengths past any real run (the paper's longest: 7 epochs of JFT-300M, about 2e9 examples), so a typo such as
# `epochs: 1.0e+300` is refused instead of planned as infinite FLOPs.
MAX_EPOCHS, MAX_STEPS, MAX_EXAMPLES = 100_000, 10**10, 10**13


class StrictModel(BaseModel):
    """The rules every config and spec model shares: unknown keys, NaN and ±inf (also as text, `'inf'`) and
    true/false where a number belongs are errors, not silently taken."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        accepted = typing.get_args(annotation) or (annotation,)
        if isinstance(value, bool) and bool not in accepted and ({int, float} & set(accepted)):
            raise ValueError(f"expected a number, got {str(value).lower()}")
        return value


class _Section(StrictModel):
    model_config = ConfigDict(validate_assignment=True)


class ModelConfig(_Section):
    """Which network to train: a Mixer variant from `mixer_core.model.VARIANTS`, or a timm baseline."""

    variant: str = "Ti/4"
    timm_model: str | None = None  # a timm model name trained instead of a Mixer (baselines, issue 6)
    timm_patch_size: int | None = Field(None, gt=0)  # a timm ViT's patch size at CPU scale (e.g. 7 for 28 px)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    stoch_depth: float = Field(0.0, ge=0.0, lt=1.0)
    gelu_approximate: Literal["none", "tanh"] = "none"
    head_bias_init: float = 0.0
    # Recompute each block's activations in the backward pass instead of keeping them: a Mixer keeps one
    # (tokens x hidden) tensor per block instead of about seven (mixer_core.memory), for ~1/3 more compute.
    grad_checkpointing: bool = False

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, variant: str) -> str:
        if variant not in VARIANTS:
            raise ValueError(f"unknown Mixer variant {shown(variant)}{suggestion(variant, list(VARIANTS))}")
        return variant

    @property
    def name(self) -> str:
        """What a run trains, for logs and MLflow tags: a Mixer variant (`Ti/4`) or a timm model name."""
        return self.timm_model or self.variant


class AugmentConfig(_Section):
    """Training-time augmentation (paper Appendix B); all off by default."""

    inception_crop: bool = False
    flip: bool = False
    randaugment_magnitude: int = Field(0, ge=0, le=RANDAUGMENT_MAX_MAGNITUDE)  # 0 switches RandAugment off
    randaugment_layers: int = Field(2, ge=1)
    mixup: float = Field(0.0, ge=0.0)  # mixup alpha; 0 switches mixup off


class DataConfig(_Section):
    """One dataset, its nested training fraction, and the held-out splits carved from it."""

    name: Literal[DATASET_NAMES] = "digits"  # type: ignore[valid-type]
    path: str | None = None  # root folder, IDX folder, image folder, or Parquet glob/URL
    download: bool = False  # torchvision sources only
    image_size: int | None = Field(None, gt=0)  # resize to this square size; None keeps the native size
    # Un-augmented images (evaluation, few-shot, training without Inception crop): resize the shorter side to this,
    # then centre-crop image_size (big_vision: resize_small(256) | central_crop(224)); None squashes instead.
    eval_resize: int | None = Field(None, gt=0)
    fraction: float = Field(1.0, gt=0.0, le=1.0)  # nested subset of the training split (JFT subset study)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # "upstream validation" carved from training data
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)  # for sources without a test split of their own
    batch_size: int = Field(128, gt=0)
    num_workers: int = Field(0, ge=0)  # DataLoader workers of the in-memory path
    # Streaming (Parquet through Ray Data, `sweeps.stream`): "auto" streams Parquet sources and keeps every
    # other source in memory. The decoding tasks run `loader_processes` at once (None: Ray Data scales them),
    # each on one CPU plus `loader_resources` (e.g. {data_node: 1} keeps them on CPU-only nodes that offer it).
    stream: Literal["auto"] | bool = "auto"
    loader_processes: int | None = Field(None, gt=0)
    loader_resources: dict[str, float] = {}
    loader_buffer_mb: int = Field(256, gt=0)  # object store memory the stream's blocks may hold at once
    shuffle_buffer: int = Field(1024, ge=0)  # examples per training process shuffled locally after decoding
    augment: AugmentConfig = AugmentConfig()
    permutation: Literal[PERMUTATIONS] = "none"  # type: ignore[valid-type]
    permutation_seed: int = 0
    permutation_patch_size: int | None = Field(None, gt=0)  # the patch size patch permutations cut (see below)
    synthetic_examples: int = Field(6000, gt=0)
    synthetic_classes: int = Field(10, gt=1)
    synthetic_difficulty: float = Field(0.5, ge=0.0, le=1.0)
    # The Mixer's patch size, filled in by `RunConfig` (not a field: a dump of the config, hashed by the sweep
    # spec and re-validated with another model.variant by a trial, must not carry one variant's patch size).
    _model_patch_size: int | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _path_for_sources_that_read_files(self) -> DataConfig:
        if self.path is None and self.name not in SOURCES_WITHOUT_PATH:
            raise ValueError(f"name {self.name} reads its files from path; set data.path (a folder, glob or URL)")
        if self.stream is True and self.name != "parquet":
            raise ValueError(
                f"stream is true but name is {self.name}; only Parquet streams (write shards with "
                f"`mixer data convert {self.name} DEST`, then set name: parquet and path: DEST)"
            )
        return self

    @model_validator(mode="after")
    def _crop_fits(self) -> DataConfig:
        if self.eval_resize is not None and self.image_size is not None and self.eval_resize < self.image_size:
            raise ValueError(f"eval_resize {self.eval_resize} is smaller than image_size {self.image_size}: "
                             "the centre crop would not fit")
        return self

    @property
    def streams(self) -> bool:
        """Whether training data streams through Ray Data (Parquet, unless `stream: false`)."""
        return self.name == "parquet" and self.stream is not False

    @property
    def permuted_patch_size(self) -> int | None:
        """The patch size patch permutations cut: `permutation_patch_size`, else the Mixer's own (section 3.4
        shuffles the model's patches), which `RunConfig` fills in; None for a timm baseline that names none."""
        return self.permutation_patch_size or self._model_patch_size


class TrainConfig(_Section):
    """The optimisation recipe: `pretrain` (Adam, linear schedule) or `finetune` (SGD momentum, cosine)."""

    recipe: Literal["pretrain", "finetune"] = "pretrain"
    epochs: float | None = Field(10, gt=0, le=MAX_EPOCHS)
    steps: int | None = Field(None, gt=0, le=MAX_STEPS)  # budget mode: a fixed step count whatever the fraction
    examples: int | None = Field(None, gt=0, le=MAX_EXAMPLES)  # budget mode: a fixed number of examples seen
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0.0)
    loss: Literal["softmax", "sigmoid"] = "softmax"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # Per-device examples of one forward/backward; data.batch_size stays the optimizer's (global) batch, reached
    # by accumulating batch_size / (micro_batch_size x workers) micro-steps. None: one micro-step per step.
    micro_batch_size: int | None = Field(None, gt=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "tpu"] = "auto"  # auto: CUDA when torch sees one, else CPU
    bf16: bool = True  # autocast on CUDA and TPU; ignored on CPU
    compile: Literal["auto"] | bool = "auto"  # auto: torch.compile a Mixer on CUDA, nothing else
    eval_every_epochs: float = Field(1.0, gt=0.0)
    # replaces eval_every_epochs when set: equal-step budgets (every fraction) evaluate alike
    eval_every_steps: int | None = Field(None, gt=0)
    log_every_steps: int = Field(50, gt=0)
    checkpoint_every_epochs: float | None = Field(1.0, gt=0.0)
    init_from: str | None = None  # our checkpoint or a timm Mixer state dict (fine-tuning)

    @model_validator(mode="after")
    def _one_length(self) -> TrainConfig:
        if self.steps is not None and self.examples is not None:
            raise ValueError("steps and examples are both set; a budget is one of them (set the other to null)")
        if self.epochs is None and self.steps is None and self.examples is None:
            raise ValueError("epochs, steps and examples are all unset; set one of them")
        return self


class FewshotDatasetConfig(DataConfig):
    """A downstream dataset for few-shot linear evaluation (the paper's 5-shot transfer): a data config whose
    metrics carry `label` (default: its name). `image_size` defaults to the pre-training images' size."""

    label: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

    @property
    def metric_label(self) -> str:
        """The name its metrics carry: `fewshot_<label>_<k>shot_top1`."""
        return self.label or self.name


class EvalConfig(_Section):
    """Evaluations: top-1 at every evaluation; few-shot linear, when `fewshot_shots` is not empty, on every
    downstream dataset of `fewshot_datasets` and (when `fewshot_pretraining`) on the pre-training data's own
    splits, at the end and whenever upstream validation top-1 improves (the `best/` metrics)."""

    fewshot_shots: list[int] = [1, 5, 10, 25]
    fewshot_seeds: int = Field(3, gt=0)
    fewshot_l2: float = Field(1024.0, ge=0.0)
    fewshot_datasets: list[FewshotDatasetConfig] = []
    fewshot_pretraining: bool = True  # shots from the pre-training subset itself; the study specs turn it off
    fewshot_every_evaluation: bool = False  # few-shot curves (the permutation study's Figure 4), not just the end
    max_examples: int | None = Field(None, gt=0)  # validation and test examples evaluated (all when None)

    @field_validator("fewshot_shots")
    @classmethod
    def _positive_shots(cls, shots: list[int]) -> list[int]:
        if any(s <= 0 for s in shots):
            raise ValueError(f"shots must be positive, got {shots}")
        return shots

    @field_validator("fewshot_datasets")
    @classmethod
    def _distinct_labels(cls, datasets: list[FewshotDatasetConfig]) -> list[FewshotDatasetConfig]:
        labels = [dataset.metric_label for dataset in datasets]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"labels must differ (they name the metrics); {', '.join(repeated)} repeated: set `label`")
        return datasets

    @property
    def fewshot_labels(self) -> list[str]:
        """The downstream labels the few-shot metrics carry, in config order."""
        return [dataset.metric_label for dataset in self.fewshot_datasets]

    @property
    def scores_pretraining_fewshot(self) -> bool:
        """Whether few-shot draws shots from the pre-training data itself (and so needs its images decoded)."""
        return self.fewshot_pretraining and bool(self.fewshot_shots)


class RunConfig(_Section):
    """Everything one training run needs."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _model_patch_size_for_the_data(self) -> RunConfig:
        patch_size = None if self.model.timm_model else VARIANTS[self.model.variant].patch_size
        if self.data._model_patch_size != patch_size:
            data = self.data.model_copy()  # the caller's DataConfig stays as it was
            data._model_patch_size = patch_size
            self.data = data  # validated on assignment: this validator runs again and finds the size set
        return self

    @model_validator(mode="after")
    def _patches_tile_the_image(self) -> RunConfig:
        problem = self.data.image_size and image_shape_problem(self.model, self.data.image_size, self.data.image_size)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _micro_batches_tile_the_batch(self) -> RunConfig:
        problem = batch_tiling_problem(self.data.batch_size, self.train.micro_batch_size, workers=1)
        if problem:
            raise ValueError(problem)
        return self

    def check_batch_tiling(self, workers: int) -> None:
        """`ValueError` (see `batch_tiling_problem`) unless `workers` data-parallel processes, each taking
        `train.micro_batch_size` examples per micro-step, make up `data.batch_size` in whole micro-steps."""
        problem = batch_tiling_problem(self.data.batch_size, self.train.micro_batch_size, workers)
        if problem:
            raise ValueError(problem)


def batch_tiling_problem(batch_size: int, micro_batch_size: int | None, workers: int) -> str | None:
    """Why `workers` processes taking `micro_batch_size` examples per micro-step cannot make up a global batch of
    `batch_size` in whole micro-steps (every process the same number), or None."""
    if batch_size % workers:
        return f"data.batch_size {batch_size} is not divisible by the {workers} workers"
    per_worker = batch_size // workers
    if micro_batch_size is None or per_worker % micro_batch_size == 0:
        return None
    fits = [size for size in range(micro_batch_size, 0, -1) if per_worker % size == 0][0]
    share = f"data.batch_size {batch_size}" + (f" over {workers} workers is {per_worker} examples each," if workers > 1
                                               else " is")
    return (f"{share} not a multiple of train.micro_batch_size {micro_batch_size} (set it to a divisor of "
            f"{per_worker}, e.g. {fits})")


def image_shape_problem(model: ModelConfig, height: int, width: int) -> str | None:
    """Why `model` cannot take images of `height`x`width` pixels, or None: a Mixer needs square images that
    its patches tile.

    `RunConfig` checks `data.image_size` with this; the sweep plan checks a source's native size, which only
    the data layer knows.
    """
    if model.timm_model:
        return None
    if height != width:
        return f"a Mixer needs square images; data gives {height}x{width} (set data.image_size)"
    patch_size = VARIANTS[model.variant].patch_size
    if height % patch_size == 0:
        return None
    return (
        f"model.variant {model.variant} needs an image size divisible by its patch size {patch_size}, got "
        f"{height}x{width} (set data.image_size to a multiple of {patch_size})"
    )
