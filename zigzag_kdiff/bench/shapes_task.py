"""A procedural text-to-image task in the spirit of GenEval, with a deterministic rule checker.

Images are 16×16 RGB on a mid-grey background with 1–3 solid squares (side 3 or 4) of one of six
saturated colours, all inside the left, right, top or bottom half; squares never touch (not even
diagonally). The grey background puts the data mean near 0 in the model's [-1, 1] pixel space: with
SD's schedule (terminal SNR > 0) a black background makes a model read the image mean from the initial
noise, and sampled backgrounds come out tinted.
Prompts read like ``"two red squares on the left"``: 3 counts × 6 colours × 4 positions = 72 prompts.

:func:`check_image` scores an image against a prompt's :class:`ShapeSpec` with connected components
(8-connectivity): count, colour, position, and shape cleanliness. On real data it scores 100 %
(tested). Pixel values are floats in [0, 1], shape ``[3, 16, 16]``.

Also here: the word-level tokenizer and the model configs of the bundled model (``models_data/shapes16``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SIZE = 16
SQUARE_SIDES = (3, 4)
BACKGROUND = 0.5  # mid-grey, in [0, 1]
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (1, 0, 0),
    "green": (0, 1, 0),
    "blue": (0, 0, 1),
    "yellow": (1, 1, 0),
    "cyan": (0, 1, 1),
    "magenta": (1, 0, 1),
}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
MAX_TOKENS = 8  # <bos> + the longest prompt (6 words) + <eos>
BUNDLED_MODEL = Path(__file__).parent.parent / "models_data" / "shapes16"


@dataclass(frozen=True)
class ShapeSpec:
    """What a prompt asks for: ``count`` squares (1–3) of ``colour`` in the ``position`` half."""

    count: int
    colour: str
    position: str

    def __post_init__(self) -> None:
        if self.count not in COUNT_WORDS:
            raise ValueError(f"count must be one of {sorted(COUNT_WORDS)}, got {self.count!r}")
        if self.colour not in COLOURS:
            raise ValueError(f"colour must be one of {list(COLOURS)}, got {self.colour!r}")
        if self.position not in POSITION_PHRASES:
            raise ValueError(f"position must be one of {list(POSITION_PHRASES)}, got {self.position!r}")

    @property
    def prompt(self) -> str:
        noun = "square" if self.count == 1 else "squares"
        return f"{COUNT_WORDS[self.count]} {self.colour} {noun} {POSITION_PHRASES[self.position]}"


def all_specs() -> list[ShapeSpec]:
    """The 72 prompts of the task, in a fixed order (count, colour, position)."""
    return [ShapeSpec(n, c, p) for n in COUNT_WORDS for c in COLOURS for p in POSITION_PHRASES]


def parse_prompt(prompt: str) -> ShapeSpec:
    """The inverse of :attr:`ShapeSpec.prompt`."""
    for spec in all_specs():
        if spec.prompt == " ".join(prompt.lower().split()):
            return spec
    raise ValueError(
        f"prompt must be one of the task's 72 prompts (e.g. 'two red squares on the left'), got {prompt!r}"
    )


def vocabulary() -> list[str]:
    """Special tokens, then every word of every prompt, sorted."""
    words = {word for spec in all_specs() for word in spec.prompt.split()}
    return list(SPECIAL_TOKENS) + sorted(words)


# --- data -----------------------------------------------------------------------------------------


def _half_bounds(position: str) -> tuple[int, int, int, int]:
    """``(row0, row1, col0, col1)``, end-exclusive, of the named half."""
    half = IMAGE_SIZE // 2
    return {
        "left": (0, IMAGE_SIZE, 0, half),
        "right": (0, IMAGE_SIZE, half, IMAGE_SIZE),
        "top": (0, half, 0, IMAGE_SIZE),
        "bottom": (half, IMAGE_SIZE, 0, IMAGE_SIZE),
    }[position]


def render(spec: ShapeSpec, rng: np.random.Generator) -> np.ndarray:
    """One image for ``spec``: float32 ``[3, 16, 16]`` in [0, 1]; squares placed by rejection sampling."""
    r0, r1, c0, c1 = _half_bounds(spec.position)
    while True:
        occupied = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)  # squares grown by 1 px: no contact
        boxes = []
        for _ in range(spec.count):
            for _attempt in range(50):
                side = int(rng.choice(SQUARE_SIDES))
                top = int(rng.integers(r0, r1 - side + 1))
                left = int(rng.integers(c0, c1 - side + 1))
                if not occupied[top : top + side, left : left + side].any():
                    occupied[max(top - 1, 0) : top + side + 1, max(left - 1, 0) : left + side + 1] = True
                    boxes.append((top, left, side))
                    break
        if len(boxes) == spec.count:
            break
    image = np.full((3, IMAGE_SIZE, IMAGE_SIZE), BACKGROUND, dtype=np.float32)
    colour = np.asarray(COLOURS[spec.colour], dtype=np.float32)[:, None, None]
    for top, left, side in boxes:
        image[:, top : top + side, left : left + side] = colour
    return image


def make_dataset(size: int, seed: int) -> tuple[np.ndarray, list[ShapeSpec]]:
    """``size`` images (float32 ``[size, 3, 16, 16]`` in [0, 1]) with uniformly drawn specs."""
    rng = np.random.default_rng(seed)
    specs = all_specs()
    chosen = [specs[i] for i in rng.integers(0, len(specs), size)]
    return np.stack([render(spec, rng) for spec in chosen]), chosen


# --- the checker ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    count: bool
    colour: bool
    position: bool
    clean: bool
    found: int

    @property
    def all_correct(self) -> bool:
        """Count, colour and position all right (GenEval's per-image success); cleanliness apart."""
        return self.count and self.colour and self.position


def _pixel_colours(image: np.ndarray) -> np.ndarray:
    """Each foreground pixel's colour as a palette index (1…6 COLOURS, 7 other: black, white, or a channel
    not decisively 0 or 1), ``[16, 16]``; background pixels get 0."""
    deviation = np.abs(image - BACKGROUND)
    bits = (image > BACKGROUND).astype(np.int64)
    code = bits[0] * 4 + bits[1] * 2 + bits[2]
    table = np.full(8, 7)
    for index, rgb in enumerate(COLOURS.values(), start=1):
        table[rgb[0] * 4 + rgb[1] * 2 + rgb[2]] = index
    colours = np.where((deviation > 0.25).all(0), table[code], 7)
    return np.where(deviation.max(0) > 0.25, colours, 0)


def check_image(image: np.ndarray, spec: ShapeSpec) -> CheckResult:
    """Score ``image`` (float ``[3, 16, 16]`` in [0, 1]) against ``spec``.

    * foreground: pixels with a channel more than 0.25 from the grey background; objects: its
      8-connected components;
    * count: the number of objects equals ``spec.count``;
    * colour: every object's majority colour is ``spec.colour`` (a pixel's colour: each channel
      thresholded at 0.5, and all channels at least 0.25 from grey, else "other");
    * position: every object's centroid lies in the named half;
    * clean: every object is a solid square of side 3 or 4 filling its bounding box in one palette
      colour, and no pixel is ambiguous (largest deviation from grey in (0.15, 0.35)).
    """
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float32)
    if image.shape != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"image must have shape (3, {IMAGE_SIZE}, {IMAGE_SIZE}), got {image.shape}")
    deviation = np.abs(image - BACKGROUND).max(0)
    foreground = deviation > 0.25
    labels, found = ndimage.label(foreground, structure=np.ones((3, 3), dtype=int))
    colours = _pixel_colours(image)
    wanted = list(COLOURS).index(spec.colour) + 1
    r0, r1, c0, c1 = _half_bounds(spec.position)
    colour_ok = position_ok = found > 0
    clean = found > 0 and not bool(((deviation > 0.15) & (deviation < 0.35)).any())
    for obj, box in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels == obj
        object_colours = colours[mask]
        majority = int(np.bincount(object_colours, minlength=8).argmax())
        colour_ok = colour_ok and majority == wanted
        rows, cols = np.nonzero(mask)
        position_ok = position_ok and (r0 <= rows.mean() < r1) and (c0 <= cols.mean() < c1)
        height, width = box[0].stop - box[0].start, box[1].stop - box[1].start
        solid = height == width and height in SQUARE_SIDES and int(mask.sum()) == height * width
        clean = clean and solid and majority != 7 and bool((object_colours == majority).all())
    return CheckResult(found == spec.count, bool(colour_ok), bool(position_ok), bool(clean), int(found))


# --- the bundled model: tokenizer and configs -------------------------------------------------------


def build_tokenizer(folder: str | os.PathLike[str] | None = None) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over :func:`vocabulary` (``<bos> … <eos>``, padded to 8).

    Saved with ``save_pretrained`` it loads back with ``AutoTokenizer.from_pretrained(folder)``.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(vocabulary())}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=MAX_TOKENS,
    )
    if folder is not None:
        tokenizer.save_pretrained(folder)
    return tokenizer


def text_encoder_config() -> dict[str, Any]:
    """A small ``CLIPTextConfig`` (2 layers, width 64) over the task vocabulary."""
    vocab = vocabulary()
    return {
        "vocab_size": len(vocab),
        "hidden_size": 64,
        "intermediate_size": 128,
        "projection_dim": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": MAX_TOKENS,
        "pad_token_id": vocab.index("<pad>"),
        "bos_token_id": vocab.index("<bos>"),
        "eos_token_id": vocab.index("<eos>"),
    }


def unet_config() -> dict[str, Any]:
    """A small SD-layout ``UNet2DConditionModel`` in pixel space (3 channels, 16×16), cross-attention
    (with self-attention) at 8×8 and 4×4."""
    return {
        "sample_size": IMAGE_SIZE,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (16, 32, 64),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "layers_per_block": 1,
        "cross_attention_dim": 64,
        "attention_head_dim": 4,
        "norm_num_groups": 8,
    }


def scheduler_config() -> dict[str, Any]:
    """SD's DDIM scheduler: scaled-linear betas 0.00085…0.012 over 1000 steps, ε-prediction."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
        "steps_offset": 1,
        "set_alpha_to_one": False,
        "clip_sample": False,
    }


def write_model_index(folder: str | os.PathLike[str]) -> None:
    """``model_index.json`` of a ``StableDiffusionPipeline`` without VAE, safety checker and feature
    extractor (pixel space: the "latents" are the images in [-1, 1])."""
    import diffusers

    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": [None, None],
    }
    Path(folder, "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


# --- the bundled flow model: configs ----------------------------------------------------------------

BUNDLED_FLOW_MODEL = Path(__file__).parent.parent / "models_data" / "shapes16-flow"


def flow_text_encoder_config(hidden_size: int = 64) -> dict[str, Any]:
    """A small ``CLIPTextConfig`` (2 layers) with a projection, over the task vocabulary: SD3's CLIP-L and
    CLIP-G stand-ins (``StableDiffusion3Pipeline`` reads their penultimate hidden states and pooled
    projections)."""
    return {
        **text_encoder_config(),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "projection_dim": hidden_size,
    }


def flow_transformer_config() -> dict[str, Any]:
    """A small ``SD3Transformer2DModel`` (MMDiT) in pixel space: 3 channels, 16×16, patch size 2 (64 image
    tokens) with SD3's fixed 2-D sin-cos absolute position embeddings, 6 joint blocks of width 96 (4 heads
    of 24) with RMS q/k norm (SD3.5's); text: both CLIPs' hidden states side by side (64 + 64)."""
    return {
        "sample_size": IMAGE_SIZE,
        "patch_size": 2,
        "in_channels": 3,
        "out_channels": 3,
        "num_layers": 6,
        "attention_head_dim": 24,
        "num_attention_heads": 4,
        "joint_attention_dim": 128,
        "caption_projection_dim": 96,
        "pooled_projection_dim": 128,
        "pos_embed_max_size": IMAGE_SIZE // 2,
        "qk_norm": "rms_norm",
    }


def flow_scheduler_config() -> dict[str, Any]:
    """``FlowMatchEulerDiscreteScheduler`` without shift: σ from 1 to 0 in equal steps (a 16×16 image has few
    pixels, so the SD3 paper's resolution shift, > 1 only for more pixels than its base, is 1 here)."""
    return {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False}


def write_flow_model_index(folder: str | os.PathLike[str]) -> None:
    """``model_index.json`` of a ``StableDiffusion3Pipeline`` without VAE and T5 (pixel space: the
    "latents" are the images in [-1, 1])."""
    import diffusers

    index = {
        "_class_name": "StableDiffusion3Pipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_3": [None, None],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "tokenizer_2": ["transformers", "PreTrainedTokenizerFast"],
        "tokenizer_3": [None, None],
        "transformer": ["diffusers", "SD3Transformer2DModel"],
        "vae": [None, None],
    }
    Path(folder, "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
