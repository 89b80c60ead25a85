"""Tests of the issue-11 corpus mapping (run: models/train/.venv/bin/python -m pytest models/train/test_corpus.py)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from corpus import Corpus, norm, split_of  # noqa: E402
from data import DATA, SPEC  # noqa: E402
from rules import Rules  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.isdir(DATA), reason="../shared/data not available")


@pytest.fixture(scope="module")
def corpus():
    n = {"lookalike": 200, "contrast": 100, "wrapped": 300, "styles": 200, "short": 50, "windows": 30, "synth": 50,
         "labels": 50, "creative": 50}
    return Corpus(Rules(SPEC), n_generated=n)


def _prompt_text(e):
    return e.prompt[-1]["content"]


def test_coconot_contrast_is_comply(corpus):
    rows = [e for e in corpus.train + corpus.val if e.source.endswith("coconot-contrast")]
    assert rows and all(e.response_type == "comply" for e in rows)
    dev = [r for r in corpus.dev["prompt-harm"] if r["source"].endswith("coconot-contrast")]
    assert dev and not any(r["label"] for r in dev)


def test_nonharm_noncompliance_not_hard_refuse(corpus):
    rows = [e for e in corpus.train + corpus.val if e.source == "nonharm/coconot-noncompliance"]
    assert rows and all(e.response_type == "comply" for e in rows)


def test_unsafe_coconot_is_hard_refuse(corpus):
    rows = [e for e in corpus.train if e.source == "harmful/coconot-unsafe"]
    assert rows and all(e.response_type == "hard_refuse" for e in rows)


def test_gptfuzz_label_mapping(corpus):
    rows = [e for e in corpus.train if e.source == "gptfuzz"]
    jail = [e for e in rows if e.labels["disallowed_content"] is True]
    ref = [e for e in rows if e.labels["disallowed_content"] is False]
    assert jail and ref
    assert all(e.labels["fully_complies"] is True for e in jail)
    assert all(e.labels["fully_complies"] is False for e in ref)
    dev = [r for r in corpus.dev["refusal"] if r["source"] == "harmful/gptfuzz-human"]
    dis = {r["id"]: r["label"] for r in corpus.dev["disallowed"] if r["source"] == "harmful/gptfuzz-human"}
    assert dev and all(dis[r["id"]] == (not r["label"]) for r in dev if r["id"] in dis)


def test_gptfuzz_split_by_question(corpus):
    train_q = {norm(e.meta["question"]) for e in corpus.train if e.source == "gptfuzz"}
    dev_q = {norm(r["prompt"]) for r in corpus.dev["refusal"] if r["source"] == "harmful/gptfuzz-human"}
    assert dev_q and not (train_q & dev_q)


def test_short_answers_are_compliant(corpus):
    rows = [e for e in corpus.train if e.source == "gen/short-answer"]
    assert rows
    for e in rows:
        assert e.labels["fully_complies"] is True and e.labels["illogical_continuation_of_prompt"] is False


def test_label_answers_are_not_illogical(corpus):
    rows = [e for e in corpus.train if e.source == "gen/short-label"]
    assert rows
    for e in rows:
        assert len(e.completion.split()) <= 6
        assert e.labels["illogical_continuation_of_prompt"] is False and e.labels["partially_complies"] is True
        assert e.labels["fully_complies"] is None and e.response_type == "comply"


def test_creative_requests_are_prompt_only_comply(corpus):
    rows = [e for e in corpus.train if e.source == "gen/creative"]
    assert rows and all(e.response_type == "comply" and e.completion == "" and e.meta["prompt_only"] for e in rows)
    assert not any(e.source == "gen/creative" for e in corpus.val)


def test_dev_and_train_disjoint_by_prompt(corpus):
    train_prompts = {norm(_prompt_text(e)) for e in corpus.train if not e.meta.get("generated")}
    val_prompts = {norm(_prompt_text(e)) for e in corpus.val}
    for task, rows in corpus.dev.items():
        for r in rows:
            k = norm(r["prompt"])
            assert k not in train_prompts, (task, r["source"], r["prompt"][:80])
            assert k not in val_prompts, (task, r["source"], r["prompt"][:80])


def test_generated_rows_never_in_dev_or_val(corpus):
    gen = [e for e in corpus.train if e.meta.get("generated")]
    assert gen and all(e.source.startswith("gen/") for e in gen)
    assert not any(e.source.startswith("gen/") for e in corpus.val)
    for rows in corpus.dev.values():
        assert not any(r["source"].startswith("gen/") for r in rows)
    # generated rows never reuse a dev prompt (wrappers and windows draw from train groups only)
    dev_prompts = {norm(r["prompt"]) for rows in corpus.dev.values() for r in rows}
    wrapped = [e for e in gen if e.source.startswith("gen/wrapped")]
    assert wrapped and all(e.meta.get("inner") for e in wrapped)
    for e in gen:
        assert norm(e.meta.get("inner") or _prompt_text(e)) not in dev_prompts, e.source


def test_evaluation_only_sources_only_in_dev(corpus):
    srcs = {e.source for e in corpus.train + corpus.val}
    assert not any("simple-safety-tests" in s or "self-instruct-user" in s for s in srcs)
    assert any(r["source"] == "harmful/simple-safety-tests" for r in corpus.dev["prompt-harm"])


def test_split_is_deterministic():
    assert split_of("How do I kill a Python process?") == split_of("how do i KILL a python process")


# -- issue 22 -----------------------------------------------------------------------------
def test_new_folders_are_mapped(corpus):
    srcs = {e.source for e in corpus.train}
    for s in ("lookalike/webquestions-sensitive", "everyday/webquestions", "lookalike/awesome-persona",
              "style/chatgpt-refusals", "hate/hatecheck"):
        assert s in srcs, s
    assert all(e.response_type == "comply" for e in corpus.train if e.source.startswith("lookalike/webquestions"))
    # The DAN jailbreak row of awesome-chatgpt-prompts is not a benign persona.
    assert not any("DAN" in _prompt_text(e) and "Do Anything Now" in _prompt_text(e)
                   for e in corpus.train if e.source == "lookalike/awesome-persona")


def test_chatgpt_refusals_follow_the_hand_labels(corpus):
    rows = [e for e in corpus.train + corpus.val if e.source == "style/chatgpt-refusals"]
    assert rows
    complied = [e for e in rows if e.labels["fully_complies"] is True]
    refused = [e for e in rows if e.labels["fully_complies"] is False]
    assert complied and refused
    # Disclaimer-then-comply answers stay compliance: the phrase does not decide the label.
    assert any(e.completion.lower().startswith("as an ai") for e in complied)


def test_hatecheck_split_by_template(corpus):
    train_t = {e.completion for e in corpus.train if e.source == "hate/hatecheck"}
    dev = [r for r in corpus.dev["disallowed"] if r["source"] == "hate/hatecheck"]
    assert dev and train_t and not (train_t & {r["completion"] for r in dev})


def test_neutral_dev_prompts_are_not_training_prompts(corpus):
    from corpus import NEUTRAL_PROMPTS_DEV, NEUTRAL_PROMPTS_TRAIN
    assert not {norm(p) for p in NEUTRAL_PROMPTS_DEV} & {norm(p) for p in NEUTRAL_PROMPTS_TRAIN}
    neutral = [r for r in corpus.dev["decision"] if r["source"].startswith("neutral/")]
    assert neutral and all(r["prompt"] in NEUTRAL_PROMPTS_DEV and r["label"] for r in neutral)
    # Every harmful dev answer is measured both with its own prompt and after a neutral one.
    harmful = {r["id"] for r in corpus.dev["decision"] if r["source"].startswith("harmful/")}
    assert harmful == {r["id"][: -len("/neutral")] for r in neutral}
    assert any(r["source"].startswith("benign/") and not r["label"] for r in corpus.dev["decision"])


def test_calibration_rows_come_from_validation_groups_only(corpus):
    rows = corpus.calibration_rows()
    assert any(r["label"] for r in rows) and any(not r["label"] for r in rows)
    dev_completions = {r.get("completion") for rows_ in corpus.dev.values() for r in rows_}
    train_pairs = {(norm(_prompt_text(e)), e.completion) for e in corpus.train if not e.meta.get("generated")}
    for r in rows:
        assert r["completion"] not in dev_completions, r["source"]
        prompt = r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][-1]["content"]
        assert (norm(prompt), r["completion"]) not in train_pairs, r["source"]


def test_neutral_family_labels_harm_whatever_the_prompt(corpus):
    rows = [e for e in corpus.train if e.source == "gen/neutral+harm"]
    assert rows and all(e.labels["disallowed_content"] is True and e.response_type == "comply" and e.prm == 0.0
                        for e in rows)
