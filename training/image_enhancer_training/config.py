"""Training configuration: dataclasses filled from a TOML or JSON file, with clear errors.

Relative paths in the file are resolved against the current directory; `{weights_dir}` expands to
the user's converted-weights folder and `~` to the home folder.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # Python 3.11+; on 3.10 configs must be JSON.
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - depends on the interpreter
    tomllib = None  # type: ignore[assignment]

from image_enhancer.safe_json import JsonFileError, load_json

from .data import SourceConfig
from .degradations import DegradationConfig

#: config `model.arch` → what it builds; the names the model descriptors and the manifest use.
ARCHITECTURES = {
    "SRVGGNetCompact": "SRVGGNetCompact (Real-ESRGAN Compact)",
    "RRDBNet": "RRDBNet (ESRGAN / Real-ESRGAN)",
    "SPAN": "SPAN",
    "RealPLKSR": "RealPLKSR",
}
#: Keys that were renamed: the old name gets a message that gives the new one.
RENAMED_KEYS = {"alphas": "strengths"}
#: Earlier short names of the architectures, still accepted in config files.
ARCHITECTURE_ALIASES = {
    "srvgg": "SRVGGNetCompact", "rrdb": "RRDBNet", "span": "SPAN", "realplksr": "RealPLKSR"
}

class ConfigError(ValueError):
    """The training config file is missing, malformed or inconsistent."""


@dataclass
class ModelConfig:
    arch: str = "SRVGGNetCompact"  # a key of ARCHITECTURES (or an old short name, see ARCHITECTURE_ALIASES)
    scale: int = 4
    num_feat: int = 48  # SRVGGNetCompact and RRDBNet features, SPAN feature_channels, RealPLKSR dim
    num_conv: int = 16  # SRVGGNetCompact
    num_block: int = 23  # RRDBNet, RealPLKSR
    num_grow_ch: int = 32  # RRDBNet: 32, as in every published RRDBNet (spandrel's ESRGAN fixes it)
    # Weights to start the PSNR stage from (e.g. the converted x4plus); empty = random init.
    init: str = ""
    # Optionally start from a weight average instead: (1 − init_blend_weight)·init + init_blend_weight·
    # init_blend, two fine-tunes of one parent (e.g. a clean-input and a damaged-input specialist).
    init_blend: str = ""
    init_blend_weight: float = 0.0

    def __post_init__(self) -> None:
        self.arch = ARCHITECTURE_ALIASES.get(self.arch, self.arch)


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    patch_size: int = 128  # HR crop side; must be a multiple of the scale
    batch_size: int = 16  # per process
    workers: int = 0  # DataLoader worker processes
    # Distillation: the teacher's output for the degraded input becomes (part of) the target; the
    # stages' `distill` says how much. The teacher runs on the fly, or once into `teacher_cache`.
    teacher: str = ""
    # A folder of `teacher_cache_size` (degraded crop, ground truth, teacher output) samples computed
    # once (see teacher_cache.py); when set, training draws its batches from it.
    teacher_cache: str = ""
    teacher_cache_size: int = 0
    # A teacher of a larger scale than the model (x4plus for a native ×2 model) has its output
    # downscaled to the model's scale (bicubic, antialiased); without this a mismatch is refused.
    teacher_resize: bool = False


@dataclass
class ValidationConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    crops: int = 8  # held-out crops, chosen once from the seed
    crop_size: int = 192  # 0 = whole images (one per file)
    every: int = 500  # iterations between validations (0 = only at the end of a stage)
    # "bicubic": inputs are bicubic downscales; "train": the training degradations, fixed seed.
    degradation: str = "bicubic"


@dataclass
class PSNRStageConfig:
    iterations: int = 1000
    lr: float = 2e-4
    loss: str = "l1"  # "l1" or "charbonnier"
    schedule: str = "cosine"  # "cosine", "multistep" or "constant"
    milestones: list[int] = field(default_factory=list)  # multistep: iterations where lr halves
    warmup: int = 0
    ema_decay: float = 0.999
    betas: tuple[float, float] = (0.9, 0.99)
    # With a teacher: the share of the pixel loss measured against its output (the rest against
    # the ground truth); 1 = pure distillation.
    distill: float = 1.0


@dataclass
class GANStageConfig:
    iterations: int = 0  # 0 skips the stage
    lr_g: float = 1e-4
    lr_d: float = 1e-4
    pixel_loss: str = "l1"
    pixel_weight: float = 1.0
    distill: float = 1.0  # as in the PSNR stage; the discriminator's real images are then the teacher's
    gan_weight: float = 0.1
    perceptual_weight: float = 1.0
    # VGG19 weights (safetensors or .pth, loaded safely) for the perceptual loss; empty = no VGG loss.
    vgg_weights: str = ""
    disc_feat: int = 64
    ema_decay: float = 0.999
    betas: tuple[float, float] = (0.9, 0.99)


@dataclass
class ExportConfig:
    name: str = ""  # model name prefix; "" = no export
    # Where the fp16 safetensors go ("" = the repository's weights/), the manifest that gets the
    # entries ("" = the package's manifest for the repository's weights/, else manifest.json in that
    # folder) and the cards ("" = its cards/ folder).
    dir: str = ""
    manifest: str = ""
    cards: str = ""
    description: str = ""
    # The one-line description each exported model gets in the manifest, which the plug-in's model
    # list shows (keys "psnr", "gan"); a model without one gets `description` and its role.
    model_descriptions: dict[str, str] = field(default_factory=dict)
    licence: str = "BSD-3-Clause"
    # Free text added to the card, e.g. how a run was resumed with changed settings, and what the
    # models cannot do yet (the card's closing "Limitations" section).
    notes: str = ""
    limitations: str = ""
    # With no GAN stage: an existing GAN model in the manifest to pair our PSNR model with (e.g.
    # "realesrgan-x4plus"); export then adds a model `<name>` that has the strength control.
    pair_gan: str = ""
    # Strengths (faithful 0 → sharp 1) plotted in the card's strength sweep.
    strengths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    # Independent photos scored in the card (bicubic degradation); never used for training.
    evaluation: list[SourceConfig] = field(default_factory=list)
    evaluation_crops: int = 16
    evaluation_crop_size: int = 0  # 0 = whole images
    # How the held-out inputs are made: "bicubic" downscales, "train": the training degradations
    # applied to every image (no clean share), and/or "damaged": a fixed mix of blur, camera noise and
    # JPEG q 30–90 (evaluation.DAMAGED), scored for JPEG blockiness and against the reference too.
    evaluation_degradations: list[str] = field(default_factory=lambda: ["bicubic"])
    # A model scored next to ours on the held-out photos, and timed against our PSNR model in the
    # same run (e.g. "{weights_dir}/realesrgan-x4plus.safetensors"); its outputs are kept in the run
    # folder, since a large model is slow on a CPU.
    reference: str = ""
    # The evaluation degradations the reference is scored under (a large one is slow on a CPU).
    reference_degradations: list[str] = field(default_factory=lambda: ["bicubic", "train"])
    # Add BRISQUE (no-reference naturalness; the `training` extra) to the held-out tables and plot the
    # strength sweep as (PSNR-Y, BRISQUE) against bicubic and the reference.
    brisque: bool = False


@dataclass
class TrainConfig:
    name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", …
    threads: int = 0  # CPU threads for torch (0 = torch's default)
    checkpoint_every: int = 200
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    psnr: PSNRStageConfig = field(default_factory=PSNRStageConfig)
    gan: GANStageConfig = field(default_factory=GANStageConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def validate(self) -> None:
        if self.model.arch not in ARCHITECTURES:
            raise ConfigError(f"model.arch must be one of {', '.join(ARCHITECTURES)}: {self.model.arch!r}")
        model = self.model
        if model.arch == "RRDBNet" and (model.scale not in (1, 2, 4) or model.num_grow_ch != 32):
            raise ConfigError("an RRDBNet model has scale 1, 2 or 4 and num_grow_ch 32")
        if self.model.arch == "SRVGGNetCompact" and not 1 <= self.model.scale <= 4:
            raise ConfigError("an SRVGGNetCompact model has scale 1 to 4")
        if self.data.patch_size % self.model.scale:
            raise ConfigError(
                f"data.patch_size {self.data.patch_size} is not a multiple of the scale {self.model.scale}"
            )
        if self.validation.crop_size % self.model.scale:
            raise ConfigError(f"validation.crop_size must be a multiple of the scale {self.model.scale}")
        if not self.data.sources:
            raise ConfigError("data.sources is empty: list at least one [[data.sources]] entry")
        for loss in (self.psnr.loss, self.gan.pixel_loss):
            if loss not in ("l1", "charbonnier"):
                raise ConfigError(f"pixel loss must be 'l1' or 'charbonnier', got {loss!r}")
        if self.psnr.schedule not in ("cosine", "multistep", "constant"):
            raise ConfigError(f"psnr.schedule must be cosine, multistep or constant: {self.psnr.schedule!r}")
        if self.validation.degradation not in ("bicubic", "train"):
            raise ConfigError("validation.degradation must be 'bicubic' or 'train'")
        if not self.export.evaluation_degradations or not set(self.export.evaluation_degradations) <= {
            "bicubic", "train", "damaged"
        }:
            raise ConfigError("export.evaluation_degradations lists 'bicubic', 'train' and/or 'damaged'")
        for stage in ("psnr", "gan"):
            if not 0.0 <= getattr(self, stage).distill <= 1.0:
                raise ConfigError(f"{stage}.distill must be between 0 and 1")
        if self.data.teacher_cache and (not self.data.teacher or self.data.teacher_cache_size < 1):
            raise ConfigError("data.teacher_cache needs data.teacher and a positive data.teacher_cache_size")
        if self.psnr.iterations < 0 or self.gan.iterations < 0:
            raise ConfigError("stage iterations must be non-negative")
        if not set(self.export.model_descriptions) <= {"psnr", "gan"}:
            raise ConfigError("export.model_descriptions has the keys 'psnr' and/or 'gan'")
        if self.model.init_blend and (not self.model.init or not 0.0 <= self.model.init_blend_weight <= 1.0):
            raise ConfigError("model.init_blend needs model.init and an init_blend_weight between 0 and 1")
        try:
            self.degradation.validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc


def expand_path(value: str) -> Path:
    """`{weights_dir}` → the user's weights folder, `{manifest}` → the manifest that ships with the
    package, `~` → home; relative paths stay relative to cwd."""
    if "{weights_dir}" in value:
        from image_enhancer.paths import weights_dir

        value = value.replace("{weights_dir}", str(weights_dir()))
    if "{manifest}" in value:
        from image_enhancer.weights.manifest import packaged_manifest_path

        value = value.replace("{manifest}", str(packaged_manifest_path()))
    return Path(value).expanduser()


def _build(cls: type, data: Any, where: str) -> Any:
    """Instantiate dataclass `cls` from a dict, recursively, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    renamed = sorted(key for key in unknown if RENAMED_KEYS.get(key) in names)
    if renamed:
        now = ", ".join(f"{key} is now called {RENAMED_KEYS[key]}" for key in renamed)
        raise ConfigError(f"in {where or 'config'}: {now}; rename it in the config file")
    if unknown:
        raise ConfigError(f"unknown key(s) in {where or 'config'}: {', '.join(sorted(unknown))}")
    values = {key: _convert(hints[key], value, f"{where}.{key}".lstrip(".")) for key, value in data.items()}
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(hint)
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(f"{where} must have {len(args)} items, got {len(value)}")
            pairs = enumerate(zip(args, value, strict=True))
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in pairs)
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        _, value_type = typing.get_args(hint)
        return {k: _convert(value_type, v, f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    is_bool_as_int = hint is int and isinstance(value, bool)
    if hint in (int, str, bool) and (not isinstance(value, hint) or is_bool_as_int):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    if hint is float:
        raise ConfigError(f"{where} must be a number, got {value!r}")
    return value


def parse_config(data: dict[str, Any]) -> TrainConfig:
    config = _build(TrainConfig, data, "")
    config.validate()
    return config


def load_config(path: Path) -> TrainConfig:
    """Read a `.toml` or `.json` training config. A top-level `extends = "base.toml"` (relative to the
    file) starts from that config and overrides it table by table; lists are replaced whole."""
    return parse_config(_read_config(Path(path), ()))


def _read_config(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"training config {path} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"training config {path} extends itself")
    try:
        if path.suffix.lower() == ".json":
            data = load_json(path, max_bytes=1 << 20)
        elif tomllib is None:
            raise ConfigError(f"{path}: TOML configs need Python 3.11 or newer; use a JSON config")
        else:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, JsonFileError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends must be a config file's path")
    return _override(_read_config(path.parent / base, (*seen, path.resolve())), data)


def _override(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        both_tables = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _override(base[key], value) if both_tables else value
    return merged


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
