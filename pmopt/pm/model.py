"""A trained preference model: load it (full, LoRA or ensemble directory) and score prompt/response pairs.

`PreferenceModel.load(path).score(prompts, responses)` renders every pair with
`pmopt.text.scored_text` + `pmopt.text.encode`, the same calls PM training uses, so the PM scores
exactly the token sequences it was trained on. Scores do not depend on the batch size, on which
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
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from pmopt.data.preferences import looks_like_hub_id
from pmopt.io import PmoptError
from pmopt.policy import attn_kwargs
from pmopt.text import Messages, Text, encode, scored_text
from pmopt.world.raters import TRUTHFUL_PREFIX

# The world generator imports this: keep it the single definition of the prefix (DESIGN §5 (a)).
# One definition of the prefix: the world's raters label prefixed pairs with it, PMs are scored with it.
NON_SYCOPHANTIC_PREFIX: Messages = TRUTHFUL_PREFIX

PM_INFO_FILE = "pmopt_pm.json"
ENSEMBLE_FILE = "ensemble.json"
DEFAULT_NUM_LABELS = 2  # transformers' PretrainedConfig default, implied when a config omits id2label
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class PreferenceModel:
    """A scalar-head sequence classifier plus its tokenizer; `score` gives one float32 per pair."""

    def __init__(self, model, tokenizer, name: str = "pm", info: dict | None = None):
        self.model = model
        self.tokenizer = ensure_pad_token(tokenizer)
        self.name = name
        self.info = dict(info or {})
        self._config().pad_token_id = self.tokenizer.pad_token_id

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None, dtype=None,
             trust_remote_code: bool = False, method: str | None = None, lam: float | None = None,
             attn_implementation: str | None = None):
        """A full model dir, a LoRA adapter dir (base + adapter, merged) or an ensemble dir (-> EnsemblePM).

        `method` / `lam` choose the ensemble aggregate (default: what `ensemble.json` records);
        `attn_implementation` the attention kernel (default: transformers' choice, sdpa where supported).
        """
        path = Path(path)
        attn_kwargs(attn_implementation)  # a bad choice fails before anything loads
        if (path / ENSEMBLE_FILE).is_file():
            from pmopt.pm.ensemble import EnsemblePM

            return EnsemblePM.load(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                                   method=method, lam=lam, attn_implementation=attn_implementation)
        if (path / "adapter_config.json").is_file():
            model = _load_lora(path, resolve_dtype(dtype), trust_remote_code, attn_implementation)
        elif (path / "config.json").is_file():
            check_num_labels(path / "config.json")
            model = load_seq_cls(str(path), resolve_dtype(dtype), trust_remote_code, attn_implementation)
        elif not path.exists() and looks_like_hub_id(str(path)):  # a PM from the hub
            model = load_seq_cls(str(path), resolve_dtype(dtype), trust_remote_code, attn_implementation)
        else:
            raise PmoptError(f"{path}: not a preference-model directory (expected config.json, "
                             f"adapter_config.json or {ENSEMBLE_FILE})")
        tokenizer = load_tokenizer(str(path), trust_remote_code)
        pm = cls(model.to(resolve_device(device)), tokenizer, name=path.resolve().name, info=read_info(path))
        pm.model.eval()
        return pm

    # ------------------------------------------------------------------ scoring

    def encode_pairs(self, prompts: Sequence[Text], responses: Sequence[str],
                     prefix: Messages | None = None) -> list[list[int]]:
        """Token ids of prompt + response (+ EOS): the exact sequences training tokenized."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return [encode(self.tokenizer, scored_text(p, r, self.tokenizer, prefix))
                for p, r in zip(prompts, responses, strict=True)]

    def score(self, prompts: Sequence[Text], responses: Sequence[str], prefix: Messages | None = None,
              batch_size: int = 32) -> torch.Tensor:
        """One float32 score per (prompt, response), independent of batching and padding side."""
        return self.score_ids(self.encode_pairs(prompts, responses, prefix), batch_size)

    def score_ids(self, sequences: Sequence[Sequence[int]], batch_size: int = 32) -> torch.Tensor:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.check_lengths(sequences)
        scores = torch.empty(len(sequences), dtype=torch.float32)
        device = next(self.model.parameters()).device
        for batch in length_buckets(sequences, batch_size):
            input_ids, attention_mask = right_pad([sequences[i] for i in batch], self.tokenizer.pad_token_id)
            with torch.inference_mode(), eval_mode(self.model):
                logits = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                    use_cache=False).logits
            scores[batch] = logits[:, 0].float().cpu()
        return scores

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


def length_buckets(sequences: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices sorted by length (longest first, stable), cut into batches: little padding per batch."""
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


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


def resolve_dtype(dtype) -> torch.dtype | str:
    """None -> float32 (scores are compared across PMs and runs); "auto" -> the checkpoint's dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in DTYPES:
        raise PmoptError(f"unknown dtype {dtype!r} (expected auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


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


def load_seq_cls(name_or_path: str, dtype, trust_remote_code: bool = False, attn_implementation: str | None = None):
    """`AutoModelForSequenceClassification` with one label: the PM's scalar head.

    Loading a causal LM this way leaves `score.weight` newly initialised (and drops `lm_head`); TRL's
    context manager silences that expected report.
    """
    from transformers import AutoModelForSequenceClassification
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    try:
        with suppress_seqcls_warning():
            return AutoModelForSequenceClassification.from_pretrained(
                name_or_path, num_labels=1, dtype=dtype, trust_remote_code=trust_remote_code,
                **attn_kwargs(attn_implementation))
    except (OSError, ValueError, RuntimeError) as exc:  # missing files, bad config, mismatched shapes
        raise PmoptError(f"{name_or_path}: could not load as a sequence classifier: {exc}") from None


def _load_lora(path: Path, dtype, trust_remote_code: bool, attn_implementation: str | None = None):
    """Base model + adapter; the trained score head comes from `modules_to_save`. Merged for speed."""
    from peft import PeftModel

    adapter = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    base = adapter.get("base_model_name_or_path")
    if not base:
        raise PmoptError(f"{path / 'adapter_config.json'}: field 'base_model_name_or_path' missing")
    if Path(base).is_dir():
        check_num_labels(Path(base) / "config.json")
    model = load_seq_cls(base, dtype, trust_remote_code, attn_implementation)
    tokenizer = load_tokenizer(str(path), trust_remote_code)
    model.config.pad_token_id = tokenizer.pad_token_id
    return PeftModel.from_pretrained(model, str(path)).merge_and_unload()


def check_num_labels(config_file: Path) -> None:
    """A PM has one output. A classifier checkpoint with more labels is not a reward model.

    A causal-LM checkpoint has no label fields (its head is replaced by a fresh 1-label score head).
    A `*ForSequenceClassification` checkpoint without them has transformers' default of 2 labels.
    """
    if not config_file.is_file():
        raise PmoptError(f"{config_file.parent}: no config.json (not a Hugging Face model directory)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PmoptError(f"{config_file}: malformed JSON ({exc.msg})") from None
    is_classifier = any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or [])
    field, labels = "architectures", DEFAULT_NUM_LABELS if is_classifier else None
    if config.get("id2label"):
        field, labels = "id2label", len(config["id2label"])
    if "num_labels" in config:
        field, labels = "num_labels", config["num_labels"]
    if labels is not None and labels != 1:
        raise PmoptError(f"{config_file}: field '{field}': the checkpoint is a classifier with {labels} "
                         "labels; a preference model needs exactly 1 (a scalar reward)")


def read_info(path: Path) -> dict:
    info_file = path / PM_INFO_FILE
    return json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}


__all__ = ["PreferenceModel", "NON_SYCOPHANTIC_PREFIX", "length_buckets", "right_pad", "load_seq_cls",
           "load_tokenizer", "ensure_pad_token", "check_num_labels", "PM_INFO_FILE", "ENSEMBLE_FILE"]
