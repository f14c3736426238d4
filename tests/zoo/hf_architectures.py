"""Real Hugging Face architectures, tiny and offline: random weights from small configs.

Every entry of :data:`HF_ARCHS` builds a fresh, seeded (model, args, kwargs): hidden size
32, 2 layers, batch 2, 12 tokens (or a 16x16/32x32 image, 320 audio samples). Nothing is
downloaded: configs are written here, weights are random, token ids are drawn, not tokenized.

Choices that keep every run deterministic and every op visible:

- ``attn_implementation="eager"``: attention runs as the matmul/softmax/dropout ops a user
  could have written, so captures, taps and validation see (and check) each of them. SDPA
  would be one fused op whose CPU kernel (math or flash) is picked by shape and mask; both
  are deterministic on CPU, but eager is the stricter test of the engine.
- every dropout probability (and layerdrop, SpecAugment, drop-path) is 0, so train mode and
  eval mode run the same ops with the same values, and two runs give the same gradients.
- ``use_cache=False`` wherever the model takes it: with the default, decoder LMs and T5 build
  a key/value cache (extra ops, extra outputs) and Mamba builds its cache in eval mode only,
  so its eval-mode capture runs ops its train-mode capture does not
  (``test_hf_sweep.py::test_mamba_builds_its_cache_in_eval_mode_only``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers as tf  # noqa: E402

VOCAB, HIDDEN, LAYERS, HEADS, FFN, BATCH, TOKENS = 96, 32, 2, 4, 64, 2, 12


@dataclass(frozen=True)
class HFArch:
    """One architecture of the sweep.

    ``block`` is the module address a tap goes on (``"name:N"`` for the N-th call of a module
    run several times). ``train_only_ops`` lists (with repeats) the types of the ops the model
    itself runs in train mode only, and ``mode_difference`` says why; empty: the model runs
    the same ops in both modes.
    """

    name: str
    family: str
    build: Callable[[], tuple[torch.nn.Module, tuple, dict]]
    block: str
    train_only_ops: tuple[str, ...] = ()
    mode_difference: str = ""


HF_ARCHS: dict[str, HFArch] = {}


def _register(name: str, family: str, block: str, train_only_ops: tuple[str, ...] = (), why: str = "") -> Callable:
    def register(builder: Callable[[], tuple[torch.nn.Module, tuple, dict]]) -> Callable:
        if name in HF_ARCHS:
            raise ValueError(f"architecture {name!r} registered twice")
        HF_ARCHS[name] = HFArch(name, family, builder, block, train_only_ops, why)
        return builder

    return register


def build_hf(name: str) -> tuple[torch.nn.Module, tuple, dict]:
    """A fresh, seeded (model, args, kwargs) for architecture ``name``, in train mode."""
    torch.manual_seed(0)
    model, args, kwargs = HF_ARCHS[name].build()
    return model.train(), args, kwargs


def _make(model_cls: type, config: Any) -> torch.nn.Module:
    config._attn_implementation = "eager"
    return model_cls._from_config(config, attn_implementation="eager")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tokens(vocab: int = VOCAB, length: int = TOKENS, pad_last: int = 3, low: int = 3) -> dict[str, torch.Tensor]:
    """``input_ids`` (no special ids) and an ``attention_mask`` whose second row ends in padding."""
    ids = torch.randint(low, vocab, (BATCH, length), generator=_gen())
    mask = torch.ones(BATCH, length, dtype=torch.long)
    if pad_last:
        mask[1, -pad_last:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def image(size: int = 16, channels: int = 3) -> torch.Tensor:
    """A batch of random images."""
    return torch.randn(BATCH, channels, size, size, generator=_gen(1))


def _lm(name: str, model_cls: type, config_cls: type, block: str = "model.layers.0", **config: Any) -> None:
    """A decoder LM: ``input_ids`` and ``attention_mask`` in, logits out."""
    defaults = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                    num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=64,
                    pad_token_id=0, bos_token_id=1, eos_token_id=2, attention_dropout=0.0)
    defaults.update(config)
    _register(name, "decoder", block)(
        lambda: (_make(model_cls, config_cls(**{k: v for k, v in defaults.items() if v is not None})), (),
                 {**tokens(), "use_cache": False}))


# -- decoder LMs ----------------------------------------------------------------------------
_lm("llama", tf.LlamaForCausalLM, tf.LlamaConfig)
_lm("mistral", tf.MistralForCausalLM, tf.MistralConfig, sliding_window=8)
_lm("qwen2", tf.Qwen2ForCausalLM, tf.Qwen2Config)
_lm("qwen3", tf.Qwen3ForCausalLM, tf.Qwen3Config, head_dim=8)
_lm("gemma", tf.GemmaForCausalLM, tf.GemmaConfig, head_dim=8)
_lm("gemma2", tf.Gemma2ForCausalLM, tf.Gemma2Config, head_dim=8, sliding_window=8)
_lm("phi3", tf.Phi3ForCausalLM, tf.Phi3Config, resid_pdrop=0.0, embd_pdrop=0.0)
_lm("mixtral", tf.MixtralForCausalLM, tf.MixtralConfig, num_local_experts=4, num_experts_per_tok=2)
_lm("starcoder2", tf.Starcoder2ForCausalLM, tf.Starcoder2Config, residual_dropout=0.0, embedding_dropout=0.0)
_lm("olmo", tf.OlmoForCausalLM, tf.OlmoConfig)
_lm("stablelm", tf.StableLmForCausalLM, tf.StableLmConfig, hidden_dropout=0.0, num_key_value_heads=HEADS)
_lm("phi", tf.PhiForCausalLM, tf.PhiConfig, resid_pdrop=0.0, embd_pdrop=0.0, partial_rotary_factor=0.5)
_lm("gpt_neox", tf.GPTNeoXForCausalLM, tf.GPTNeoXConfig, "gpt_neox.layers.0", hidden_dropout=0.0,
    rotary_pct=0.25, num_key_value_heads=None)
_lm("opt", tf.OPTForCausalLM, tf.OPTConfig, "model.decoder.layers.0", ffn_dim=FFN, word_embed_proj_dim=HIDDEN,
    dropout=0.0, num_key_value_heads=None, intermediate_size=None)
_lm("gpt2", tf.GPT2LMHeadModel, tf.GPT2Config, "transformer.h.0", n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
    n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, hidden_size=None, intermediate_size=None,
    num_hidden_layers=None, num_attention_heads=None, num_key_value_heads=None, max_position_embeddings=None,
    attention_dropout=None)
_lm("bloom", tf.BloomForCausalLM, tf.BloomConfig, "transformer.h.0", n_layer=LAYERS, n_head=HEADS,
    hidden_dropout=0.0, intermediate_size=None, num_hidden_layers=None, num_attention_heads=None,
    num_key_value_heads=None, max_position_embeddings=None)
_lm("falcon", tf.FalconForCausalLM, tf.FalconConfig, "transformer.h.0", hidden_dropout=0.0,
    num_key_value_heads=None, intermediate_size=None, new_decoder_architecture=False, multi_query=True)
_lm("gpt_neo", tf.GPTNeoForCausalLM, tf.GPTNeoConfig, "transformer.h.0", num_layers=LAYERS, num_heads=HEADS,
    attention_types=[[["global", "local"], 1]], window_size=8, embed_dropout=0.0, resid_dropout=0.0,
    attention_dropout=0.0, num_hidden_layers=None, num_attention_heads=None, num_key_value_heads=None)
_lm("gptj", tf.GPTJForCausalLM, tf.GPTJConfig, "transformer.h.0", n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
    rotary_dim=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, hidden_size=None,
    intermediate_size=None, num_hidden_layers=None, num_attention_heads=None, num_key_value_heads=None,
    max_position_embeddings=None, attention_dropout=None)


def _encoder_config(config_cls: type, **config: Any) -> Any:
    defaults = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                    intermediate_size=FFN, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                    max_position_embeddings=64, num_labels=3, pad_token_id=0)
    defaults.update(config)
    return config_cls(**{k: v for k, v in defaults.items() if v is not None})


def _encoder(name: str, model_cls: type, config_cls: type, block: str, **config: Any) -> None:
    """A text encoder with a sequence-classification head."""
    _register(name, "encoder", block)(lambda: (_make(model_cls, _encoder_config(config_cls, **config)), (), tokens()))


# -- encoders -------------------------------------------------------------------------------
_encoder("bert", tf.BertForSequenceClassification, tf.BertConfig, "bert.encoder.layer.0")
_encoder("roberta", tf.RobertaForSequenceClassification, tf.RobertaConfig, "roberta.encoder.layer.0", pad_token_id=1)
_encoder("electra", tf.ElectraForSequenceClassification, tf.ElectraConfig, "electra.encoder.layer.0",
         embedding_size=16)
_encoder("albert", tf.AlbertForSequenceClassification, tf.AlbertConfig,
         "albert.encoder.albert_layer_groups.0:2", embedding_size=16, classifier_dropout_prob=0.0)
_encoder("deberta_v2", tf.DebertaV2ForSequenceClassification, tf.DebertaV2Config, "deberta.encoder.layer.0",
         relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8, max_relative_positions=16,
         pooler_dropout=0.0)
_encoder("distilbert", tf.DistilBertForSequenceClassification, tf.DistilBertConfig,
         "distilbert.transformer.layer.0", dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN, dropout=0.0,
         attention_dropout=0.0, seq_classif_dropout=0.0, hidden_size=None, num_hidden_layers=None,
         num_attention_heads=None, intermediate_size=None, hidden_dropout_prob=None, attention_probs_dropout_prob=None)


# -- encoder-decoders -----------------------------------------------------------------------
def _seq2seq_tokens() -> dict[str, torch.Tensor]:
    decoder = torch.randint(3, VOCAB, (BATCH, 6), generator=_gen(2))
    return {**tokens(), "decoder_input_ids": decoder, "use_cache": False}


_BART = dict(vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
             encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN, decoder_ffn_dim=FFN,
             max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
             encoder_layerdrop=0.0, decoder_layerdrop=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
             decoder_start_token_id=2)


@_register("t5", "encoder-decoder", "encoder.block.1")
def _t5() -> tuple:
    config = tf.T5Config(vocab_size=VOCAB, d_model=HIDDEN, d_kv=8, d_ff=FFN, num_layers=LAYERS, num_heads=HEADS,
                         dropout_rate=0.0, relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0)
    return _make(tf.T5ForConditionalGeneration, config), (), _seq2seq_tokens()


@_register("bart", "encoder-decoder", "model.decoder.layers.0")
def _bart() -> tuple:
    return _make(tf.BartForConditionalGeneration, tf.BartConfig(**_BART)), (), _seq2seq_tokens()


@_register("bart_no_decoder_inputs", "encoder-decoder", "model.encoder.layers.1")
def _bart_shifted() -> tuple:
    """BART making its own decoder inputs by shifting the input ids (``new_zeros``, ``masked_fill_``...)."""
    return _make(tf.BartForConditionalGeneration, tf.BartConfig(**_BART)), (), {**tokens(), "use_cache": False}


@_register("whisper", "encoder-decoder", "model.encoder.layers.0")
def _whisper() -> tuple:
    config = tf.WhisperConfig(**{**_BART, "decoder_start_token_id": 1}, num_mel_bins=16, max_source_positions=8,
                              max_target_positions=32, apply_spec_augment=False)
    features = torch.randn(BATCH, 16, 16, generator=_gen(3))
    decoder = torch.randint(3, VOCAB, (BATCH, 6), generator=_gen(2))
    return _make(tf.WhisperForConditionalGeneration, config), (features,), {"decoder_input_ids": decoder,
                                                                             "use_cache": False}


# -- vision ---------------------------------------------------------------------------------
def _vit_like(config_cls: type, **config: Any) -> Any:
    return _encoder_config(config_cls, image_size=16, patch_size=4, num_channels=3, vocab_size=None,
                           max_position_embeddings=None, pad_token_id=None, **config)


_register("vit", "vision", "vit.layers.0")(
    lambda: (_make(tf.ViTForImageClassification, _vit_like(tf.ViTConfig)), (image(),), {}))
_register("deit", "vision", "deit.layers.1")(
    lambda: (_make(tf.DeiTForImageClassification, _vit_like(tf.DeiTConfig)), (image(),), {}))
_register("beit", "vision", "beit.layers.0")(
    lambda: (_make(tf.BeitForImageClassification, _vit_like(tf.BeitConfig, use_relative_position_bias=True,
                                                            drop_path_rate=0.0)), (image(),), {}))
_register("dinov2", "vision", "dinov2.encoder.layer.0")(
    lambda: (_make(tf.Dinov2ForImageClassification, _vit_like(tf.Dinov2Config, mlp_ratio=2, drop_path_rate=0.0,
                                                               intermediate_size=None)), (image(24),), {}))


@_register("swin", "vision", "swin.encoder.layers.0")
def _swin() -> tuple:
    config = tf.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                           window_size=4, mlp_ratio=2.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                           drop_path_rate=0.0, num_labels=3)
    return _make(tf.SwinForImageClassification, config), (image(32),), {}


@_register("convnext", "vision", "convnext.encoder.stages.0")
def _convnext() -> tuple:
    config = tf.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], drop_path_rate=0.0, num_labels=3)
    return _make(tf.ConvNextForImageClassification, config), (image(32),), {}


@_register("resnet", "vision", "resnet.encoder.stages.0")
def _resnet() -> tuple:
    config = tf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=3)
    return _make(tf.ResNetForImageClassification, config), (image(32),), {}


@_register("mobilenet_v2", "vision", "mobilenet_v2.layer.1")
def _mobilenet_v2() -> tuple:
    config = tf.MobileNetV2Config(image_size=32, depth_multiplier=0.35, finegrained_output=False,
                                  classifier_dropout_prob=0.0, num_labels=3)
    return _make(tf.MobileNetV2ForImageClassification, config), (image(32),), {}


@_register("segformer", "vision", "segformer.stages.0.blocks.0")
def _segformer() -> tuple:
    config = tf.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                                patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0,
                                drop_path_rate=0.0, decoder_hidden_size=32, num_labels=3)
    return _make(tf.SegformerForSemanticSegmentation, config), (image(32),), {}


# -- audio ----------------------------------------------------------------------------------
def _audio_config(config_cls: type) -> Any:
    return _encoder_config(config_cls, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4),
                           num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, apply_spec_augment=False,
                           layerdrop=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0,
                           hidden_dropout=0.0, attention_dropout=0.0, classifier_proj_size=16, max_position_embeddings=None)


def _waveform() -> torch.Tensor:
    return torch.randn(BATCH, 320, generator=_gen(4))


_register("wav2vec2", "audio", "wav2vec2.encoder.layers.0")(
    lambda: (_make(tf.Wav2Vec2ForSequenceClassification, _audio_config(tf.Wav2Vec2Config)), (_waveform(),), {}))
_register("hubert", "audio", "hubert.encoder.layers.1")(
    lambda: (_make(tf.HubertForSequenceClassification, _audio_config(tf.HubertConfig)), (_waveform(),), {}))


# -- multimodal -----------------------------------------------------------------------------
def _towers(text_cls: type, vision_cls: type) -> tuple[Any, Any]:
    text = text_cls(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                    num_attention_heads=HEADS, max_position_embeddings=TOKENS, attention_dropout=0.0,
                    pad_token_id=0, bos_token_id=1, eos_token_id=2)
    vision = vision_cls(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        image_size=16, patch_size=4, attention_dropout=0.0)
    return text, vision


@_register("clip", "multimodal", "vision_model.encoder.layers.1")
def _clip() -> tuple:
    text, vision = _towers(tf.CLIPTextConfig, tf.CLIPVisionConfig)
    config = tf.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    return _make(tf.CLIPModel, config), (), {**tokens(), "pixel_values": image()}


@_register("siglip", "multimodal", "text_model.encoder.layers.0")
def _siglip() -> tuple:
    text, vision = _towers(tf.SiglipTextConfig, tf.SiglipVisionConfig)
    config = tf.SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())
    return _make(tf.SiglipModel, config), (), {"input_ids": tokens()["input_ids"], "pixel_values": image()}


# -- state-space ----------------------------------------------------------------------------
# In train mode the mixers first prepare the arguments of a fused kernel (``mamba_inner_fn``,
# ``mamba_split_conv1d_scan_combined``) that returns None without the CUDA kernels, then run the
# same reference path as in eval mode: those argument casts are dead ops seen in train mode only.
_FUSED = "train mode evaluates the fused kernel's arguments (dead without CUDA kernels) before the eval-mode path"


@_register("mamba", "state-space", "backbone.layers.0", ("float",) * 2 * LAYERS, _FUSED)
def _mamba() -> tuple:
    config = tf.MambaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, state_size=8, num_hidden_layers=LAYERS, expand=2,
                            conv_kernel=4, use_mambapy=False)
    return _make(tf.MambaForCausalLM, config), (), {"input_ids": tokens()["input_ids"], "use_cache": False}


@_register("mamba2", "state-space", "backbone.layers.1", ("squeeze",) * LAYERS, _FUSED)
def _mamba2() -> tuple:
    config = tf.Mamba2Config(vocab_size=VOCAB, hidden_size=HIDDEN, state_size=8, num_hidden_layers=LAYERS, expand=2,
                             conv_kernel=4, num_heads=8, head_dim=8, n_groups=1, chunk_size=4)
    return _make(tf.Mamba2ForCausalLM, config), (), {"input_ids": tokens()["input_ids"], "use_cache": False}
