"""Turning prompts and responses into text and token ids: the one rendering used everywhere.

PM training, PM scoring, sampling and PPO all call these functions, so a PM scores exactly the token
sequences it was trained on and a policy is sampled from exactly the prompts it is graded on.

What a policy continues (`render_prompt`):

- A string prompt is used verbatim (e.g. an HH-RLHF dialogue ending in "\n\nAssistant:").
- Messages are rendered with the tokenizer's chat template (`add_generation_prompt=True`) when it has
  one, else with the plain template `User: …\nAssistant:` (docs/ARCHITECTURE.md §4). A final assistant message is a
  prefill: the response continues it. `chat_template_kwargs` reach `apply_chat_template`.

What a PM reads (`scored_text`, the same rule in training and scoring):

- With a chat template, the prompt messages plus the response as one assistant message are rendered
  by `apply_chat_template` as one conversation, no generation prompt and nothing appended: exactly the
  ids TRL's `RewardTrainer` trains on for conversational `chosen` / `rejected` (its dataset preparation
  tokenizes `prompt + chosen` with `apply_chat_template`, which adds no special tokens beyond the
  template's), so the turn ends as the template closes it (ChatML's `<|im_end|>\n`, Llama 3's
  `<|eot_id|>`, Gemma's `<end_of_turn>\n`), not with an appended EOS. A string prompt in the HH-RLHF
  form "\n\nHuman: …\n\nAssistant: …\n\nAssistant:" is parsed into messages first (turn texts and the
  response stripped of the spaces around them), so an HH pair and its messages form score the same;
  any other string prompt stays verbatim. A prefill and the response form one assistant message.
- Without a chat template (and for a string that is not an HH dialogue), the prompt rendered as
  above, `join`ed with the response, plus the tokenizer's EOS token, as TRL does for text data (except
  that TRL's `tokenizer(text)` would add a BOS where the tokenizer's post-processor has one, and no
  space). `join(prompt_text, response)` adds one space unless either side already has whitespace there.
- An encoder's tokenizer (one with a CLS token: BERT, RoBERTa, DeBERTa) wraps the text in its own
  `[CLS] ... [SEP]` (`encode_scored`) instead of an appended EOS: its classifier pools the CLS token
  (Devlin et al. 2019, §3).

`rendering(tokenizer, kwargs)` describes which rule a tokenizer applies (the chat template's hash and
kwargs, or verbatim text with its EOS); a trained PM records it, and scoring it with a tokenizer that
renders differently is an error (`pmopt.pm.model`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

Messages = list[dict]
Text = str | Messages

# HH-RLHF's turn markers (Bai et al. 2022): "\n\nHuman: …\n\nAssistant: …"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
# The assistant text of the conversation `end_of_turn_ids` renders to find what closes a turn.
_TURN_PROBE = "pmopt end of turn probe"


@dataclass
class PlainTemplate:
    """Used when the tokenizer has no chat template."""

    user: str = "User:"
    assistant: str = "Assistant:"
    system: str = "System:"
    separator: str = "\n"

    def role_tag(self, role: str) -> str:
        return {"user": self.user, "assistant": self.assistant, "system": self.system}[role]


PLAIN = PlainTemplate()


def has_chat_template(tokenizer) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def render_prompt(prompt: Text, tokenizer=None, template: PlainTemplate = PLAIN,
                  chat_template_kwargs: dict | None = None) -> str:
    """The text the policy continues: a verbatim string, or messages plus a generation prompt."""
    if isinstance(prompt, str):
        return prompt
    messages = list(prompt)
    prefill = None
    if messages and messages[-1]["role"] == "assistant":
        prefill = messages.pop()["content"]
    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             **(chat_template_kwargs or {}))
        return text + prefill if prefill else text
    lines = [f"{template.role_tag(m['role'])} {m['content']}" for m in messages]
    text = template.separator.join(lines) + template.separator + template.assistant
    return join(text, prefill) if prefill else text


def response_text(response: Text) -> str:
    """A response given as messages is the content of its assistant turns."""
    if isinstance(response, str):
        return response
    return " ".join(m["content"] for m in response if m["role"] == "assistant")


def join(prompt_text: str, response: str) -> str:
    if not response or response[:1].isspace() or prompt_text[-1:].isspace():
        return prompt_text + response
    return prompt_text + " " + response


def parse_hh_dialogue(text: str) -> Messages | None:
    """An HH-RLHF prompt ("\n\nHuman: …\n\nAssistant: …\n\nAssistant:") as messages, or None when the
    string is not one (it must open with a Human turn and end in an Assistant turn). Turn texts are
    stripped; a final Assistant turn with text is kept as a prefill, an empty one is the reply's slot."""
    normalized = text if text.startswith("\n\n") else "\n\n" + text
    parts = _HH_TURN.split(normalized)
    if parts[0].strip() or len(parts) < 5 or parts[1] != "Human" or parts[-2] != "Assistant":
        return None
    messages = [{"role": _HH_ROLES[tag], "content": content.strip()}
                for tag, content in zip(parts[1::2], parts[2::2], strict=True)]
    if not messages[-1]["content"]:
        messages.pop()
    return messages


def scored_conversation(prompt: Text, response: str, prefix: Messages | None = None) -> Messages | None:
    """The whole conversation a templated PM reads: (prefix +) prompt messages + the response as the
    assistant's reply, or None for a string prompt that is not an HH dialogue (it is read verbatim)."""
    if isinstance(prompt, str):
        messages = parse_hh_dialogue(prompt)
        if messages is not None:
            response = response.strip()  # HH puts a space after "Assistant:"; the turn texts are stripped too
        elif prefix:
            messages = [{"role": "user", "content": prompt}]
        else:
            return None
    else:
        messages = list(prompt)
    messages = list(prefix or []) + messages
    if messages and messages[-1]["role"] == "assistant":  # a prefill: the response continues it
        response = join(messages.pop()["content"], response)
    return messages + [{"role": "assistant", "content": response}]


def scored_text(prompt: Text, response: str, tokenizer=None, prefix: Messages | None = None,
                template: PlainTemplate = PLAIN, chat_template_kwargs: dict | None = None) -> str:
    """What a PM reads (the module docstring's rule). `prefix` messages are prepended (docs/ARCHITECTURE.md §5)."""
    if has_chat_template(tokenizer):
        conversation = scored_conversation(prompt, response, prefix)
        if conversation is not None:
            return tokenizer.apply_chat_template(conversation, tokenize=False, **(chat_template_kwargs or {}))
    if prefix:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        prompt = list(prefix) + list(messages)
    text = join(render_prompt(prompt, tokenizer, template, chat_template_kwargs), response)
    if tokenizer is None or is_encoder_tokenizer(tokenizer):
        return text  # an encoder's tokenizer appends its own end-of-sequence token ([SEP], </s>)
    eos = getattr(tokenizer, "eos_token", None)
    return text + eos if eos and not text.endswith(eos) else text


def rendering(tokenizer, chat_template_kwargs: dict | None = None) -> dict:
    """Which rendering rule `scored_text` applies with this tokenizer: what a PM records in training and
    checks in scoring (a different template, kwargs or EOS would give it token sequences it never saw)."""
    if has_chat_template(tokenizer):
        template = tokenizer.get_chat_template()
        return {"rendering": "chat_template",
                "template_hash": hashlib.sha256(template.encode("utf-8")).hexdigest()[:16],
                "chat_template_kwargs": dict(chat_template_kwargs or {})}
    eos = None if is_encoder_tokenizer(tokenizer) else getattr(tokenizer, "eos_token", None)
    return {"rendering": "verbatim", "eos_token": eos}


def describe_rendering(record: dict) -> str:
    if record.get("rendering") == "chat_template":
        return (f"chat template {record.get('template_hash')} with chat_template_kwargs "
                f"{record.get('chat_template_kwargs') or {}}")
    return f"verbatim text + EOS {record.get('eos_token')!r}"


def end_of_turn_ids(tokenizer, chat_template_kwargs: dict | None = None) -> list[int]:
    """The special token a chat template closes an assistant turn with (ChatML's <|im_end|>, Llama 3's
    <|eot_id|>, Gemma's <end_of_turn>), found by rendering a two-turn conversation; [] without one."""
    if not has_chat_template(tokenizer):
        return []
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _TURN_PROBE}]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, **(chat_template_kwargs or {}))
    except Exception:  # noqa: BLE001 (a template may refuse this probe; the EOS ids still stop the sampler)
        return []
    if _TURN_PROBE not in text:
        return []
    tail = encode(tokenizer, text[text.rindex(_TURN_PROBE) + len(_TURN_PROBE):])
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return tail[:1] if tail and tail[0] in special else []


def encode(tokenizer, text: str) -> list[int]:
    """Token ids without the tokenizer adding BOS/EOS on its own (we add EOS explicitly)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_scored(tokenizer, text: str) -> list[int]:
    """Token ids a PM reads (`scored_text`'s text): an encoder's tokenizer keeps its special tokens, since
    its classifier pools the first ([CLS]) token; a causal LM's gets none (the EOS or the template's
    end of turn is already in the text, and its classifier reads the last token). This is also what
    `apply_chat_template(tokenize=True)` does: it encodes the rendered text with add_special_tokens=False."""
    return tokenizer(text, add_special_tokens=is_encoder_tokenizer(tokenizer))["input_ids"]


def is_encoder_tokenizer(tokenizer) -> bool:
    """A CLS token marks an encoder's tokenizer (BERT, RoBERTa, DeBERTa); causal LMs' have none."""
    return getattr(tokenizer, "cls_token", None) is not None
