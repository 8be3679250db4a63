"""One rendering rule for PM training and scoring, equal to TRL's own tokenization of conversational pairs.

BPE tokenizers are trained here (the `tokenizers` library) on HH-RLHF dialogues from ../shared/data and
given the chat templates of three families plus none:

- ChatML (Qwen2): `<|im_start|>role\\n…<|im_end|>\\n`, EOS `<|im_end|>` (the turn ends with one more "\\n");
- Llama 3: `<|start_header_id|>role<|end_header_id|>\\n\\n…<|eot_id|>`, BOS from the template *and* the
  tokenizer's post-processor (apply_chat_template must not add a second one);
- Gemma: `<start_of_turn>model\\n…<end_of_turn>\\n`, EOS `<eos>` differs from the end of turn;
- no template: verbatim text + EOS, TRL's rule for text data.

For each, the ids pmopt trains on (`tokenize_pairs`) equal the ids a `PreferenceModel` scores, equal the
ids TRL's `RewardTrainer` prepares from the same pair, and the PM's score equals its forward on TRL's ids.
"""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from builders import CHATML, FAMILIES, LLAMA3, bpe_tokenizer
from conftest import require_shared

from pmopt.data.preferences import load_pairs
from pmopt.io import PmoptError
from pmopt.pm.model import PreferenceModel, load_tokenizer, read_info
from pmopt.pm.train import tokenize_pairs
from pmopt.text import encode, end_of_turn_ids, parse_hh_dialogue, rendering

HH = "hh-rlhf/harmless-base/test.jsonl.gz"

def hh_texts(n: int) -> list[str]:
    with gzip.open(require_shared(HH), "rt", encoding="utf-8") as f:
        return [json.loads(line)["chosen"] for _, line in zip(range(n), f, strict=False)]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return hh_texts(300)


def tiny_seq_cls(tokenizer, family: str, seed: int = 0):
    """A real 2-layer Qwen2 (ChatML) / Gemma / Llama classifier with one label, sized for the tokenizer."""
    from transformers import AutoModelForSequenceClassification, GemmaConfig, LlamaConfig, Qwen2Config

    config_class = {"chatml": Qwen2Config, "gemma": GemmaConfig}.get(family, LlamaConfig)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = config_class(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=4, intermediate_size=64, head_dim=8, max_position_embeddings=4096,
                          pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, num_labels=1)
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config).eval()


def short_pairs(n: int = 6) -> list[dict]:
    """The first `n` HH-RLHF pairs with short, alternating dialogues (Gemma's template insists on it)."""
    pairs = []
    for pair in load_pairs(require_shared(HH)):
        messages = parse_hh_dialogue(pair["prompt"])
        alternating = messages and all(m["role"] == ("user" if i % 2 == 0 else "assistant")
                                       for i, m in enumerate(messages))
        if alternating and len(pair["prompt"]) < 400 and len(pair["chosen"]) < 300 and len(pair["rejected"]) < 300:
            pairs.append(pair)
        if len(pairs) == n:
            return pairs
    raise AssertionError("not enough short HH pairs")


def trl_prepared_ids(tmp_path, model, tokenizer, records: list[dict]) -> dict[str, list]:
    """TRL's own dataset preparation: RewardTrainer tokenizes the records itself (no pre-tokenized columns)."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, max_length=None,
                        disable_tqdm=True, dataset_num_proc=None)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(records),
                            processing_class=tokenizer)
    return {"chosen_ids": list(trainer.train_dataset["chosen_ids"]),
            "rejected_ids": list(trainer.train_dataset["rejected_ids"])}


def trl_records(pairs: list[dict], conversational: bool) -> list[dict]:
    """The same pairs in TRL's explicit-prompt form: conversational (messages) or text."""
    if not conversational:
        return [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    return [{"prompt": parse_hh_dialogue(p["prompt"]),
             "chosen": [{"role": "assistant", "content": p["chosen"].strip()}],
             "rejected": [{"role": "assistant", "content": p["rejected"].strip()}]} for p in pairs]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_training_ids_equal_scoring_ids_equal_trl(family, texts, tmp_path):
    tokenizer = bpe_tokenizer(texts, family)
    model = tiny_seq_cls(tokenizer, family)
    pairs = short_pairs()
    ours = tokenize_pairs(pairs, tokenizer, 4096, "pairs")
    pm = PreferenceModel(model, tokenizer, name=family)
    scored = pm.encode_pairs([p["prompt"] for p in pairs] * 2,
                             [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])
    assert scored == ours["chosen_ids"] + ours["rejected_ids"]
    theirs = trl_prepared_ids(tmp_path, tiny_seq_cls(tokenizer, family), tokenizer,
                              trl_records(pairs, conversational=family != "none"))
    assert ours == theirs
    if FAMILIES[family][5] is not None:  # the turn ends as the template closes it, with no EOS appended
        end_of_turn = tokenizer.convert_tokens_to_ids(FAMILIES[family][6])
        closing = tokenizer.apply_chat_template([{"role": "user", "content": "x"},
                                                 {"role": "assistant", "content": "y"}], tokenize=False)
        tail = encode(tokenizer, closing[closing.rindex("y") + 1:])  # ChatML/Gemma: end of turn + "\n"
        assert tail[0] == end_of_turn and all(ids[-len(tail):] == tail for ids in ours["chosen_ids"])
        assert end_of_turn_ids(tokenizer) == [end_of_turn]
        bos = tokenizer.bos_token_id
        assert bos is None or all(ids[:2].count(bos) == 1 for ids in ours["chosen_ids"])  # one BOS, not two
    # the score is the model's own forward on TRL's ids
    scores = pm.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    with torch.no_grad():
        own = torch.cat([model(input_ids=torch.tensor([ids])).logits[:, 0] for ids in theirs["chosen_ids"]])
    assert torch.allclose(scores, own, atol=1e-5)


@pytest.mark.parametrize("family", ["chatml", "llama3", "gemma"])
def test_hh_string_pair_scores_as_its_messages(family, texts):
    tokenizer = bpe_tokenizer(texts, family)
    pm = PreferenceModel(tiny_seq_cls(tokenizer, family), tokenizer, name=family)
    pair = short_pairs(1)[0]
    messages = parse_hh_dialogue(pair["prompt"])
    assert messages[0]["role"] == "user" and messages[0]["content"] == messages[0]["content"].strip()
    assert pm.encode_pairs([pair["prompt"]], [pair["chosen"]]) == pm.encode_pairs([messages], [pair["chosen"].strip()])
    as_string = pm.score([pair["prompt"]], [pair["rejected"]])
    as_messages = pm.score([messages], [pair["rejected"].strip()])
    assert as_string.item() == as_messages.item()


def test_hh_parsing_and_verbatim_strings():
    assert parse_hh_dialogue("\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:") == [
        {"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you?"}]
    # a final Assistant turn with text is a prefill; a string not opening with Human, or ending on a Human
    # turn, is not an HH prompt (it stays verbatim)
    assert parse_hh_dialogue("Human: q\n\nAssistant: I believe")[-1] == {"role": "assistant", "content": "I believe"}
    assert parse_hh_dialogue("What is 2 + 2?") is None
    assert parse_hh_dialogue("\n\nHuman: q\n\nAssistant: a\n\nHuman: more") is None


@pytest.fixture(scope="module")
def chatml_pm(texts, tmp_path_factory):
    """A ChatML PM trained by `pmopt train-pm`'s code on 24 HH pairs (2 steps), saved with its record."""
    from pmopt.config import load_config
    from pmopt.pm.train import PMTrainConfig, train_pm

    root = tmp_path_factory.mktemp("chatml_pm")
    tokenizer = bpe_tokenizer(texts, "chatml")
    base = root / "base"
    tiny_seq_cls(tokenizer, "chatml").save_pretrained(base)
    tokenizer.save_pretrained(base)
    pairs_file = root / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps({k: p[k] for k in ("prompt", "chosen", "rejected")}) + "\n"
                                  for p in short_pairs(24)), encoding="utf-8")
    cfg = load_config(PMTrainConfig, data={
        "model": {"name_or_path": str(base)},
        "data": {"train": str(pairs_file), "max_length": 4096, "eval_fraction": 0.25},
        "train": {"max_steps": 2, "batch_size": 8, "logging_steps": 1, "save_steps": 100}})
    return train_pm(cfg, root / "pm")


def test_pm_records_its_rendering_and_refuses_another(chatml_pm, tmp_path):
    pm_dir, tokenizer = chatml_pm, load_tokenizer(str(chatml_pm))
    record = read_info(pm_dir)["rendering"]
    assert record == rendering(tokenizer) and record["rendering"] == "chat_template"
    assert record["template_hash"] and record["chat_template_kwargs"] == {}
    pm = PreferenceModel.load(pm_dir, device="cpu")
    pair = short_pairs(1)[0]
    assert pm.encode_pairs([pair["prompt"]], [pair["chosen"]]) == tokenize_pairs([pair], tokenizer, 4096, "p")["chosen_ids"]
    # other chat_template_kwargs than the PM's: an error naming both
    with pytest.raises(PmoptError, match=r"pmopt_pm.json: field 'rendering'.*\{\}.*enable_thinking"):
        PreferenceModel.load(pm_dir, device="cpu", chat_template_kwargs={"enable_thinking": False})
    # another template in the PM's tokenizer (a Llama 3 one): an error naming both templates' hashes
    other = tmp_path / "other"
    pm.model.save_pretrained(other)
    tokenizer.chat_template = LLAMA3
    tokenizer.save_pretrained(other)
    (other / "pmopt_pm.json").write_text((pm_dir / "pmopt_pm.json").read_text())
    new_hash = rendering(tokenizer)["template_hash"]
    with pytest.raises(PmoptError, match=f"{record['template_hash']}.*{new_hash}"):
        PreferenceModel.load(other, device="cpu")
    # no template at all: verbatim text, named as such
    tokenizer.chat_template = None
    with pytest.raises(PmoptError, match="verbatim text"):
        PreferenceModel(pm.model, tokenizer, info=read_info(pm_dir))


def test_pm_without_a_record_warns_under_a_template(chatml_pm, tmp_path):
    pm_dir, tokenizer = chatml_pm, load_tokenizer(str(chatml_pm))
    info = read_info(pm_dir)
    del info["rendering"]
    with pytest.warns(UserWarning, match="no 'rendering' recorded"):
        PreferenceModel(PreferenceModel.load(pm_dir, device="cpu").model, tokenizer, info=info)


def test_chat_template_kwargs_reach_the_pm_rendering(texts):
    """A template branching on a kwarg (Qwen3's enable_thinking): training and scoring both pass it."""
    tokenizer = bpe_tokenizer(texts, "chatml")
    tokenizer.chat_template = CHATML.replace("'<|im_start|>' + message['role'] + '\n' + message['content']",
                                             "'<|im_start|>' + message['role'] + '\n' + ('<|im_start|>' "
                                             "if (enable_thinking is defined and not enable_thinking and "
                                             "message['role'] == 'assistant') else '') + message['content']")
    model = tiny_seq_cls(tokenizer, "chatml")
    pair = short_pairs(1)[0]
    kwargs = {"enable_thinking": False}
    plain = tokenize_pairs([pair], tokenizer, 4096, "p")["chosen_ids"][0]
    with_kwargs = tokenize_pairs([pair], tokenizer, 4096, "p", chat_template_kwargs=kwargs)["chosen_ids"][0]
    assistant_turns = 1 + sum(m["role"] == "assistant" for m in parse_hh_dialogue(pair["prompt"]))
    assert len(with_kwargs) == len(plain) + assistant_turns  # one marker token per assistant turn
    info = {"rendering": rendering(tokenizer, kwargs)}
    pm = PreferenceModel(model, tokenizer, info=info)  # the recorded kwargs are the default
    assert pm.encode_pairs([pair["prompt"]], [pair["chosen"]]) == [with_kwargs]
