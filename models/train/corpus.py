"""Training corpus and dev suite built from every folder of ../shared/data (issue 11).

One documented mapping from each source to `data.Example` rows (prompt messages,
completion, per-proposition labels True/False/None with None masked in the loss,
response_type or None, PRM target or None, source, weight).

Splits. Every row belongs to a *group* (its normalised final user request; for
JailbreakBench / refusal-direction completions the behaviour goal; for gptfuzz the
question text), and the group's sha1 decides train / val / dev. Equal requests in
different folders therefore land in the same split, and dev never shares a prompt with
train. Whole sources held out: simple-safety-tests (dev only), self-instruct
user-oriented tasks and their text-davinci-003 responses (dev only, evaluation data by
the upstream authors' request), rbr-gold test (never read here). Generated rows
(lookalike.py, synth.py, wrappers, windows) are built from TRAIN groups only and never
enter val or dev.

Mapping (prompt-only rows have an empty completion and every proposition masked):

| folder | rows | response_type | propositions | weight |
|---|---|---|---|---|
| refusal-direction splits + raw (AdvBench, HarmBench standard, StrongREJECT, TDC) | harmful requests, prompt-only | hard_refuse | - | 1.0 (copyright 0.3) |
| refusal-direction completions | 1,500 responses to the 100 JBB behaviours | hard_refuse | automatic: refusal phrase & not LG2-unsafe -> refusal; no phrase & LG2-unsafe -> harmful compliance; disagreement -> only what both imply | 0.5 |
| ailuminate-demo | harmful prompts | hard_refuse; `ssh` -> safe_refuse_2 (method asked) / safe_refuse_1; `spc_*`, `sxc_prn` (contextual) dropped | - | 1.0 |
| simple-safety-tests | 100 prompts | dev only | | |
| red-instruct | CatQA, DangerousQA (hard_refuse 1.0), HarmfulQA (noisy, 0.3); AdversarialQA = AdvBench (dedup) | hard_refuse | - | |
| coconot eval | `Requests with safety concerns` -> hard_refuse (0.8); incomplete / unsupported / indeterminate / humanizing -> comply (not harmful; 0.5) | | - | |
| coconot contrast | benign look-alikes | comply | - | 1.5 |
| coconot pref | contrast-style prompt + GPT-4 `chosen` answer | comply | compliant answer (apology/inability masked when a refusal phrase opens it); `rejected` unused | 1.0 |
| cyberseceval-mitre-frr | benign security coding prompts | comply | - | 0.4 (repetitive) |
| arena-hard | prompts (covert-misuse uid dropped) + 3 models' answers | comply | compliant answer; disclaimer-openers: inability/apology masked | 0.7 |
| mt-bench / vicuna-bench | first turns + GPT-4 reference answers | comply | compliant answer | 1.0 |
| gsm8k | question + worked solution, or a short final answer | comply | compliant answer (short answers: not illogical) | 0.5 |
| humaneval | "Complete the following Python function" + code | comply | compliant answer | 0.5 |
| mmlu-redux | question + short answer ("B", "B. text") (error_type ok only) | comply | compliant answer | 0.5 |
| self-instruct seed | instruction (+input) + output | comply | compliant answer | 1.0 |
| gptfuzz | human-labelled responses to wrapped questions; prompt = question in a random gptfuzz template (or bare) | hard_refuse | 1 -> fully_complies, disallowed_content True; 0 -> fully_complies, disallowed_content False | 1.0 |
| jailbreakbench | data.load_jbb weak labels | hard_refuse / None | weak | 0.7 |
| hh-rlhf-harmless | relative labels only: the conversation with a `chosen` final turn that opens with an explicit refusal -> fully_complies False, disallowed False | None | weak | 0.3 |
| rbr-gold train | gold, data.split_train_val (val part = gold_val) | gold | gold | 1.0 |
| webquestions | real short factoid questions; `sensitive_terms` rows (deaths, wars, drugs asked historically) are look-alikes | comply | - | 1.5 look-alike / 0.3 everyday |
| awesome-chatgpt-prompts | benign "act as ..." persona prompts (row 154, a DAN jailbreak, and 74, a gaslighter persona, dropped) | comply | - | 1.0 |
| jailbreakhub-prompts | in-the-wild jailbreak framings (train groups only, deduplicated by prefix) become wrappers of generated rows, around harmful and benign requests | by the inner request | - | - |
| chatgpt-refusals | hand-labelled tones, split by person: complied -> compliant answer (disclaimer openers keep fully_complies true), rejected -> refusal, redirected -> no compliance; disclaimed / contradicted left out | hard_refuse for the murder poems, else unknown | as said | 1.0 |
| hatecheck | statements as completion text after a neutral prompt, split by template: hateful -> disallowed_content true (spec category 5), non-hateful -> false; abuse of individuals / non-protected groups left out | comply | disallowed_content only | 0.5 |
| safetext | not used: its unsafe advice is "bad physical advice", not the spec's disallowed content | | | |

Issue 22 adds the `decision` dev task (real benign answers, label false; real harmful
compliances with their prompt and after a neutral prompt from `NEUTRAL_PROMPTS_DEV`, label
true) and `calibration_rows()` (the same kinds of rows from VALIDATION groups, for `rulegate
calibrate`), and generated families in lookalike.py: harmful text after neutral, benign and
mismatched prompts (`gen/neutral+harm`), benign answers after the same (`gen/neutral+benign`),
refusals without "I can't" and "As an AI ..." openings followed by an answer, and requests
after many filler turns.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import random
import re
from collections import Counter, defaultdict

from data import (DATA, NEUTRAL_PROMPTS_DEV, NEUTRAL_PROMPTS_TRAIN, Example, gold_example, load_gold, load_jbb,
                  split_train_val)
from rules import CLASS_VALUE

DEV_PCT, VAL_PCT = 20, 10  # percent of groups
SEED = 20261130

REFUSAL_RE = re.compile(
    r"(i'?m sorry|i am sorry|i apologi[sz]e|my apologies|as an ai|as a language model|i cannot|i can'?t|i can not|"
    r"i am unable|i'?m unable|i am not able|i'?m not able|i will not|i won'?t|i must decline|i must refuse|"
    r"not able to (help|assist|provide)|cannot (help|assist|provide|fulfill|comply)|is not appropriate|"
    r"it'?s not appropriate|against my (programming|guidelines|policy)|i do not feel comfortable|i'?m not comfortable)",
    re.I)
SELF_HARM_METHOD = re.compile(r"\b(how|way|ways|method|methods|painless|easiest|quickest|best|most effective|overdose|pills?|dose|"
                              r"jump|hang|cut|bleed|kill myself|end it)\b", re.I)


def norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", (text or "").lower())


def _h(key: str) -> int:
    return int(hashlib.sha1(("rg11:" + norm(key)).encode()).hexdigest()[:8], 16) % 100


def row_id(source: str, text: str) -> str:
    return f"{source}/{hashlib.sha1(norm(text).encode()).hexdigest()[:12]}"


# coconot contrast look-alikes are the scarcest negatives: half of them are held out for dev
# (by prompt text, so the same prompt in coconot_pref follows it).
_DEV_FORCE: set = set()


def _init_dev_force():
    if _DEV_FORCE:
        return
    for r in _read_jsonl(_p("coconot", "coconot_contrast_eval.jsonl")):
        if r["category"] == "Requests with safety concerns" and _h(r["prompt"]) < 50:
            _DEV_FORCE.add(norm(r["prompt"]))


def split_of(key: str) -> str:
    _init_dev_force()
    if norm(key) in _DEV_FORCE:
        return "dev"
    h = _h(key)
    if h < DEV_PCT:
        return "dev"
    if h < DEV_PCT + VAL_PCT:
        return "val"
    return "train"


def _user(text):
    return [{"role": "user", "content": text}]


def labels(props, **kw):
    d = {p: None for p in props}
    for k, v in kw.items():
        assert k in d, k
        d[k] = v
    return d


def answer_labels(props, clean=True, opener_refusal=False):
    """A compliant answer to a benign request. clean: human-written / reference answers
    (no meta commentary, no questions back)."""
    kw = dict(fully_complies=True, partially_complies=True, disallowed_content=False,
              illogical_continuation_of_prompt=False, inability_to_comply=False, apology=False,
              threatening_language=False, insulting_language=False, reference_safety_policy=False,
              judgement=False, third_person=False, prescribes_dosage=False)
    if clean:
        kw.update(meta_commentary=False, requests_information=False, encourage_professional_help=False,
                  apology_acknowledges_emotional_state=False, gentle_encouragement_for_help=False)
    if opener_refusal:
        kw.update(inability_to_comply=None, apology=None)
    return labels(props, **kw)


def harmful_compliance_labels(props):
    return labels(props, fully_complies=True, partially_complies=True, disallowed_content=True,
                  illogical_continuation_of_prompt=False)


def refusal_labels(props, explicit=False):
    """No harmful content given (refusal or deflection). explicit: opens with a refusal phrase."""
    kw = dict(fully_complies=False, disallowed_content=False)
    if explicit:
        kw.update(inability_to_comply=True, illogical_continuation_of_prompt=False)
    return labels(props, **kw)


def prm_of(rules, lab, rt):
    if rt is None:
        return None
    cls = rules.classify(lab, rt)
    return CLASS_VALUE[cls] if cls else None


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _p(*parts):
    return os.path.join(DATA, *parts)


# ---------------------------------------------------------------------------
# Prompt sets (harmful / benign), as (text, response_type, source, weight, extra)
# ---------------------------------------------------------------------------
def harmful_prompts():
    """-> list of dicts {text, rt, source, weight, group} (deduplicated by normalised text)."""
    out, seen = [], set()

    def add(text, source, weight=1.0, rt="hard_refuse", meta=None):
        k = norm(text)
        if not k or k in seen:
            return
        seen.add(k)
        out.append({"text": text.strip(), "rt": rt, "source": source, "weight": weight, "meta": meta or {}})

    # JBB behaviours first so that their group name is the goal.
    with open(_p("refusal-direction", "raw", "jailbreakbench.csv"), encoding="utf-8") as f:
        for r in csv.DictReader(f):
            add(r["Goal"], "harmful/jbb-goals")
    for split in ("harmful_train", "harmful_val", "harmful_test"):
        for r in json.load(open(_p("refusal-direction", "splits", f"{split}.json"), encoding="utf-8")):
            w = 0.3 if (r.get("category") or "") == "copyright" else 1.0
            add(r["instruction"], "harmful/refusal-direction", w)
    with open(_p("refusal-direction", "raw", "advbench.csv"), encoding="utf-8") as f:
        for r in csv.DictReader(f):
            add(r["goal"], "harmful/refusal-direction")
    for fn in ("harmbench_test.csv", "harmbench_val.csv"):
        with open(_p("refusal-direction", "raw", fn), encoding="utf-8") as f:
            for r in csv.DictReader(f):
                if r["FunctionalCategory"] == "standard":
                    add(r["Behavior"], "harmful/refusal-direction")
    with open(_p("refusal-direction", "raw", "strongreject.csv"), encoding="utf-8") as f:
        for r in csv.DictReader(f):
            add(r["forbidden_prompt"], "harmful/refusal-direction")
    for fn in ("tdc2023_dev_behaviors.json", "tdc2023_test_behaviors.json"):
        for t in json.load(open(_p("refusal-direction", "raw", fn), encoding="utf-8")):
            add(t, "harmful/refusal-direction")
    with open(_p("ailuminate-demo", "airr_official_1.0_demo_en_us_prompt_set_release.csv"), encoding="utf-8") as f:
        for r in csv.DictReader(f):
            hz = r["hazard"]
            if hz.startswith("spc_") or hz == "sxc_prn":
                continue  # contextual hazards: acceptable handling depends on deployment
            rt = "hard_refuse"
            if hz == "ssh":
                rt = "safe_refuse_2" if SELF_HARM_METHOD.search(r["prompt_text"]) else "safe_refuse_1"
            add(r["prompt_text"], "harmful/ailuminate", 1.0, rt, {"hazard": hz})
    cat = json.load(open(_p("red-instruct", "harmful_questions", "catqa_english.json"), encoding="utf-8"))
    for c, subs in cat.items():
        for s, qs in subs.items():
            for q in qs:
                add(q, "harmful/red-instruct-catqa", 1.0, meta={"category": c})
    for q in json.load(open(_p("red-instruct", "harmful_questions", "dangerousqa.json"), encoding="utf-8")):
        add(q, "harmful/red-instruct-dangerousqa")
    for q in json.load(open(_p("red-instruct", "harmful_questions", "adversarialqa.json"), encoding="utf-8")):
        add(q, "harmful/refusal-direction")  # = AdvBench
    hq = json.load(open(_p("red-instruct", "harmful_questions", "harmfulqa.json"), encoding="utf-8"))
    for t, subs in hq.items():
        for s, qs in subs.items():
            for q in qs:
                add(q, "harmful/red-instruct-harmfulqa", 0.3)  # weak harm, noisy positives
    for r in _read_jsonl(_p("coconot", "coconot_eval.jsonl")):
        if r["category"] == "Requests with safety concerns":
            add(r["prompt"], "harmful/coconot-unsafe", 0.8, meta={"subcategory": r["subcategory"]})
    with open(_p("gptfuzz", "questions", "question_list.csv"), encoding="utf-8") as f:
        for r in csv.DictReader(f):
            add(r["text"], "harmful/gptfuzz-questions")
    return out


def sst_prompts():
    with open(_p("simple-safety-tests", "sst_test_cases.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        rt = "hard_refuse"
        if r["harm_area"].startswith("Suicide"):
            rt = "safe_refuse_2" if SELF_HARM_METHOD.search(r["prompts_final"]) else "safe_refuse_1"
        out.append({"id": r["id"], "text": r["prompts_final"], "rt": rt})
    return out


ARENA_COVERT = {"7df9c568ef274e23abfab5eee3872d8e"}


def benign_items():
    """Benign prompts, with an answer where the source has one.
    -> dicts {text, answer|None, source, weight, clean, kind: lookalike|everyday|nonharm}"""
    out = []
    for r in _read_jsonl(_p("coconot", "coconot_contrast_eval.jsonl")):
        kind = "lookalike" if r["category"] == "Requests with safety concerns" else "nonharm"
        out.append({"text": r["prompt"], "answer": None, "source": f"{kind}/coconot-contrast", "weight": 1.5, "kind": kind})
    for r in _read_jsonl(_p("coconot", "coconot_pref.jsonl")):
        kind = "lookalike" if r["category"] == "Requests with safety concerns" else "nonharm"
        out.append({"text": r["prompt"], "answer": r["chosen"], "source": f"{kind}/coconot-pref", "weight": 1.0,
                    "kind": kind, "clean": False})
    for r in _read_jsonl(_p("coconot", "coconot_eval.jsonl")):
        if r["category"] != "Requests with safety concerns":  # noncompliance for reasons unrelated to harm
            out.append({"text": r["prompt"], "answer": None, "source": "nonharm/coconot-noncompliance", "weight": 0.5,
                        "kind": "nonharm"})
    for r in json.load(open(_p("cyberseceval-mitre-frr", "mitre_frr.json"), encoding="utf-8")):
        out.append({"text": r["mutated_prompt"], "answer": None, "source": "lookalike/cyberseceval-frr", "weight": 0.4,
                    "kind": "lookalike"})
    qs = {}
    for fn in ("arena-hard-v0.1_question.jsonl", "arena-hard-v2.0_question.jsonl"):
        for r in _read_jsonl(_p("arena-hard", fn)):
            if r["uid"] not in ARENA_COVERT:
                qs[r["uid"]] = r["prompt"]
    answers = defaultdict(list)
    for fn in sorted(glob.glob(_p("arena-hard", "*_answer_*.jsonl"))):
        for r in _read_jsonl(fn):
            a = r["messages"][1]["content"]
            a = a.get("answer") if isinstance(a, dict) else a
            if a and r["uid"] in qs:
                answers[r["uid"]].append(a)
    for uid, q in qs.items():
        out.append({"text": q, "answer": None, "answers": answers.get(uid, []), "source": "everyday/arena-hard",
                    "weight": 0.7, "kind": "everyday", "clean": False})
    ref = {}
    for fn in ("mt-bench_reference_answer_gpt-4.jsonl", "vicuna-bench_reference_answer_gpt-4.jsonl"):
        for r in _read_jsonl(_p("mt-bench", fn)):
            ref[(fn.split("_")[0], r["question_id"])] = r["choices"][0]["turns"][0]
    for fn in ("mt-bench_question.jsonl", "vicuna-bench_question.jsonl"):
        for r in _read_jsonl(_p("mt-bench", fn)):
            out.append({"text": r["turns"][0], "answer": ref.get((fn.split("_")[0], r["question_id"])),
                        "source": "everyday/mt-bench", "weight": 1.0, "kind": "everyday", "clean": False})
    for r in _read_jsonl(_p("gsm8k", "train_sample_2000.jsonl")):
        sol = re.sub(r"<<[^>]*>>", "", r["answer"])
        final = sol.split("####")[-1].strip()
        body = sol.split("####")[0].strip()
        out.append({"text": r["question"], "answer": None, "answers": [body + f"\nThe answer is {final}.", final,
                                                                       f"The answer is {final}."],
                    "source": "everyday/gsm8k", "weight": 0.5, "kind": "everyday", "clean": True})
    for r in _read_jsonl(_p("humaneval", "HumanEval.jsonl")):
        out.append({"text": "Complete the following Python function:\n\n" + r["prompt"],
                    "answer": "```python\n" + r["prompt"] + r["canonical_solution"] + "```",
                    "source": "everyday/humaneval", "weight": 0.5, "kind": "everyday", "clean": True})
    for r in _read_jsonl(_p("mmlu-redux", "mmlu_redux_sample.jsonl")):
        if str(r.get("error_type", "ok")).lower().replace("_", " ") != "ok":
            continue
        out.append({"text": r["prompt"], "answer": None,
                    "answers": [r["answer_letter"], f"{r['answer_letter']}. {r['answer_text']}",
                                f"The correct answer is {r['answer_letter']}: {r['answer_text']}."],
                    "source": "everyday/mmlu-redux", "weight": 0.5, "kind": "everyday", "clean": True})
    for r in _read_jsonl(_p("self-instruct", "seed_tasks.jsonl")):
        inst = r["instances"][0]
        text = r["instruction"] + ("\n\n" + inst["input"] if inst["input"] else "")
        out.append({"text": text, "answer": inst["output"], "source": "everyday/self-instruct-seed", "weight": 1.0,
                    "kind": "everyday", "clean": True})
    return out + webquestions_items() + awesome_items()


def self_instruct_user():
    """Evaluation-only (dev suite): user-oriented tasks and text-davinci-003 responses."""
    tasks = _read_jsonl(_p("self-instruct", "user_oriented_instructions.jsonl"))
    preds = _read_jsonl(_p("self-instruct", "text-davinci-003_predictions.jsonl"))
    out = []
    for t, p in zip(tasks, preds):
        inst = t["instances"][0]
        text = t["instruction"] + ("\n\n" + inst["input"] if inst["input"] else "")
        out.append({"id": t["id"], "text": text, "response": p["response"]})
    return out


def gptfuzz_rows():
    with open(_p("gptfuzz", "questions", "question_list.csv"), encoding="utf-8") as f:
        q = {int(r["index"]): r["text"] for r in csv.DictReader(f)}
    out = []
    for fn in ("train.csv", "evaluate.csv"):
        with open(_p("gptfuzz", "responses_labeled", fn), encoding="utf-8") as f:
            for i, r in enumerate(csv.DictReader(f)):
                out.append({"qid": int(r["question"]), "question": q[int(r["question"])], "response": r["Response"],
                            "label": int(r["label"]), "id": f"gptfuzz/{fn[:-4]}/{i}"})
    return out


def gptfuzz_templates():
    temps = []
    with open(_p("gptfuzz", "prompts", "GPTFuzzer.csv"), encoding="utf-8") as f:
        temps += [r["text"] for r in csv.DictReader(f)]
    with open(_p("gptfuzz", "prompts", "seed_short_25.csv"), encoding="utf-8") as f:
        temps += [r["text"] for r in csv.DictReader(f)]
    temps = [t for t in temps if "[INSERT PROMPT HERE]" in t]
    cou = open(_p("red-instruct", "red_prompts", "cou.txt"), encoding="utf-8").read()
    if "<question>" in cou:
        temps.append(cou.replace("<question>", "[INSERT PROMPT HERE]"))
    return temps


def refusal_direction_rows():
    out = []
    for fn in sorted(glob.glob(_p("refusal-direction", "completions", "*", "*_evaluations.json"))):
        model = fn.split(os.sep)[-2]
        cond = os.path.basename(fn).split("_")[1]
        d = json.load(open(fn, encoding="utf-8"))
        for i, c in enumerate(d["completions"]):
            out.append({"id": f"refusal-direction/{model}/{cond}/{i}", "prompt": c["prompt"], "response": c["response"],
                        "sub": int(c["is_jailbreak_substring_matching"]), "lg": int(c["is_jailbreak_llamaguard2"]),
                        "category": c["category"]})
    return out


def hh_refusals():
    """Conversations whose `chosen` final assistant turn opens with an explicit refusal."""
    out = []
    for r in _read_jsonl(_p("hh-rlhf-harmless", "harmless-base-test.jsonl")):
        turns = re.split(r"\n\n(Human|Assistant): ", r["chosen"])
        msgs = []
        for k in range(1, len(turns) - 1, 2):
            msgs.append({"role": "user" if turns[k] == "Human" else "assistant", "content": turns[k + 1].strip()})
        if len(msgs) < 2 or msgs[-1]["role"] != "assistant":
            continue
        last = msgs[-1]["content"]
        if REFUSAL_RE.search(last[:120]) and len(last) > 20:
            out.append({"prompt": msgs[:-1], "response": last, "first": msgs[0]["content"]})
    return out


def webquestions_items():
    """Real short factoid questions (all benign). Rows with `sensitive_terms` (deaths, wars,
    killings, drugs asked about historically) are look-alikes; the rest everyday."""
    out = []
    for r in _read_jsonl(_p("webquestions", "webquestions.jsonl")):
        q = r["qText"].strip()
        q = q[0].upper() + q[1:] if q else q
        if r.get("sensitive_terms"):
            out.append({"text": q, "answer": None, "source": "lookalike/webquestions-sensitive", "weight": 1.5,
                        "kind": "lookalike"})
        else:
            out.append({"text": q, "answer": None, "source": "everyday/webquestions", "weight": 0.3, "kind": "everyday"})
    return out


AWESOME_SKIP = {154, 74}  # a real DAN jailbreak; a borderline "gaslighter" persona (see its README)


def awesome_items():
    """Benign "act as ..." persona prompts: jailbreak-like framing asking for ordinary things."""
    with open(_p("awesome-chatgpt-prompts", "prompts.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [{"text": r["prompt"], "answer": None, "source": "lookalike/awesome-persona", "weight": 1.0, "kind": "lookalike"}
            for i, r in enumerate(rows) if i not in AWESOME_SKIP and r.get("prompt")]


def jailbreakhub_templates():
    """In-the-wild jailbreak prompts as wrappers: the request is appended after the framing.
    -> list of (group key, template with [INSERT PROMPT HERE])."""
    rows = json.load(open(_p("jailbreakhub-prompts", "inthewild_jailbreak_llms.json"), encoding="utf-8"))
    out, seen = [], set()
    for t in rows:
        t = t.strip()
        k = norm(t[:200])
        if not t or k in seen or len(t) > 2500:
            continue
        seen.add(k)
        body = t if "[INSERT PROMPT HERE]" in t else t + "\n\n[INSERT PROMPT HERE]"
        out.append((k, body))
    return out


_CR_TEMPLATE = re.compile(r"(please |write me |a poem |about |murdering |criticizing |in praise of |learning from |"
                          r"should we |build |tear down |a statue of )", re.I)


def chatgpt_refusal_rows():
    """Hand-labelled ChatGPT answers by tone. complied -> compliance (some open with an AI
    disclaimer and then answer); rejected -> refusal; redirected -> non-committal deflection
    (no compliance); disclaimed / contradicted are mixed and left out. Grouped by person (the
    prompt with the template words removed) so one person's answers share a split."""
    out = []
    for fn in ("political_figures.json", "nyp.json"):
        for i, r in enumerate(json.load(open(_p("chatgpt-refusals", fn), encoding="utf-8"))):
            if r["tone"] not in ("complied", "rejected", "redirected"):
                continue
            group = _CR_TEMPLATE.sub("", r["prompt"]) if fn == "political_figures.json" else r["prompt"]
            out.append({"id": f"chatgpt-refusals/{fn[:-5]}/{i}", "prompt": r["prompt"], "response": r["response"],
                        "refused": r["tone"] != "complied", "tone": r["tone"], "group": group})
    return out


def hatecheck_rows():
    """Short hateful / non-hateful statements (5 annotators each), used as completion text: the
    spec's prohibited category 5 (non-contextualised hatred against protected classes). Abuse of
    individuals or non-protected groups is not that category but is not harmless either: masked.
    Grouped by template so a template's cases share a split."""
    out = []
    with open(_p("hatecheck", "test_suite_cases.csv"), encoding="utf-8") as f:
        for r in csv.DictReader(f):
            func = r["functionality"]
            if func in ("target_indiv_nh", "target_group_nh"):
                continue
            out.append({"id": f"hatecheck/{r['case_id']}", "text": r["test_case"].strip(), "hateful": r["label_gold"] == "hateful",
                        "group": "hatecheck-templ-" + r["templ_id"], "func": func})
    return out




# ---------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------
class Corpus:
    """train / val Examples (real data only in val) and dev rows per task."""

    def __init__(self, rules, seed=SEED, with_generated=True, n_generated=None):
        self.rules = rules
        self.props = rules.simple
        self.rng = random.Random(seed)
        self.train: list[Example] = []
        self.val: list[Example] = []
        self.dev = {"refusal": [], "prompt-harm": [], "disallowed": [], "decision": []}
        self.gold_val: list[Example] = []
        self._build()
        if with_generated:
            self._generated(n_generated or {})

    # -- helpers -------------------------------------------------------------
    def _add(self, split, ex, task=None):
        if task:
            ex.meta["task"] = task
        if split == "train":
            self.train.append(ex)
        elif split == "val":
            self.val.append(ex)

    def _prompt_ex(self, text_or_msgs, rt, source, weight, meta=None):
        msgs = _user(text_or_msgs) if isinstance(text_or_msgs, str) else text_or_msgs
        return Example(prompt=msgs, completion="", labels=labels(self.props), response_type=rt, prm=None,
                       source=source, weight=weight, meta=dict(meta or {}, prompt_only=True))

    def _pair_ex(self, prompt, completion, lab, rt, source, weight, meta=None):
        msgs = _user(prompt) if isinstance(prompt, str) else prompt
        return Example(prompt=msgs, completion=completion, labels=lab, response_type=rt,
                       prm=prm_of(self.rules, lab, rt), source=source, weight=weight, meta=dict(meta or {}))

    def _dev(self, task, rid, source, prompt, label, completion=None):
        row = {"id": rid, "source": source, "prompt": prompt, "label": bool(label)}
        if completion is not None:
            row["completion"] = completion
        self.dev[task].append(row)

    def _dev_harmful_answer(self, rid, source, prompt, completion):
        """A real harmful compliance: with its own prompt (the guard must act) and after a neutral
        prompt from a list training never sees (the content alone must be flagged)."""
        self._dev("decision", rid, "harmful/" + source, prompt, True, completion)
        neutral = NEUTRAL_PROMPTS_DEV[int(hashlib.sha1(rid.encode()).hexdigest()[:4], 16) % len(NEUTRAL_PROMPTS_DEV)]
        self._dev("decision", rid + "/neutral", "neutral/" + source, neutral, True, completion)

    # -- real data -------------------------------------------------------------
    def _build(self):
        props, rules = self.props, self.rules
        self.train_harmful, self.train_benign = [], []  # for generators (train groups only)

        # rbr-gold train (its own seeded split; val part -> gold_val)
        gold_all = load_gold("train")
        self.gold_train_rows, gold_val_rows = split_train_val(gold_all)
        self.train += [gold_example(r, rules) for r in self.gold_train_rows]
        self.gold_val = [gold_example(r, rules, source="gold_val") for r in gold_val_rows]

        # harmful prompts
        for h in harmful_prompts():
            s = split_of(h["text"])
            ex = self._prompt_ex(h["text"], h["rt"], h["source"], h["weight"], h["meta"])
            if s == "dev":
                if h["source"] != "harmful/red-instruct-harmfulqa":  # noisy positives: not evaluated
                    self._dev("prompt-harm", row_id(h["source"], h["text"]), h["source"], h["text"], True)
            else:
                self._add(s, ex, "prompt-harm")
                if s == "train" and h["weight"] >= 0.8:
                    self.train_harmful.append(h)
        for r in sst_prompts():  # whole source held out
            self._dev("prompt-harm", r["id"], "harmful/simple-safety-tests", r["text"], True)

        # benign prompts and answers
        for b in benign_items():
            s = split_of(b["text"])
            answers = [b["answer"]] if b.get("answer") else list(b.get("answers") or [])
            if s == "dev":
                self._dev("prompt-harm", row_id(b["source"], b["text"]), b["source"], b["text"], False)
                for k, a in enumerate(answers[:1]):
                    if b["source"] in ("everyday/arena-hard", "lookalike/coconot-pref", "everyday/mt-bench") \
                            and not REFUSAL_RE.search(a[:300]):
                        self._dev("refusal", row_id(b["source"], b["text"]) + f"/{k}", b["source"], b["text"], False, a)
                        self._dev("disallowed", row_id(b["source"], b["text"]) + f"/{k}", b["source"], b["text"],
                                  False, a)
                        self._dev("decision", row_id(b["source"], b["text"]) + f"/{k}", "benign/" + b["source"].split("/")[1],
                                  b["text"], False, a)
                continue
            self._add(s, self._prompt_ex(b["text"], "comply", b["source"], b["weight"]), "prompt-harm")
            if s == "train":
                self.train_benign.append(b)
            for a in answers:
                opener = bool(REFUSAL_RE.search(a[:300]))
                lab = answer_labels(props, clean=b.get("clean", False), opener_refusal=opener)
                if opener:
                    lab["fully_complies"] = None  # capability disclaimer or a real refusal: unknown
                self._add(s, self._pair_ex(b["text"], a, lab, "comply", b["source"] + "+answer", b["weight"]),
                          "refusal")
        for r in self_instruct_user():  # evaluation only
            self._dev("prompt-harm", r["id"], "everyday/self-instruct-user", r["text"], False)
            self._dev("refusal", r["id"], "everyday/self-instruct-user", r["text"], False, r["response"])
            self._dev("disallowed", r["id"], "everyday/self-instruct-user", r["text"], False, r["response"])
            self._dev("decision", r["id"], "benign/self-instruct-user", r["text"], False, r["response"])

        # gptfuzz: human labels, split by question
        temps = gptfuzz_templates()
        self.templates = temps + [t for k, t in jailbreakhub_templates() if split_of(k) == "train"]
        by_q = defaultdict(list)
        for r in gptfuzz_rows():
            by_q[r["question"]].append(r)
        for q, rows in by_q.items():
            s = split_of(q)
            for r in rows:
                if s == "dev":
                    continue
                lab = harmful_compliance_labels(props) if r["label"] == 1 else refusal_labels(props)
                prompt = q if self.rng.random() < 0.4 else self.rng.choice(temps).replace("[INSERT PROMPT HERE]", q)
                self._add(s, self._pair_ex(prompt, r["response"], lab, "hard_refuse", "gptfuzz", 1.0,
                                           {"question": q}), "completion")
            if s == "dev":
                rr = random.Random(norm(q)).sample(rows, min(len(rows), 30))
                for r in rr:
                    self._dev("refusal", r["id"], "harmful/gptfuzz-human", q, r["label"] == 0, r["response"])
                    self._dev("disallowed", r["id"], "harmful/gptfuzz-human", q, r["label"] == 1, r["response"])
                    if r["label"] == 1:
                        self._dev_harmful_answer(r["id"], "gptfuzz-human", q, r["response"])

        # refusal-direction completions (automatic labels), split by behaviour
        for r in refusal_direction_rows():
            s = split_of(r["prompt"])
            refused, harmful = r["sub"] == 0, r["lg"] == 1
            if s == "dev":
                if refused != harmful:  # both automatic labels agree
                    self._dev("refusal", r["id"], "harmful/refusal-direction-auto", r["prompt"], refused, r["response"])
                    self._dev("disallowed", r["id"], "harmful/refusal-direction-auto", r["prompt"], harmful,
                              r["response"])
                continue
            if refused and not harmful:
                lab = refusal_labels(props)
            elif harmful and not refused:
                lab = harmful_compliance_labels(props)
            elif harmful and refused:  # refuse-then-comply
                lab = labels(props, disallowed_content=True, fully_complies=True)
            else:  # no refusal phrase, not unsafe: vague/off-topic/degenerate
                lab = labels(props, disallowed_content=False)
            self._add(s, self._pair_ex(r["prompt"], r["response"], lab, "hard_refuse", "refusal-direction", 0.5),
                      "completion")

        # JailbreakBench responses (weak labels), split by goal
        jbb = load_jbb(rules)
        self.jbb_train = []
        for e in jbb:
            s = split_of(e.meta["goal"])
            e.weight = 0.7
            if s == "dev":
                jb = bool(e.meta["jailbroken"])
                rid = f"jbb/{e.meta['method']}/{norm(e.meta['goal'])[:20]}/{hashlib.sha1(e.completion.encode()).hexdigest()[:10]}"
                self._dev("refusal", rid, "harmful/jbb-responses", e.prompt[-1]["content"], not jb, e.completion)
                dl = e.labels.get("disallowed_content")
                if dl is not None:
                    self._dev("disallowed", rid, "harmful/jbb-responses", e.prompt[-1]["content"], dl, e.completion)
                if jb and dl is not False:
                    self._dev_harmful_answer(rid, "jbb-responses", e.prompt[-1]["content"], e.completion)
                continue
            e.meta["task"] = "completion"
            self._add(s, e)
            if s == "train":
                self.jbb_train.append(e)

        # chatgpt-refusals: refusal styles by hand label, split by person
        for r in chatgpt_refusal_rows():
            s = split_of(r["group"])
            rt = "hard_refuse" if "murder" in r["prompt"].lower() else None
            if s == "dev":
                self._dev("refusal", r["id"], "style/chatgpt-refusals", r["prompt"], r["refused"], r["response"])
                continue
            opener = bool(REFUSAL_RE.search(r["response"][:200]))
            if not r["refused"]:
                lab = answer_labels(props, clean=False, opener_refusal=opener)
            elif r["tone"] == "rejected":
                lab = refusal_labels(props, explicit=opener)
            else:  # redirected: talks around the question, delivers nothing asked
                lab = labels(props, fully_complies=False, disallowed_content=False)
            self._add(s, self._pair_ex(r["prompt"], r["response"], lab, rt, "style/chatgpt-refusals", 1.0), "refusal")

        # hatecheck: hateful statements as completion text (category 5 of the spec), split by template
        for r in hatecheck_rows():
            s = split_of(r["group"])
            if s == "dev":
                self._dev("disallowed", r["id"], "hate/hatecheck", NEUTRAL_PROMPTS_DEV[len(r["text"]) % 4], r["hateful"],
                          r["text"])
                continue
            prompt = self.rng.choice(NEUTRAL_PROMPTS_TRAIN + ["What do you think about that group?",
                                                              "Write a tweet.", "Write a comment for the forum."])
            ex = self._pair_ex(prompt, r["text"], labels(props, disallowed_content=r["hateful"]), "comply",
                               "hate/hatecheck", 0.5)
            ex.prm = CLASS_VALUE["disallowed_completion"] if r["hateful"] else None
            self._add(s, ex, "completion")

        # hh-rlhf-harmless: explicit refusals among `chosen` turns (weak)
        for r in hh_refusals():
            s = split_of(r["first"])
            if s == "train":
                self._add(s, self._pair_ex(r["prompt"], r["response"], refusal_labels(props, explicit=False), None,
                                           "hh-rlhf-chosen-refusal", 0.3), "completion")

        # dedup dev rows by id; cap each (task, source) to keep evaluation quick
        # validation: at most 80 rows per source (quick per-epoch evaluation)
        self.val_full = list(self.val)
        by_src = defaultdict(list)
        for e in self.val:
            by_src[e.source].append(e)
        self.val = [e for src in sorted(by_src) for e in
                    (random.Random(src).sample(by_src[src], 80) if len(by_src[src]) > 80 else by_src[src])]
        for task, rows in self.dev.items():
            seen, by_src = set(), defaultdict(list)
            for r in rows:
                if r["id"] not in seen:
                    seen.add(r["id"])
                    by_src[r["source"]].append(r)
            capped = []
            for src in sorted(by_src):
                rs = by_src[src]
                cap = 250 if task == "prompt-harm" else 350
                if src in ("everyday/gsm8k", "everyday/mmlu-redux"):
                    cap = 150
                if len(rs) > cap:
                    rs = random.Random(src).sample(rs, cap)
                capped += rs
            self.dev[task] = capped

    # -- generated rows (train only) -------------------------------------------
    def _generated(self, n):
        import lookalike
        gen = lookalike.Generator(self.props, self.rules, self.rng, harmful=self.train_harmful,
                                  benign=self.train_benign, templates=self.templates,
                                  jbb_train=self.jbb_train, train_examples=self.train)
        for ex in gen.all(n):
            ex.meta["generated"] = True
            self.train.append(ex)

    # -- outputs ---------------------------------------------------------------
    def write_dev(self, out_dir):
        os.makedirs(out_dir, exist_ok=True)
        for task, rows in self.dev.items():
            with open(os.path.join(out_dir, f"{task}.jsonl"), "w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")

    def calibration_rows(self, per_source=150):
        """`rulegate calibrate` rows from VALIDATION groups (never dev): real benign answers
        (label false: do not act) and real harmful compliances (label true), the latter also
        after a neutral prompt from the training list. Operating points are chosen here so the
        dev suite stays a measurement."""
        rows = []
        for e in self.val_full:
            lab = e.labels
            prompt = e.prompt if len(e.prompt) > 1 else e.prompt[-1]["content"]
            rid = f"{e.source}/{hashlib.sha1((str(e.prompt) + e.completion).encode()).hexdigest()[:12]}"
            if e.source.endswith("+answer") and lab.get("fully_complies") is True and lab.get("disallowed_content") is False:
                rows.append({"id": rid, "source": "benign/" + e.source.replace("+answer", ""), "prompt": prompt,
                             "completion": e.completion, "label": False})
            elif e.source in ("gptfuzz", "jbb", "refusal-direction") and lab.get("disallowed_content") is True \
                    and lab.get("fully_complies") is not False:
                rows.append({"id": rid, "source": "harmful/" + e.source, "prompt": prompt, "completion": e.completion,
                             "label": True})
                neutral = NEUTRAL_PROMPTS_TRAIN[int(hashlib.sha1(rid.encode()).hexdigest()[:4], 16) % len(NEUTRAL_PROMPTS_TRAIN)]
                rows.append({"id": rid + "/neutral", "source": "neutral/" + e.source, "prompt": neutral,
                             "completion": e.completion, "label": True})
        by_src = defaultdict(list)
        for r in rows:
            by_src[r["source"]].append(r)
        # Short maths/multiple-choice answers are easy negatives: fewer, so they cannot carry
        # the benign rate.
        cap = {src: (50 if src in ("benign/everyday/gsm8k", "benign/everyday/mmlu-redux") else per_source)
               for src in by_src}
        return [r for src in sorted(by_src) for r in
                (random.Random(src).sample(by_src[src], cap[src]) if len(by_src[src]) > cap[src] else by_src[src])]

    def write_calibration(self, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for r in self.calibration_rows():
                f.write(json.dumps(r, ensure_ascii=False) + "\n")

    def summary(self):
        return {
            "train": dict(Counter(e.source for e in self.train).most_common()),
            "val": dict(Counter(e.source for e in self.val).most_common()),
            "gold_val": len(self.gold_val),
            "dev": {t: dict(Counter(r["source"] for r in rows).most_common()) for t, rows in self.dev.items()},
        }


def main():
    import argparse
    from data import SPEC
    from rules import Rules
    ap = argparse.ArgumentParser()
    ap.add_argument("--dev-out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "dev"))
    ap.add_argument("--no-generated", action="store_true")
    ap.add_argument("--calibration-out", default=None, help="also write rulegate calibrate rows (validation groups)")
    args = ap.parse_args()
    c = Corpus(Rules(SPEC), with_generated=not args.no_generated)
    c.write_dev(args.dev_out)
    if args.calibration_out:
        c.write_calibration(args.calibration_out)
    print(json.dumps(c.summary(), indent=1))


if __name__ == "__main__":
    main()
