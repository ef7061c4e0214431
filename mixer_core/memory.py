"""Device memory of training: arithmetic on a model's sizes, no torch, so `mixer sweep validate` can say before
anything starts whether a micro-batch fits the accelerator a spec names.

Per device, training holds:
- parameters, their gradients, and the optimizer's state: fp32 whatever the autocast precision (AdamW keeps two
  moments, SGD momentum one); under DDP a second gradient-sized buffer (the all-reduce buckets); under bf16
  autocast a bf16 copy of the weights, cast once per forward and kept for the backward pass;
- activations autograd keeps for the backward pass, per example of the micro-batch. A Mixer block keeps the
  inputs of its two LayerNorms (fp32 even under bf16 autocast, which runs LayerNorm in fp32), the LayerNorm
  outputs the matmuls read, and each MLP's hidden layer before and after GELU (compute precision): per image
  4·S·C + 2·D_S·C + 2·S·D_C values. Mixer-L/16 in bf16: 7.7 MB per block, 185 MB per image at 224 px;
- with activation checkpointing, one block input per block plus one block recomputed at a time;
- transient buffers of the backward pass: the activation gradients of the widest layer, alive for one block.

This is eager PyTorch; `torch.compile` fuses GELU into its matmul and keeps less, so for compiled runs the
estimate is an upper bound. `tests/test_memory.py` compares it with the peak RSS of CPU training steps.
timm baselines are counted from autograd's saved tensors on the meta device (`mixer_core.activations`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mixer_core.sizes import num_tokens
from mixer_core.variants import MixerVariant

FP32_BYTES, BF16_BYTES = 4, 2
GB = 1e9
# Device memory per accelerator in GB as the vendors state it, by Ray's accelerator type names
# (`ray.util.accelerators`); a spec may name another with `resources.accelerator_memory_gb`.
ACCELERATOR_MEMORY_GB = {
    "V100": 16,
    "T4": 16,
    "A10G": 24,
    "L4": 24,
    "L40S": 48,
    "A100-40G": 40,
    "A100-80G": 80,
    "H100": 80,
    "H200": 141,
    "B200": 180,
    "TPU-V4": 32,
    "TPU-V5LITEPOD": 16,
    "TPU-V5P": 95,
    "TPU-V6E": 32,
    "TPU-V7X": 192,
}
# What a CUDA or TPU runtime keeps for itself (context, kernels, workspaces) before a tensor is allocated.
RUNTIME_RESERVE_GB = 1.0
OPTIMIZER_STATES = {"pretrain": 2, "finetune": 1}  # AdamW: two moments; SGD: one momentum buffer


@dataclass(frozen=True)
class ActivationBytes:
    """Bytes one example keeps for the backward pass: without and with activation checkpointing."""

    full: float
    checkpointed: float


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training process holds at its peak (the end of the forward pass of a micro-batch)."""

    params: float
    gradients: float
    optimizer: float
    ddp_buckets: float
    weight_copies: float  # autocast's bf16 weights
    activations: float  # at the micro-batch, in the run's precision and checkpointing
    transient: float

    @property
    def weights_and_optimizer(self) -> float:
        """What does not grow with the micro-batch."""
        return self.params + self.gradients + self.optimizer + self.ddp_buckets + self.weight_copies

    @property
    def total(self) -> float:
        """Everything at once: what must fit below the device's memory (less the runtime's reserve)."""
        return self.weights_and_optimizer + self.activations + self.transient


def mixer_activation_bytes(
    variant: MixerVariant, image_size: int, in_chans: int, num_classes: int, bf16: bool
) -> ActivationBytes:
    """Bytes of activations one image keeps for the backward pass of a Mixer, in bf16 autocast or fp32."""
    compute = BF16_BYTES if bf16 else FP32_BYTES
    tokens, hidden = num_tokens(variant, image_size), variant.hidden_dim
    norm_inputs = 2 * tokens * hidden * FP32_BYTES + 2 * 2 * tokens * FP32_BYTES  # and their mean and 1/std
    matmul_inputs = 2 * tokens * hidden * compute
    hidden_layers = 2 * (variant.tokens_mlp_dim * hidden + tokens * variant.channels_mlp_dim) * compute
    block = norm_inputs + matmul_inputs + hidden_layers
    outside_blocks = in_chans * image_size**2 * compute + tokens * hidden * FP32_BYTES + hidden * compute
    outside_blocks += num_classes * FP32_BYTES  # the loss's softmax or sigmoid
    block_input = tokens * hidden * compute  # the residual stream is in compute precision
    # Recomputing a block keeps its activations again, except in fp32 its first LayerNorm's input: that is the
    # kept block input itself (bf16 autocast saves an fp32 copy of it).
    recomputed = block - (0 if bf16 else block_input)
    return ActivationBytes(
        full=outside_blocks + variant.num_blocks * block,
        checkpointed=outside_blocks + variant.num_blocks * block_input + recomputed,
    )


def mixer_transient_bytes(variant: MixerVariant, image_size: int, bf16: bool) -> float:
    """Bytes per image of the backward pass's short-lived activation gradients: those of the channel MLP's
    hidden layer (before and after GELU) and of the residual stream around it."""
    compute = BF16_BYTES if bf16 else FP32_BYTES
    tokens = num_tokens(variant, image_size)
    return 2 * tokens * variant.channels_mlp_dim * compute + 2 * tokens * variant.hidden_dim * FP32_BYTES


def training_memory(
    params: int,
    activations: ActivationBytes,
    transient_per_example: float,
    micro_batch_size: int,
    *,
    recipe: str = "pretrain",
    checkpointing: bool = False,
    workers: int = 1,
    bf16: bool = False,
) -> MemoryEstimate:
    """Peak bytes of one training process of a model with `params` parameters at `micro_batch_size` examples
    (`activations` and `transient_per_example` in the run's precision: bf16 autocast when `bf16`)."""
    weights = params * FP32_BYTES
    per_example = activations.checkpointed if checkpointing else activations.full
    return MemoryEstimate(
        params=weights,
        gradients=weights,
        optimizer=OPTIMIZER_STATES[recipe] * weights,
        ddp_buckets=weights if workers > 1 else 0.0,
        weight_copies=params * BF16_BYTES if bf16 else 0.0,
        activations=per_example * micro_batch_size,
        transient=transient_per_example * micro_batch_size,
    )


def largest_fitting_micro_batch(
    estimate_at: Callable[[int], MemoryEstimate], device_bytes: float, per_worker_batch: int
) -> int | None:
    """The largest divisor of `per_worker_batch` whose `estimate_at(micro_batch).total` fits `device_bytes`,
    or None when not even one example does. Memory grows with the micro-batch, so the search stops early."""
    fitting = None
    for size in (d for d in range(1, per_worker_batch + 1) if per_worker_batch % d == 0):
        if estimate_at(size).total > device_bytes:
            break
        fitting = size
    return fitting


def usable_device_bytes(memory_gb: float) -> float:
    """Bytes of a `memory_gb` device that tensors can use: less the runtime's reserve."""
    return (memory_gb - RUNTIME_RESERVE_GB) * GB
