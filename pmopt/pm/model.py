"""A trained preference model: load it (full, LoRA or ensemble directory) and score prompt/response pairs.

`PreferenceModel.load(path).score(prompts, responses)` renders every pair with
`pmopt.text.scored_text` + `pmopt.text.encode_scored`, the same calls PM training uses, so the PM scores
exactly the token sequences it was trained on. A PM trained by pmopt records its rendering (chat
template hash and `chat_template_kwargs`, or verbatim text + EOS) in `pmopt_pm.json`; scoring it with a
tokenizer or kwargs that render differently is an error naming both. Scores do not depend on the batch size, on which
sequences share a batch, or on the tokenizer's padding side:

- batches are always right-padded with the pad id and an attention mask, so the real tokens of a
  sequence see the same positions (RoPE / learned positions start at 0) and the same causal context
  whatever their batch mates are;
- the score is the sequence-classification head at the last non-pad token, the token HF's
  `*ForSequenceClassification` pools and TRL's `RewardTrainer` trained (its collator right-pads too);
- sequences are sorted by length and bucketed into batches only to cut padding.

The non-sycophantic PM of Sharma et al. 2023 (§4) is the same PM with `prefix=NON_SYCOPHANTIC_PREFIX`:
a user request for truthful answers and an assistant acknowledgement prepended to the dialogue.
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from pmopt.data.preferences import looks_like_hub_id
from pmopt.io import PmoptError
from pmopt.pm.loading import (  # noqa: F401 (re-exported: callers import these from pmopt.pm.model)
    DTYPES,
    PMLoadOptions,
    check_loading_info,
    check_num_labels,
    load_seq_cls,
    one_line,
    resolve_dtype,
    safetensors_error,
)
from pmopt.policy import aligned_weights
from pmopt.prefixes import NON_SYCOPHANTIC_PREFIX  # one definition (docs/ARCHITECTURE.md §5), re-exported
from pmopt.text import (
    Messages,
    Text,
    describe_rendering,
    encode_scored,
    has_chat_template,
    is_encoder_tokenizer,
    rendering,
    scored_text,
)

PM_INFO_FILE = "pmopt_pm.json"
ENSEMBLE_FILE = "ensemble.json"


class PreferenceModel:
    """A scalar-head sequence classifier plus its tokenizer; `score` gives one float32 per pair."""

    def __init__(self, model, tokenizer, name: str = "pm", info: dict | None = None,
                 options: PMLoadOptions | None = None, where: str | None = None):
        self.model = model
        self.tokenizer = ensure_pad_token(tokenizer)
        self.name = name
        self.info = dict(info or {})
        self.options = options or PMLoadOptions()
        # the kwargs the PM was trained with, unless the options say otherwise (then they must agree)
        recorded = self.info.get("rendering") or {}
        self.chat_template_kwargs = dict(self.options.chat_template_kwargs
                                         if self.options.chat_template_kwargs is not None
                                         else recorded.get("chat_template_kwargs") or {})
        check_rendering(self.info, self.tokenizer, self.chat_template_kwargs, where or f"{name}/{PM_INFO_FILE}")
        self.n_truncated = 0  # sequences cut to options.max_length, over every call so far
        self._config().pad_token_id = self.tokenizer.pad_token_id

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | Path, options: PMLoadOptions | None = None, *, method: str | None = None,
             lam: float | None = None, **overrides):
        """A full model dir, a LoRA adapter dir (base + adapter, merged), an ensemble dir (-> EnsemblePM)
        or a hub id.

        `options` (or keyword overrides of its fields: device, dtype, trust_remote_code, ...) say how to
        load; `method` / `lam` choose the ensemble aggregate (default: what `ensemble.json` records).
        """
        options = replace(options or PMLoadOptions(), **overrides)
        try:
            options.validate("options")
        except ValueError as exc:
            raise PmoptError(str(exc)) from None
        path = Path(path)
        if (path / ENSEMBLE_FILE).is_file():
            from pmopt.pm.ensemble import EnsemblePM

            return EnsemblePM.load(path, options, method=method, lam=lam)
        if (path / "adapter_config.json").is_file():
            model = _load_lora(path, options)
        elif (path / "config.json").is_file() or (not path.exists() and looks_like_hub_id(str(path))):
            model = load_seq_cls(str(path), options.dtype, options.trust_remote_code, options.attn_implementation,
                                 device_map=options.device_map)
        else:
            raise PmoptError(f"{path}: not a preference-model directory (expected config.json, "
                             f"adapter_config.json or {ENSEMBLE_FILE})")
        tokenizer = load_tokenizer(str(path), options.trust_remote_code)
        if options.device_map is None:
            model = model.to(resolve_device(options.device))
        model = aligned_weights(model)  # scores independent of the file's layout and of copies (§10)
        pm = cls(model, tokenizer, name=path.resolve().name, info=read_info(path), options=options,
                 where=str(path / PM_INFO_FILE))
        pm.model.eval()
        return pm

    # ------------------------------------------------------------------ scoring

    def encode_pairs(self, prompts: Sequence[Text], responses: Sequence[str],
                     prefix: Messages | None = None) -> list[list[int]]:
        """Token ids of prompt + response (+ EOS): the exact sequences training tokenized."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return [encode_scored(self.tokenizer, scored_text(p, r, self.tokenizer, prefix,
                                                          chat_template_kwargs=self.chat_template_kwargs))
                for p, r in zip(prompts, responses, strict=True)]

    def score(self, prompts: Sequence[Text], responses: Sequence[str], prefix: Messages | None = None,
              batch_size: int = 32) -> torch.Tensor:
        """One float32 score per (prompt, response).

        Pairs are grouped by length and right-padded, so a score does not depend on the padding side, and
        equals the same pair's score in any other batch up to float round-off (a matrix product over a
        batch of 32 rows may round its last bits differently from one of 1, ~1e-7). Bit-identical scores
        need the same pairs in the same calls, which is how the sweep keeps its chunks fixed."""
        return self.score_ids(self.encode_pairs(prompts, responses, prefix), batch_size)

    def score_ids(self, sequences: Sequence[Sequence[int]], batch_size: int = 32) -> torch.Tensor:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sequences = self.truncate(sequences)
        self.check_lengths(sequences)
        scores = torch.empty(len(sequences), dtype=torch.float32)
        device = self.model.get_input_embeddings().weight.device  # the first device under a device_map
        for batch in length_buckets(sequences, batch_size, self.options.max_batch_tokens):
            input_ids, attention_mask = right_pad([sequences[i] for i in batch], self.tokenizer.pad_token_id)
            with torch.inference_mode(), eval_mode(self.model):
                logits = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                    use_cache=False).logits
            scores[batch] = logits[:, 0].float().cpu()
        return scores

    def truncate(self, sequences: Sequence[Sequence[int]]) -> Sequence[Sequence[int]]:
        """Cut sequences to `options.max_length` tokens, keeping the last ones, and count them.

        A causal LM's head reads the last token (the EOS after the response), so the end is what must
        survive: the start of a long prompt goes first. An encoder also keeps its first ([CLS]) token,
        the one its head pools.
        """
        limit = self.options.max_length
        if limit is None:
            return sequences
        head = 1 if is_encoder_tokenizer(self.tokenizer) and limit > 1 else 0
        cut = [list(ids[:head]) + list(ids[len(ids) - limit + head:]) if len(ids) > limit else ids
               for ids in sequences]
        self.n_truncated += sum(len(ids) > limit for ids in sequences)
        return cut

    def check_lengths(self, sequences: Sequence[Sequence[int]]) -> None:
        """Empty sequences and ones past the model's positions cannot be scored: say which."""
        limit = getattr(self._config(), "max_position_embeddings", None)
        for index, ids in enumerate(sequences):
            if len(ids) == 0:
                raise PmoptError(f"record {index}: empty token sequence")
            if limit is not None and len(ids) > limit:
                raise PmoptError(f"record {index}: {len(ids)} tokens, more than the PM's "
                                 f"max_position_embeddings={limit}")

    def _config(self):
        config = self.model.config
        return config.get_text_config() if hasattr(config, "get_text_config") else config

    def __repr__(self) -> str:
        return f"PreferenceModel(name={self.name!r}, kind={self.info.get('kind', '?')!r})"


# ---------------------------------------------------------------------- batching


def length_buckets(sequences: Sequence[Sequence[int]], batch_size: int,
                   max_tokens: int | None = None) -> list[list[int]]:
    """Indices sorted by length (longest first, stable), cut into batches: little padding per batch.

    With `max_tokens`, a batch also holds at most that many padded tokens (rows x its longest sequence):
    batches of long sequences are smaller, batches of short ones larger, up to `batch_size`. A sequence
    longer than the budget is a batch of its own.
    """
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    batches: list[list[int]] = []
    for index in order:
        batch = batches[-1] if batches else None
        # Longest first: the batch's first sequence is its width, so one more row costs that many tokens.
        fits = batch is not None and len(batch) < batch_size and (
            max_tokens is None or (len(batch) + 1) * len(sequences[batch[0]]) <= max_tokens)
        if fits:
            batch.append(index)
        else:
            batches.append([index])
    return batches


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding always, whatever `tokenizer.padding_side` says (positions stay 0..len-1)."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, :len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
        attention_mask[row, :len(ids)] = 1
    return input_ids, attention_mask


@contextmanager
def eval_mode(model):
    """Score with dropout off, and leave a model that is still training as it was."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------- loading helpers


def resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def ensure_pad_token(tokenizer):
    """Sequence classifiers need a pad id to find the last real token; fall back to EOS (TRL does too)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PmoptError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has neither a pad nor "
                             "an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise PmoptError(f"{name_or_path}: could not load the tokenizer: {exc}") from None
    return ensure_pad_token(tokenizer)


def _load_lora(path: Path, options: PMLoadOptions):
    """Base model + adapter, merged for speed. The base gets a fresh score head (`new_head`): the trained
    one comes from the adapter's `modules_to_save`, so an adapter file lacking it is refused like any
    missing weight (peft itself only warns about missing LoRA matrices, and not about the head)."""
    from peft import PeftConfig, PeftModel, get_peft_model_state_dict
    from peft.utils import load_peft_weights

    config_file = path / "adapter_config.json"
    try:
        base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except json.JSONDecodeError as exc:
        raise PmoptError(f"{config_file}: malformed JSON ({exc.msg})") from None
    if not base:
        raise PmoptError(f"{config_file}: field 'base_model_name_or_path' missing")
    model = load_seq_cls(base, options.dtype, options.trust_remote_code, options.attn_implementation,
                         new_head=True, device_map=options.device_map)
    model.config.pad_token_id = load_tokenizer(str(path), options.trust_remote_code).pad_token_id
    where = adapter_weights_label(path)
    try:
        adapter = PeftConfig.from_pretrained(str(path))
        adapter.inference_mode = True
        # PeftModel.from_pretrained in two steps, so the expected keys can be checked before peft loads them
        model = PeftModel(model, adapter)
        saved = load_peft_weights(str(path), device="cpu")
        expected = set(get_peft_model_state_dict(model))
        check_loading_info({"missing_keys": expected - set(saved), "unexpected_keys": set(saved) - expected},
                           where, {"architectures": [f"LoRA adapter on {base}"]})
        model.load_adapter(str(path), "default")
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, safetensors_error()) as exc:
        raise PmoptError(f"{where}: could not load the LoRA adapter: {one_line(exc)}") from None
    return model.merge_and_unload()


def adapter_weights_label(path: Path) -> str:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (path / name).is_file():
            return str(path / name)
    return str(path)


def check_rendering(info: dict, tokenizer, chat_template_kwargs: dict, where: str) -> None:
    """A PM must be scored with the rendering it was trained with (`pmopt.text.rendering`): a different
    chat template, chat_template_kwargs or EOS gives it token sequences it never saw. A pmopt PM trained
    before the rendering was recorded read the prompt through the template and the response as raw text
    + EOS, which the whole-conversation rule now differs from under a template: that gets a warning. A hub
    PM has no record (TRL-trained PMs use the whole-conversation rule, which is pmopt's)."""
    current = rendering(tokenizer, chat_template_kwargs)
    recorded = info.get("rendering")
    if recorded is None:
        if info and has_chat_template(tokenizer):
            warnings.warn(f"{where}: no 'rendering' recorded (a PM trained before pmopt recorded it); it is "
                         f"scored with the whole conversation through the {describe_rendering(current)}, "
                         "which may differ from what it was trained on", UserWarning, stacklevel=3)
        return
    if recorded != current:
        raise PmoptError(f"{where}: field 'rendering': the PM was trained on {describe_rendering(recorded)} "
                         f"but its tokenizer and options render {describe_rendering(current)}")


def read_info(path: Path) -> dict:
    info_file = path / PM_INFO_FILE
    return json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}


__all__ = ["PreferenceModel", "PMLoadOptions", "NON_SYCOPHANTIC_PREFIX", "length_buckets", "right_pad",
           "load_seq_cls", "load_tokenizer", "ensure_pad_token", "check_num_labels", "PM_INFO_FILE",
           "ENSEMBLE_FILE"]
