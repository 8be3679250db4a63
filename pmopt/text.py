"""Turning prompts and responses into text and token ids: the one rendering used everywhere.

PM training, PM scoring, sampling and PPO all call these functions, so a PM scores exactly the token
sequences it was trained on and a policy is sampled from exactly the prompts it is graded on.

- A prompt is a string (used verbatim, e.g. an HH-RLHF dialogue ending in "\n\nAssistant:") or a list
  of chat messages. Messages are rendered with the tokenizer's chat template when it has one, else
  with the plain template `User: …\nAssistant: …` (DESIGN §4). A final assistant message is a
  prefill: the response continues it.
- `join(prompt_text, response)` appends the response after one space unless the response already
  starts with whitespace (HH-RLHF responses do: " I'm sorry…").
- A scored sequence ends with the tokenizer's EOS token, as TRL's RewardTrainer does for text data.
  An encoder's tokenizer (one with a CLS token: BERT, RoBERTa, DeBERTa) instead wraps it in its own
  `[CLS] ... [SEP]` (`encode_scored`): its classifier pools the CLS token (Devlin et al. 2019, §3).
"""

from __future__ import annotations

from dataclasses import dataclass

Messages = list[dict]
Text = str | Messages


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


def render_prompt(prompt: Text, tokenizer=None, template: PlainTemplate = PLAIN) -> str:
    """The text the policy continues: a verbatim string, or messages plus a generation prompt."""
    if isinstance(prompt, str):
        return prompt
    messages = list(prompt)
    prefill = None
    if messages and messages[-1]["role"] == "assistant":
        prefill = messages.pop()["content"]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
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


def scored_text(prompt: Text, response: str, tokenizer=None, prefix: Messages | None = None,
                template: PlainTemplate = PLAIN) -> str:
    """Prompt + response (+ EOS): what a PM reads. `prefix` messages are prepended (DESIGN §5)."""
    if prefix:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        prompt = list(prefix) + list(messages)
    text = join(render_prompt(prompt, tokenizer, template), response)
    if tokenizer is None or is_encoder_tokenizer(tokenizer):
        return text  # an encoder's tokenizer appends its own end-of-sequence token ([SEP], </s>)
    eos = getattr(tokenizer, "eos_token", None)
    return text + eos if eos and not text.endswith(eos) else text


def encode(tokenizer, text: str) -> list[int]:
    """Token ids without the tokenizer adding BOS/EOS on its own (we add EOS explicitly)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_scored(tokenizer, text: str) -> list[int]:
    """Token ids a PM reads (`scored_text`'s text): an encoder's tokenizer keeps its special tokens, since
    its classifier pools the first ([CLS]) token; a causal LM's gets none (the EOS is already in the text,
    and its classifier reads the last token)."""
    return tokenizer(text, add_special_tokens=is_encoder_tokenizer(tokenizer))["input_ids"]


def is_encoder_tokenizer(tokenizer) -> bool:
    """A CLS token marks an encoder's tokenizer (BERT, RoBERTa, DeBERTa); causal LMs' have none."""
    return getattr(tokenizer, "cls_token", None) is not None
