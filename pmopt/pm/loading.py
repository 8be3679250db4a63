"""Loading a sequence classifier that can be trusted as a preference model.

`transformers`' `from_pretrained` loads whatever matches and initialises the rest at random, printing a
load report: a PM directory whose weights file belongs to another architecture would score with random
weights and exit 0. Here every load asks transformers for its report (`output_loading_info=True`) and
refuses, with one line naming the file, anything that is not a faithful load:

- weights the model expects but the checkpoint lacks (MISSING) or holds but the model has no place for
  (UNEXPECTED). The one exception is a fresh score head when a PM (or a value model) starts from a base
  causal LM: then `score.*` is new and the LM head (`lm_head.*`) has no place, by design;
- weights whose shape differs from the config's (MISMATCH), which transformers would re-initialise;
- corrupt or truncated weight files (safetensors' header check) and pickles that are not plain tensors
  (a `.bin` is read only with `torch.load(weights_only=True)`, transformers' default, made explicit);
- a config with more than one label (a classifier, not a scalar reward).

`PMLoadOptions` is the one set of loading options shared by `pmopt score`, best-of-N (`pm_load`) and
PPO (`reward.pm_load`).
"""

from __future__ import annotations

import json
import pickle
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from pmopt.io import PmoptError
from pmopt.policy import DTYPES, AttnImplementation, attn_kwargs, check_device
from pmopt.policy import resolve_dtype as resolve_model_dtype

DEFAULT_NUM_LABELS = 2  # transformers' PretrainedConfig default, implied when a config omits id2label
# Weight files transformers looks for, in its order of preference (safetensors first).
WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                "pytorch_model.bin")
# What a fresh PM head may leave behind when it starts from a causal LM (TRL's RewardTrainer does the same).
NEW_HEAD_PREFIXES = ("score.", "classifier.")
DROPPED_LM_HEAD_PREFIXES = ("lm_head.",)
SHOWN_KEYS = 3  # keys quoted in an error message


@dataclass
class PMLoadOptions:
    """How a PM is loaded and fed; one section reused by `pmopt score`, bon and ppo."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"  # auto: the checkpoint's own dtype
    device: str | None = None  # None: the run's device (cuda when present, else cpu)
    device_map: Literal["auto"] | None = None  # "auto": spread a PM larger than one device (accelerate)
    trust_remote_code: bool = False  # run modelling code shipped with a hub checkpoint
    attn_implementation: AttnImplementation | None = None  # None: transformers' default (sdpa where supported)
    max_length: int | None = None  # tokens per scored sequence; longer ones keep their last max_length tokens
    max_batch_tokens: int | None = None  # padded tokens per scoring batch: long sequences get smaller batches
    # passed to apply_chat_template when rendering pairs; None: the kwargs the PM was trained with
    chat_template_kwargs: dict | None = None

    def validate(self, where: str = "pm_load") -> None:
        """ValueError naming `where`.key (configs turn it into an error naming the file too)."""
        for name, check in (("dtype", resolve_dtype), ("attn_implementation", attn_kwargs), ("device", check_device)):
            try:
                check(getattr(self, name))
            except PmoptError as exc:
                raise ValueError(f"{where}.{name}: {exc}") from None
        if self.device_map not in (None, "auto"):
            raise ValueError(f"{where}.device_map: expected 'auto' or null, got {self.device_map!r}")
        for name in ("max_length", "max_batch_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{where}.{name}: must be an integer >= 1, got {value!r}")

    def for_run(self, device=None, trust_remote_code: bool = False,
                attn_implementation: str | None = None) -> PMLoadOptions:
        """These options with a run's own settings filling what they leave unset: the run's device (unless a
        device_map places the PM), and the run-wide trust_remote_code / attn_implementation keys."""
        run_device = None if device is None or self.device_map else str(device)
        return replace(self, device=self.device or run_device,
                       trust_remote_code=self.trust_remote_code or trust_remote_code,
                       attn_implementation=self.attn_implementation or attn_implementation)


def resolve_dtype(dtype) -> torch.dtype | str:
    """None -> float32 (scores are compared across PMs and runs); "auto" -> the checkpoint's dtype."""
    return resolve_model_dtype(dtype, default=torch.float32)


# ---------------------------------------------------------------------- the config


def read_model_config(source: str, trust_remote_code: bool = False) -> tuple[dict, str]:
    """(config dict, where it came from): a local config.json, or the hub's (may need the network)."""
    local = Path(source)
    if local.exists():
        config_file = local / "config.json"
        if not config_file.is_file():
            raise PmoptError(f"{local}: no config.json (not a Hugging Face model directory)")
        try:
            return json.loads(config_file.read_text(encoding="utf-8")), str(config_file)
        except json.JSONDecodeError as exc:
            raise PmoptError(f"{config_file}: malformed JSON ({exc.msg})") from None
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise PmoptError(f"{source}: not found locally; loading it as a hub model id failed: "
                         f"{one_line(exc)}") from None
    return config, f"{source} (hub) config.json"


def check_num_labels(config_file: Path) -> None:
    """A PM has one output. A classifier checkpoint with more labels is not a reward model."""
    if not config_file.is_file():
        raise PmoptError(f"{config_file.parent}: no config.json (not a Hugging Face model directory)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PmoptError(f"{config_file}: malformed JSON ({exc.msg})") from None
    check_label_count(config, str(config_file))


def check_label_count(config: dict, where: str) -> None:
    """A causal-LM config has no label fields (its head is replaced by a fresh 1-label score head);
    a `*ForSequenceClassification` config without them has transformers' default of 2 labels."""
    field, labels = "architectures", DEFAULT_NUM_LABELS if is_classifier(config) else None
    if config.get("id2label"):
        field, labels = "id2label", len(config["id2label"])
    if "num_labels" in config:
        field, labels = "num_labels", config["num_labels"]
    if labels is not None and labels != 1:
        raise PmoptError(f"{where}: field '{field}': the checkpoint is a classifier with {labels} "
                         "labels; a preference model needs exactly 1 (a scalar reward)")


def is_classifier(config: dict) -> bool:
    return any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or [])


# ---------------------------------------------------------------------- the weights


def load_seq_cls(name_or_path: str, dtype, trust_remote_code: bool = False, attn_implementation: str | None = None,
                 *, new_head: bool = False, device_map: str | None = None):
    """`AutoModelForSequenceClassification` with one label, loaded only if every weight loaded faithfully.

    `new_head=True` (PM training, value models) accepts a freshly initialised score head, and the dropped
    LM head, when the checkpoint is a base causal LM; a sequence-classifier checkpoint must always be whole.
    """
    from transformers import AutoModelForSequenceClassification

    name_or_path = str(name_or_path)
    attention = attn_kwargs(attn_implementation)
    config, config_where = read_model_config(name_or_path, trust_remote_code)
    check_label_count(config, config_where)
    where = weights_label(name_or_path)
    try:
        with quiet_load_report():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                name_or_path, num_labels=1, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code,
                output_loading_info=True, ignore_mismatched_sizes=True, weights_only=True, device_map=device_map,
                **attention)
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, safetensors_error()) as exc:
        raise PmoptError(f"{where}: could not load as a sequence classifier: {one_line(exc)}") from None
    check_loading_info(info, where, config, allow_new_head=new_head and not is_classifier(config))
    return model


def check_loading_info(info: dict, where: str, config: dict, allow_new_head: bool = False) -> None:
    """Refuse MISSING / UNEXPECTED / MISMATCH weights and load errors in transformers' loading report."""
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    if allow_new_head:
        missing = [k for k in missing if not k.startswith(NEW_HEAD_PREFIXES)]
        unexpected = [k for k in unexpected if not k.startswith(DROPPED_LM_HEAD_PREFIXES)]
    architecture = (config.get("architectures") or [config.get("model_type", "?")])[0]
    if missing and all(k.startswith(NEW_HEAD_PREFIXES) for k in missing) and not is_classifier(config):
        raise PmoptError(f"{where}: a {architecture} checkpoint without a trained score head ({shown(missing)} "
                         "missing): not a preference model; train one from it with `pmopt train-pm`")
    if missing:
        raise PmoptError(f"{where}: {len(missing)} weights the model needs are missing from the checkpoint "
                         f"({shown(missing)}); it does not match its config ({architecture})")
    if unexpected:
        raise PmoptError(f"{where}: {len(unexpected)} weights in the checkpoint have no place in the model "
                         f"({shown(unexpected)}); it does not match its config ({architecture})")
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched:
        name, ckpt_shape, model_shape = mismatched[0]
        raise PmoptError(f"{where}: {len(mismatched)} weights have the wrong shape (e.g. {name}: "
                         f"{tuple(ckpt_shape)} in the checkpoint, {tuple(model_shape)} from the config)")
    errors = info.get("error_msgs") or []
    if errors:
        raise PmoptError(f"{where}: the weights did not load: {one_line(errors[0])}")


def weights_label(name_or_path: str) -> str:
    """The file an error should name: the directory's weights file (or index), or the hub id."""
    local = Path(name_or_path)
    if not local.exists():
        return f"{name_or_path} (hub)"
    for name in WEIGHT_FILES:
        if (local / name).is_file():
            return str(local / name)
    return str(local)


def shown(keys: list[str]) -> str:
    more = f", ... {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def safetensors_error() -> type[Exception]:
    from safetensors import SafetensorError

    return SafetensorError


@contextmanager
def quiet_load_report():
    """transformers logs a multi-line load report; pmopt checks the same facts and says them in one line."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


__all__ = ["PMLoadOptions", "load_seq_cls", "check_loading_info", "check_num_labels", "check_label_count",
           "read_model_config", "resolve_dtype", "weights_label", "DTYPES"]
