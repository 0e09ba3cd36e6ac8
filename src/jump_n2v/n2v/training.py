"""Noise2Void training of one channel: the settings, and the run told as named steps.

``train_channel`` trains on lazily sampled patches (``sampling``) with blind-spot masking
(``blind_spot``, ``masking``) and writes, each atomically, into the model folder (``artefacts``):

* ``model.pt``: the best weights by validation loss, with the architecture to rebuild the net;
* ``model.json``: resolved settings, normalisation, training summary, data split, seed, versions,
  the fitted noise model (``noise_model``), the blind-spot decision and its evidence (``blind_spot``),
  the posterior step's weights (``posterior``, see :mod:`jump_n2v.n2v.posterior`) and what prediction
  compares a plate with (``training_data``, see :mod:`jump_n2v.n2v.similarity`);
* ``training_log.csv`` and ``training_curve.png``.

Every epoch ends with an atomic ``checkpoint.pt`` (:mod:`jump_n2v.n2v.checkpoint`). A rerun with the
same settings and data resumes from it and ends with exactly the weights an uninterrupted run gives:
every random draw of an epoch (patches, augmentations, masks) is derived from (seed, epoch), and the
model, optimiser, scheduler, grad scaler and global RNG states are restored
(:mod:`jump_n2v.n2v.reproducibility`). The checkpoint is removed once the outputs exist.

Before training, the noise model is estimated from a sample of the training images and decides the
blind spot (:func:`jump_n2v.n2v.blind_spot.decide_blind_spot`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch

from jump_n2v.plumbing.devices import resolve_device, resolve_precision
from jump_n2v.n2v.artefacts import versions, write_outputs
from jump_n2v.n2v.blind_spot import BlindSpotMasking, decide_blind_spot, mask_plan_batch
from jump_n2v.n2v.checkpoint import (
    CHECKPOINT_NAME,
    checkpoint_payload,
    cpu_state,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
)
from jump_n2v.n2v.masking import BlindRegion, StructMask, masked_mse, network_masked_errors, network_masked_mse
from jump_n2v.n2v.model import UNet, build_unet
from jump_n2v.n2v.posterior import Posterior, fit_posterior, posterior_windows
from jump_n2v.n2v.reproducibility import data_identity, derived_seed, run_fingerprint, seed_everything
from jump_n2v.n2v.sampling import PatchSampler, array_location
from jump_n2v.n2v.similarity import fit_noise_model, normalised_quantiles, training_record
from jump_n2v.noise import NoiseModel
from jump_n2v.model_record import ModelRecord, TrainingSummary
from jump_n2v.settings import validated_section

logger = logging.getLogger(__name__)

COSINE_FINAL_FRACTION = 0.01  # cosine schedule ends at 1% of the initial learning rate
PLATEAU_FACTOR = 0.5

# Random streams for torch generators, next to the sampler's (see sampling._*_STREAM).
_MASK_STREAM = 11
_VALIDATION_MASK_STREAM = 12
_POSTERIOR_STREAM = 13

# The noise model is estimated on at most this many training images (whole images: flat background
# blocks anywhere in them count).
NOISE_SAMPLE_IMAGES = 8


@dataclass(frozen=True)
class N2VSettings:
    """The ``n2v`` settings section, validated. Build it with :meth:`from_dict`."""

    variant: Literal["n2v", "n2v2"]
    depth: int
    base_filters: int
    patch_size: int
    batch_size: int
    masked_fraction: float
    roi_size: int
    struct_mask: StructMask | None
    blind_spot: Literal["auto", "pixel", "region"]
    blind_spot_offsets: list | None
    blind_spot_correlation: float
    epochs: int
    steps_per_epoch: int
    learning_rate: float
    lr_schedule: Literal["cosine", "plateau", "constant"]
    early_stopping_patience: int
    train_images: int
    loader_memory_mb: float
    validation_fraction: float
    validation_patches: int
    augment: bool
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    device: str
    seed: int

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any] | None = None) -> "N2VSettings":
        """Fill schema defaults into ``settings`` and validate (:func:`jump_n2v.settings.validated_section`)."""
        resolved = validated_section("n2v", settings)
        struct = resolved["struct_mask"]
        if struct is not None:
            resolved["struct_mask"] = StructMask(axis=struct["axis"], span=struct["span"])
        if resolved["blind_spot_offsets"] is not None:
            resolved["blind_spot_offsets"] = BlindRegion.from_offsets(resolved["blind_spot_offsets"]).to_list()
        return cls(**resolved)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data (the form ``from_dict`` takes and model.json records)."""
        return dataclasses.asdict(self)  # the StructMask becomes {"axis": ..., "span": ...}

    @property
    def replacement(self) -> Literal["uniform", "median"]:
        """Blind-spot replacement: uniform neighbour for N2V, window median for N2V2."""
        return "uniform" if self.variant == "n2v" else "median"


# -- the run: set up, resume, one epoch (train, validate), checkpoint, posterior, write ------------


def train_channel(
    arrays: Sequence[Any],
    settings: N2VSettings,
    model_dir: str | Path,
    *,
    log: logging.Logger | None = None,
    exclude_images: Sequence[tuple[int, int]] = (),
) -> dict:
    """Train an N2V model on the images of ``arrays`` (Zarr arrays or paths of Zarr arrays).

    ``exclude_images`` lists (array index, image) pairs the sampler never picks (a control model's
    images disjoint from its main model's, :mod:`jump_n2v.n2v.control`); model.json's ``data`` then
    records them as ``excluded_images``. Without it the run is exactly the one it always was.

    Writes model.pt, model.json, training_log.csv and training_curve.png into ``model_dir`` and
    returns the model.json content (:meth:`ModelRecord.to_dict`). Resumes from ``model_dir/checkpoint.pt`` when it was written for
    the same settings and data.
    """
    log = log or logger
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    run = _TrainingRun.setup(arrays, settings, model_dir / CHECKPOINT_NAME, log, exclude_images)
    run.resume()
    while not run.finished:
        run.fit_epoch()
        run.save_checkpoint()
    best_net = run.best_network()
    posterior, posterior_evidence = run.fit_posterior(best_net)
    record = run.model_record(best_net, posterior, posterior_evidence)
    run.write(model_dir, record)
    return record.to_dict()


@dataclass
class _RunState:
    """Everything about a run that a checkpoint must carry beyond the torch state dicts."""

    epochs_done: int = 0
    steps: int = 0
    seconds: float = 0.0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    epochs_since_best: int = 0
    stopped_early: bool = False
    rows: list = dataclasses.field(default_factory=list)


@dataclass(frozen=True, eq=False)
class _ValidationSet:
    """The validation patches and their masks, fixed once so that epochs are compared on the same pixels."""

    targets: torch.Tensor
    inputs: torch.Tensor
    masks: torch.Tensor


@dataclass(eq=False)
class _TrainingRun:
    """One run of :func:`train_channel`: the state its steps share, and the steps as methods, named
    like a Lightning module's hooks (as CAREamics' N2V module has them: setup, training_step, ...)."""

    settings: N2VSettings
    log: logging.Logger
    checkpoint_path: Path
    fingerprint: str
    names: list[str]
    device: torch.device
    autocast_dtype: torch.dtype | None
    sampler: PatchSampler
    noise_model: NoiseModel | None
    blind_spot: dict
    data_quantiles: list[float]  # normalised-intensity quantiles of the noise-sample images (training_data)
    data_images: int
    architecture: dict
    net: UNet
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    masking: BlindSpotMasking
    validation: _ValidationSet
    progress: _RunState
    best_weights: dict[str, torch.Tensor]
    resumed_from: int | None = None
    excluded_images: list[list[int]] = dataclasses.field(default_factory=list)

    @classmethod
    def setup(
        cls, arrays: Sequence[Any], settings: N2VSettings, checkpoint_path: Path, log: logging.Logger,
        exclude_images: Sequence[tuple[int, int]] = (),
    ) -> "_TrainingRun":
        """Open the data, pick device and precision, seed, then build sampler, blind spot, net and
        optimiser, in this order (the global RNG state the net starts from depends on it)."""
        arrays, names = open_arrays(arrays)
        excluded = sorted([int(a), int(i)] for a, i in exclude_images)
        identity = data_identity(arrays, names) + ([{"excluded_images": excluded}] if excluded else [])
        fingerprint = run_fingerprint(settings.to_dict(), identity)
        device, autocast_dtype = _select_device(settings, log)
        seed_everything(settings.seed)
        sampler = _setup_sampler(arrays, names, settings, device, autocast_dtype, log, excluded)
        noise_sample = _noise_sample(sampler)
        noise_model, region, blind_spot = _setup_blind_spot(noise_sample, settings, log)
        quantiles = normalised_quantiles(noise_sample, sampler.normalization.mean, sampler.normalization.std)
        data_images = len(noise_sample)
        del noise_sample
        architecture = network_architecture(settings, region)
        net = build_unet(**architecture).to(device)
        # channels_last lets oneDNN / cuDNN pick their fast NHWC convolution kernels.
        net = net.to(memory_format=torch.channels_last)
        optimizer, scheduler, scaler = _configure_optimizers(net, settings, device, autocast_dtype)
        masking = BlindSpotMasking.from_settings(settings, region)
        return cls(
            settings=settings, log=log, checkpoint_path=checkpoint_path, fingerprint=fingerprint, names=names,
            device=device, autocast_dtype=autocast_dtype, sampler=sampler, noise_model=noise_model,
            blind_spot=blind_spot, data_quantiles=quantiles, data_images=data_images,
            architecture=architecture, net=net, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
            masking=masking, validation=_setup_validation(sampler, settings, device, masking),
            progress=_RunState(), best_weights=cpu_state(net), excluded_images=excluded,
        )

    def resume(self) -> None:
        """Restore every state from ``checkpoint.pt`` when it was written for these settings and data,
        so the run continues exactly where an interrupted one stopped."""
        checkpoint = load_checkpoint(self.checkpoint_path, self.fingerprint, self.log)
        if checkpoint is None:
            return
        restore_training_state(checkpoint, self.net, self.optimizer, self.scheduler, self.scaler)
        self.progress = _RunState(**checkpoint["progress"])
        self.best_weights = checkpoint["best_weights"]
        self.resumed_from = self.progress.epochs_done
        self.log.info("resuming from %s after epoch %d", self.checkpoint_path, self.resumed_from)

    @property
    def finished(self) -> bool:
        """True once all epochs ran or early stopping ended the run."""
        return self.progress.epochs_done >= self.settings.epochs or self.progress.stopped_early

    def fit_epoch(self) -> None:
        """One epoch: train, validate, step the learning-rate schedule, record and log the epoch."""
        epoch = self.progress.epochs_done
        learning_rate = self.optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        train_loss = self.train_epoch(epoch)
        train_seconds = time.perf_counter() - started
        val_loss = self.validate()
        self.step_scheduler(val_loss)
        self.record_epoch(epoch, train_loss, val_loss, learning_rate, time.perf_counter() - started)
        self.log_epoch(epoch, train_loss, val_loss, learning_rate, train_seconds)

    def train_epoch(self, epoch: int) -> float:
        """The mean training loss over the epoch's planned batches; every draw (patches, augmentations,
        masks) derives from (seed, epoch), so a resumed epoch repeats an uninterrupted one."""
        settings = self.settings
        self.net.train()
        generator = torch.Generator(device=self.device).manual_seed(derived_seed(settings.seed, _MASK_STREAM, epoch))
        loss_sum = torch.zeros((), device=self.device)
        plan = self.sampler.epoch_plan(epoch, settings.steps_per_epoch, settings.batch_size)
        for rows, patches in zip(plan, self.sampler.batches(plan)):
            loss_sum += self.training_step(rows, patches, generator)
        train_loss = float(loss_sum) / settings.steps_per_epoch
        if not math.isfinite(train_loss):
            raise RuntimeError(
                f"training diverged in epoch {epoch + 1} (train loss {train_loss}); lower "
                f"n2v.learning_rate (now {settings.learning_rate}) or check the input images"
            )
        return train_loss

    def training_step(self, rows: np.ndarray, patches: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """Mask one batch, predict it and take one optimiser step on the masked-pixel loss (returned, detached)."""
        targets = torch.from_numpy(patches).to(self.device, non_blocking=True)
        inputs, masks = mask_plan_batch(targets, rows, generator, self.masking)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            prediction = self.net(inputs)
        loss = masked_mse(prediction, targets, masks)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def validate(self) -> float:
        """The masked-pixel loss on the fixed validation set (what picks the best weights and stops early)."""
        validation = self.validation
        return network_masked_mse(
            self.net, validation.inputs, validation.targets, validation.masks, self.settings.batch_size,
            self.autocast_dtype,
        )

    def step_scheduler(self, val_loss: float) -> None:
        """Advance the learning-rate schedule: the plateau schedule watches the validation loss."""
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val_loss)
        elif self.scheduler is not None:
            self.scheduler.step()

    def record_epoch(
        self, epoch: int, train_loss: float, val_loss: float, learning_rate: float, seconds: float
    ) -> None:
        """Count the epoch into the progress: best weights so far, early stopping, the training-log row."""
        settings, progress = self.settings, self.progress
        progress.epochs_done = epoch + 1
        progress.steps += settings.steps_per_epoch
        progress.seconds += seconds
        if val_loss < progress.best_val_loss:
            progress.best_val_loss, progress.best_epoch, progress.epochs_since_best = val_loss, epoch + 1, 0
            self.best_weights = cpu_state(self.net)
        else:
            progress.epochs_since_best += 1
        progress.stopped_early = (
            progress.epochs_since_best >= settings.early_stopping_patience
            and progress.epochs_done < settings.epochs
        )
        progress.rows.append(
            {
                "epoch": epoch + 1,
                "step": progress.steps,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "learning_rate": learning_rate,
                "seconds": round(progress.seconds, 3),
            }
        )

    def log_epoch(
        self, epoch: int, train_loss: float, val_loss: float, learning_rate: float, train_seconds: float
    ) -> None:
        """The epoch's log line (throughput counts the training part only), and why training stops early."""
        settings, progress = self.settings, self.progress
        self.log.info(
            "epoch %d/%d: train loss %.5f, val loss %.5f%s, lr %.3g, %.0f patches/s",
            epoch + 1, settings.epochs, train_loss, val_loss,
            " (best)" if progress.best_epoch == epoch + 1 else "", learning_rate,
            settings.steps_per_epoch * settings.batch_size / train_seconds,
        )
        if progress.stopped_early:
            self.log.info(
                "early stopping: no better validation loss for %d epochs (best %.5f at epoch %d)",
                progress.epochs_since_best, progress.best_val_loss, progress.best_epoch,
            )

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` atomically with every state a resumed run needs to end identically."""
        payload = checkpoint_payload(
            self.fingerprint, self.net, self.optimizer, self.scheduler, self.scaler,
            dataclasses.asdict(self.progress), self.best_weights,
        )
        save_checkpoint(self.checkpoint_path, payload)

    def best_network(self) -> UNet:
        """A network holding the best epoch's weights (what model.pt saves)."""
        best_net = build_unet(**self.architecture).to(self.device)
        best_net.load_state_dict(self.best_weights)
        return best_net

    def fit_posterior(self, best_net: UNet) -> tuple[Posterior | None, dict]:
        """Fit the posterior step's weights for the best net on the validation targets (only with a
        noise model), and log the outcome."""
        settings, norm = self.settings, self.sampler.normalization
        posterior, posterior_evidence = None, {"fitted": False, "reason": "no noise model"}
        if self.noise_model is not None:
            blind_region = self.blind_spot.get("offsets") if self.blind_spot.get("mode") == "region" else None
            posterior, posterior_evidence = fit_posterior(
                best_net, self.validation.targets, norm.mean, norm.std, self.noise_model,
                batch_size=settings.batch_size, seed=derived_seed(settings.seed, _POSTERIOR_STREAM),
                windows=posterior_windows(blind_region or ()),
            )
        if posterior is not None:
            self.log.info(
                "posterior step (%d raw pixels): the pixel's own weight %s, the window's total %s, over signal %s; "
                "estimated MSE %.4g -> %.4g", len(posterior.offsets),
                [round(row[0], 3) for row in posterior.weight], [round(sum(row), 3) for row in posterior.weight],
                [round(c, 1) for c in posterior.signal],
                posterior_evidence["estimated_mse_network"], posterior_evidence["estimated_mse_posterior"],
            )
        else:
            self.log.info("posterior step not fitted: %s", posterior_evidence["reason"])
        return posterior, posterior_evidence

    def model_record(self, best_net: UNet, posterior: Posterior | None, posterior_evidence: dict) -> ModelRecord:
        """The model.json record: settings, normalisation, training summary, data split, seed, versions,
        blind spot, noise model, posterior and the training-data record (:mod:`jump_n2v.n2v.similarity`),
        whose masked loss is the best net's on the validation patches."""
        settings, progress, sampler, validation = self.settings, self.progress, self.sampler, self.validation
        noise_model = self.noise_model
        validation_errors = network_masked_errors(
            best_net, validation.inputs, validation.targets, validation.masks, settings.batch_size, self.autocast_dtype)
        return ModelRecord(
            settings=settings.to_dict(),
            normalization=sampler.normalization.to_dict(),
            training=TrainingSummary(
                best_val_loss=progress.best_val_loss,
                best_epoch=progress.best_epoch,
                epochs_run=progress.epochs_done,
                steps=progress.steps,
                seconds=round(progress.seconds, 3),
                stopped_early=progress.stopped_early,
                resumed_from_epoch=self.resumed_from,
                patches_per_second=(
                    progress.steps * settings.batch_size / progress.seconds if progress.seconds > 0 else None
                ),
            ),
            data={
                "arrays": self.names,
                "train_images": [list(image) for image in sampler.train_images],
                "validation_images": [list(image) for image in sampler.validation_images],
                **({"excluded_images": self.excluded_images} if self.excluded_images else {}),
            },
            seed=settings.seed,
            versions=versions(),
            blind_spot=self.blind_spot,
            noise_model=noise_model.to_dict() if noise_model is not None else None,
            posterior={**posterior_evidence, **(posterior.to_dict() if posterior is not None else {})},
            training_data=training_record(self.data_quantiles, noise_model, validation_errors, self.data_images),
        )

    def write(self, model_dir: Path, record: ModelRecord) -> None:
        """Write the outputs from the best weights, then drop the checkpoint: the outputs now stand for the run."""
        progress = self.progress
        write_outputs(model_dir, self.settings.variant, self.architecture, self.best_weights, self.sampler.normalization, record, progress.rows)
        self.checkpoint_path.unlink(missing_ok=True)
        self.log.info(
            "wrote %s: best val loss %.5f at epoch %d of %d",
            model_dir, progress.best_val_loss, progress.best_epoch, progress.epochs_done,
        )


# -- setting up: data, device, sampler, noise model and blind spot, net, optimiser, validation -----


def open_arrays(arrays: Sequence[Any]) -> tuple[list[Any], list[str]]:
    """The arrays (paths opened as Zarr arrays) and the names model.json records for them."""
    from jump_n2v.plumbing.ngff import open_channel_array

    opened, names = [], []
    for item in arrays:
        if isinstance(item, (str, Path)):
            try:
                array = open_channel_array(item)
            except Exception as error:  # zarr raises several types for a missing/invalid store
                raise ValueError(f"cannot open Zarr array {item}: {error}") from error
            opened.append(array)
            names.append(str(item))
        else:
            opened.append(item)
            names.append(array_location(item))
    return opened, names


def _select_device(settings: N2VSettings, log: logging.Logger) -> tuple[torch.device, torch.dtype | None]:
    """The device and autocast dtype the settings ask for; says so when a reduced precision cannot apply."""
    device = resolve_device(settings.device)
    autocast_dtype = resolve_precision(settings.precision, device)
    if device.type != "cuda" and settings.precision in ("bf16", "fp16"):
        log.info("precision %s applies on CUDA only; training in fp32 on %s", settings.precision, device)
    return device, autocast_dtype


def _setup_sampler(
    arrays: Sequence[Any], names: Sequence[str], settings: N2VSettings, device: torch.device,
    autocast_dtype: torch.dtype | None, log: logging.Logger, exclude: Sequence[tuple[int, int]] = (),
) -> PatchSampler:
    """The patch sampler over the arrays' images, logging what it holds and how it split them."""
    sampler = PatchSampler(
        arrays,
        patch_size=settings.patch_size,
        train_images=settings.train_images,
        validation_fraction=settings.validation_fraction,
        validation_patches=settings.validation_patches,
        augment=settings.augment,
        seed=settings.seed,
        names=names,
        memory_mb=settings.loader_memory_mb,
        exclude=[tuple(image) for image in exclude],
    )
    norm = sampler.normalization
    log.info(
        "%s %d training/validation image(s) (%.0f MiB decoded; loader_memory_mb %g)",
        "holding" if sampler.in_memory else "reading patches lazily from",
        len(sampler.train_images) + len(sampler.validation_images), sampler.image_bytes / 2**20,
        settings.loader_memory_mb,
    )
    log.info(
        "training %s on %d image(s) from %d array(s), validating on %d held-out image(s); "
        "normalised by %s: offset %.4g, scale %.4g (pixel mean %.4g, std %.4g); device %s, precision %s",
        settings.variant, len(sampler.train_images), len(arrays), len(sampler.validation_images),
        norm.method, norm.mean, norm.std, norm.pixel_mean, norm.pixel_std, device, "fp32" if autocast_dtype is None else str(autocast_dtype).removeprefix("torch."),
    )
    if sampler.validation_from_training:
        log.warning("only one image: validation patches come from the training image itself")
    return sampler


def _noise_sample(sampler: PatchSampler) -> list[np.ndarray]:
    """The training images the noise model is fitted to and the training-data record describes (at most
    NOISE_SAMPLE_IMAGES whole images: flat background blocks anywhere in them count)."""
    return [sampler.image(a, i) for a, i in sampler.train_images[:NOISE_SAMPLE_IMAGES]]  # decoded once already in memory mode


def _estimate_noise(images: list[np.ndarray], seed: int, log: logging.Logger) -> NoiseModel | None:
    """The noise model of the noise-sample images, or None (logged) when it cannot be fitted.

    The mixing is measured on the intensity bins freest of texture (background), then fixed: on a
    confluent real field the whole-image fit read texture as noise and masked 24 neighbours (issue 18)."""
    model, note = fit_noise_model(images, seed)
    if model is None:
        log.warning("%s (training image(s)): no noise model for the blind spot or the posterior", note)
    else:
        log.info("noise model: %s", note)
    return model


def _setup_blind_spot(
    images: list[np.ndarray], settings: N2VSettings, log: logging.Logger
) -> tuple[NoiseModel | None, BlindRegion | None, dict]:
    """The noise model of the noise-sample images, and the blind-spot region decided from it (logged, with its record)."""
    noise_model = _estimate_noise(images, settings.seed, log)
    region, blind_spot = decide_blind_spot(settings, noise_model)
    if noise_model is not None:
        log.info(
            "noise model: gain %.4g, offset %.4g, read variance %.4g%s", noise_model.gain, noise_model.offset,
            noise_model.read_variance, " (data look processed: " + "; ".join(noise_model.notes) + ")" if noise_model.processed else "",
        )
    log.info("blind spot: %s %s (%s)", blind_spot["mode"], blind_spot["offsets"] or "", blind_spot["evidence"])
    return noise_model, region, blind_spot


def network_architecture(settings: N2VSettings, region: BlindRegion | None) -> dict[str, Any]:
    """The U-Net's build arguments (model.pt ``architecture``): the baseline ring one pixel beyond the
    blind spot, so the baseline never reads a pixel whose noise the blind spot hides (see
    :class:`~jump_n2v.n2v.model.UNet`)."""
    return {
        "depth": settings.depth, "base_filters": settings.base_filters, "variant": settings.variant,
        "baseline_radius": (region.radius if region is not None else 0) + 1,
    }


def _configure_optimizers(
    net: UNet, settings: N2VSettings, device: torch.device, autocast_dtype: torch.dtype | None
) -> tuple[torch.optim.Optimizer, Any, torch.amp.GradScaler]:
    """Adam, the learning-rate schedule (or None) and the grad scaler (active for fp16 only)."""
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    scheduler = _make_scheduler(optimizer, settings)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    return optimizer, scheduler, scaler


def _make_scheduler(optimizer: torch.optim.Optimizer, settings: N2VSettings):
    """The learning-rate schedule ``lr_schedule`` names, or None for a constant rate."""
    if settings.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=settings.epochs, eta_min=settings.learning_rate * COSINE_FINAL_FRACTION
        )
    if settings.lr_schedule == "plateau":
        # Halve after half the early-stopping patience, so the rate drops before training gives up.
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=PLATEAU_FACTOR,
            patience=max(1, settings.early_stopping_patience // 2),
        )
    return None


def _setup_validation(
    sampler: PatchSampler, settings: N2VSettings, device: torch.device, masking: BlindSpotMasking
) -> _ValidationSet:
    """Mask the sampler's validation patches once, from their own random stream."""
    targets = torch.from_numpy(sampler.validation).to(device)
    generator = torch.Generator(device=device).manual_seed(derived_seed(settings.seed, _VALIDATION_MASK_STREAM))
    inputs, masks = masking.mask(targets, generator=generator)
    return _ValidationSet(targets=targets, inputs=inputs.contiguous(memory_format=torch.channels_last), masks=masks)
