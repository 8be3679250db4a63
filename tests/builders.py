"""Builders of locally made models and tokenizers of real families, shared by tests (import as `builders`).

Nothing is downloaded: BPE / WordPiece tokenizers are trained here with the `tokenizers` library, given the
published chat templates of their families verbatim, and paired with randomly initialised transformers
models of real architectures (Qwen2 causal LM, BERT sequence classifier) sized for them.
"""

from __future__ import annotations

from pathlib import Path

# The published templates of each family (Qwen2-Instruct, Meta-Llama-3-Instruct, gemma-it), verbatim.
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
          "{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
         "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
         "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
         "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
         "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

# family: (special tokens, eos, bos, pad, BOS added by the post-processor, template, end of turn)
FAMILIES = {
    "chatml": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", None, "<|endoftext|>", False,
               CHATML, "<|im_end|>"),
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|end_of_text|>", "<|begin_of_text|>", None, True, LLAMA3, "<|eot_id|>"),
    "gemma": (["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "<eos>", "<bos>", "<pad>", True,
              GEMMA, "<end_of_turn>"),
    "none": (["<|endoftext|>"], "<|endoftext|>", None, None, False, None, None),
}


def bpe_tokenizer(texts: list[str], family: str, vocab_size: int = 600):
    """A byte-level BPE (as Qwen2 / Llama 3 use) trained on `texts`, with the family's specials and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials, eos, bos, pad, bos_processor, template, _ = FAMILIES[family]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos_processor:  # Llama 3 / Gemma tokenizers prepend BOS when add_special_tokens=True
        core.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, core.token_to_id(bos))])
    else:
        core.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos, bos_token=bos, pad_token=pad,
                                        additional_special_tokens=[t for t in specials if t not in (eos, bos, pad)])
    if template:
        tokenizer.chat_template = template
    return tokenizer



def wordpiece_tokenizer(lines, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    core = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(t, core.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    core.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def qwen2_config(tokenizer, shape: dict):
    """A Qwen2 config for `tokenizer`: 4 heads, 2 KV heads, MLP twice the width unless `shape` says otherwise."""
    from transformers import Qwen2Config

    hidden = shape.get("hidden_size", 32)
    sizes = dict(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=2 * hidden, max_position_embeddings=2048)
    config = Qwen2Config(**{**sizes, **shape}, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    if config.vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {config.vocab_size} < the tokenizer's {len(tokenizer)} ids")
    return config


def save_qwen2_causal_lm(directory, tokenizer, seed: int = 0, hidden_size: int = 32, num_layers: int = 2,
                         shape: dict | None = None, dtype=None, device=None):
    """A randomly initialised Qwen2ForCausalLM sized for `tokenizer`, saved with it as a hub model ships: its
    generation_config stops on every EOS id (ChatML's <|im_end|> and <|endoftext|>, as Qwen2-Instruct lists).

    `shape` overrides the config's sizes (a published model's hidden_size, vocab_size, ...: an embedding
    larger than the tokenizer, as Qwen2's 151,936 rows for 151,665 tokens); `device` is where the weights
    are initialised (a GPU makes a 1.5B init take seconds) and `dtype` the saved weights' type."""
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    config = qwen2_config(tokenizer, {"hidden_size": hidden_size, "num_hidden_layers": num_layers, **(shape or {})})
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = Qwen2ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                                               do_sample=True, temperature=0.7, top_p=0.8)
    directory = Path(directory)
    (model.to(dtype) if dtype else model).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_llama_causal_lm(directory, tokenizer, seed: int = 0, hidden_size: int = 32, num_layers: int = 2,
                         num_heads: int = 4):
    """A randomly initialised LlamaForCausalLM sized for a `llama3`-family `tokenizer`, saved as Llama 3 Instruct
    ships: its generation_config stops on <|end_of_text|> and <|eot_id|> (the template's end of turn)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eot_id|>")]
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
                         num_attention_heads=num_heads, num_key_value_heads=num_heads,
                         intermediate_size=2 * hidden_size, max_position_embeddings=2048, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=stops)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=stops, bos_token_id=tokenizer.bos_token_id,
                                               do_sample=True, temperature=0.6, top_p=0.9)
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_bert_seq_cls(directory, tokenizer, seed: int = 0, hidden_size: int = 32):
    """A randomly initialised 1-label BertForSequenceClassification saved as published reward models ship
    (save_pretrained: config.json, model.safetensors, tokenizer files)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=2 * hidden_size, max_position_embeddings=512, num_labels=1,
        pad_token_id=tokenizer.pad_token_id))
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def deberta_v2_config(tokenizer, shape: dict):
    """A 1-label DeBERTa-v3 config (relative attention: shared keys, p2c + c2p, 256 log buckets)."""
    from transformers import DebertaV2Config

    sizes = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=512)
    return DebertaV2Config(**{**sizes, **shape}, num_labels=1, pad_token_id=tokenizer.pad_token_id,
                           relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
                           pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
                           max_relative_positions=-1, layer_norm_eps=1e-7)


def save_deberta_v2_seq_cls(directory, tokenizer, seed: int = 0, shape: dict | None = None, dtype=None, device=None):
    """A randomly initialised 1-label DebertaV2ForSequenceClassification (the architecture of DeBERTa-v3 reward
    models such as OpenAssistant's) saved as published reward models ship. `shape` overrides the sizes (e.g.
    deberta-v3-large's); the attention is DeBERTa-v3's relative one (shared keys, p2c + c2p, log buckets)."""
    import torch
    from transformers import DebertaV2ForSequenceClassification

    config = deberta_v2_config(tokenizer, shape or {})
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = DebertaV2ForSequenceClassification(config).eval()
    directory = Path(directory)
    (model.to(dtype) if dtype else model).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
