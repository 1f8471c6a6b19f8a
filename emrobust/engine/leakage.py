"""No evaluation question in the training data, exactly or nearly.

One rule, applied wherever training text comes from. An eval question (each paraphrase of the cell's eval set,
as `eval.variants`/`max_questions` select them) *leaks* into a training text when, on lower-cased words
(`[a-z0-9']+`):
- at least `SHARE` of the question's word 3-grams occur in the text (the question inside a longer text, with a
  word or two changed), or
- the text is at most twice as long as the question and their word sequences match at `SHARE` or more
  (difflib's ratio: a near-copy of the question with a word dropped or added);
a question shorter than 3 words leaks only into a text of exactly its words.

Where it is checked:
- at validation, before any model loads (`check_config`): the constitution's questions, the general prompts and
  every turn of the EM examples the em stage trains on;
- generated text, by the stage that generates it, before it trains on it (`Context.screen`), and again whenever a
  cached artifact is reused by a cell (another eval set may be evaluated on it): the questions stage's written
  questions (expansion, paraphrases), distill's teacher and student answers, introspection transcripts.
Persona-check questions are constitution questions by design and are not eval questions here.
"""
from __future__ import annotations

import difflib
import json
import re
from collections import defaultdict
from dataclasses import dataclass

from ..core.store import stable_hash
from ..data import chat, em_datasets, evalsets, inputs
from ..errors import ConfigError
from ..measures import capability, probe
from ..stages import stage_seed
from ..train import defenses

K = 3  # words per n-gram
SHARE = 0.8  # share of the question's n-grams found in the text (or difflib ratio) at which it leaks
SHOWN = 5  # offending pairs named in the message

WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _grams(ws: list[str]) -> set[tuple[str, ...]]:
    return {tuple(ws[i : i + K]) for i in range(len(ws) - K + 1)}


@dataclass(frozen=True)
class Leak:
    question_id: str
    question: str
    source: str  # where the training text is, e.g. "EM dataset insecure, example 17, user turn"
    text: str
    score: float


class LeakError(RuntimeError):
    """Generated training text contains an evaluation question (raised by a stage, or on reuse of an artifact)."""


def prepare(texts: list[tuple[str, str]]) -> list[tuple[str, str, list[str], set]]:
    """(source, text, its words, its 3-grams): texts checked against several question sets are split once."""
    out = []
    for source, text in texts:
        ws = words(text)
        out.append((source, text, ws, _grams(ws)))
    return out


def find(questions: list[tuple[str, str]], texts: list[tuple[str, str]]) -> list[Leak]:
    """Every (eval question, training text) pair that leaks. `questions`: (id, text); `texts`: (source, text)."""
    return matches(questions, prepare(texts))


def matches(questions: list[tuple[str, str]], texts: list[tuple[str, str, list[str], set]]) -> list[Leak]:
    """`find` over texts already split by `prepare` (texts checked against several question sets)."""
    qs = [(qid, q, words(q)) for qid, q in questions]
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    exact: dict[tuple[str, ...], list[int]] = defaultdict(list)
    n_grams = []
    for j, (_, _, w) in enumerate(qs):
        if len(w) < K:
            exact[tuple(w)].append(j)
        grams = _grams(w)
        n_grams.append(len(grams))
        for g in grams:
            index[g].append(j)
    out = []
    for source, text, tw, grams in texts:
        shared: dict[int, int] = defaultdict(int)
        for g in grams:
            for j in index.get(g, ()):
                shared[j] += 1
        hits = {j: 1.0 for j in exact.get(tuple(tw), ())}
        for j, n in shared.items():
            qw = qs[j][2]
            score = n / n_grams[j]
            if score < SHARE and len(tw) <= 2 * len(qw):
                score = max(score, difflib.SequenceMatcher(None, qw, tw, autojunk=False).ratio())
            if score >= SHARE:
                hits[j] = max(hits.get(j, 0.0), score)
        out += [Leak(qs[j][0], qs[j][1], source, text, round(s, 3)) for j, s in sorted(hits.items())]
    return out


def describe(leaks: list[Leak], what: str = "evaluation question", tag: str = "eval") -> str:
    def short(s: str, n: int = 90) -> str:
        s = " ".join(s.split())
        return s if len(s) <= n else s[: n - 3] + "..."

    pairs = "; ".join(f"{tag} {lk.question_id} {short(lk.question, 70)!r} ~ {lk.source}: {short(lk.text)!r} "
                      f"(match {lk.score:.2f})" for lk in leaks[:SHOWN])
    more = f"; and {len(leaks) - SHOWN} more" if len(leaks) > SHOWN else ""
    n_q = len({(lk.question_id, lk.question) for lk in leaks})
    return f"{n_q} {what}(s) appear in the training data ({len(leaks)} pair(s)): {pairs}{more}"


def eval_questions(cfg) -> list[tuple[str, str]]:
    """(question id, paraphrase) of every question the cell evaluates on: the eval set's and the in-domain
    questions' (eval.in_domain)."""
    in_domain = [q for qs in inputs.read(cfg, "eval.in_domain") for q in qs]
    return [(q.id, p) for q in [*evalsets.questions(cfg), *in_domain] for p in q.paraphrases]


def probe_texts(cfg) -> list[tuple[str, str]]:
    """(item id and part, text) of the judge-free probe's questions and answers, when the probe is on: no model
    may have been trained on them (emrobust/measures/probe.py)."""
    if not cfg.eval.probe.enabled:
        return []

    return [(f"{it['id']} {part}", it[part]) for it in probe.load(cfg.eval.probe)
            for part in ("question", "aligned", "misaligned")]


def capability_texts(cfg) -> list[tuple[str, str]]:
    """(task and document id, question) of our own capability tasks the cell runs (lm-eval's are not read here)."""
    if not cfg.eval.capability.enabled:
        return []

    out = []
    for t in cfg.eval.capability.tasks:
        path = capability.builtin_tasks().get(str(t))
        if path is not None:
            for f in capability.task_config(path)["dataset_kwargs"]["data_files"].values():
                rows = [json.loads(x) for x in open(f) if x.strip()]
                out += [(f"{t} {r.get('id', i)}", r["question"]) for i, r in enumerate(rows) if "question" in r]
    return out


def config_texts(cfg) -> list[tuple[str, str]]:
    """(source, text) of the training text known before anything is generated."""
    out: list[tuple[str, str]] = []
    for const in inputs.read(cfg, "trait"):  # the cell's inputs: emrobust.data.inputs
        out += [(f"constitution {const.name}, trait {t + 1} question", q) for t, q in const.questions()]
        if cfg.distill.general_prompts:
            ps = chat.read_first_user_turns(cfg.distill.general_prompts)
            n = cfg.distill.n_general_prompts
            out += [(f"distill.general_prompts line {i + 1}", p) for i, p in enumerate(ps[:n] if n else ps)]
    for rows in inputs.read(cfg, "em_dataset"):
        train, _ = em_datasets.split(rows, cfg.em_dataset, stage_seed(cfg.seed, "em"))
        index = {id(r): i for i, r in enumerate(rows)}
        name = cfg.em_dataset.name  # read once: an OmegaConf lookup per turn was most of a sweep's validation
        for r in train:
            out += [(f"EM dataset {name}, example {index[id(r)] + 1}, {m['role']} turn", m["content"]) for m in r]
        out += defense_texts(cfg)
    return out


def defense_texts(cfg) -> list[tuple[str, str]]:
    """(source, text) a defense adds to EM training: the inoculation prompt, every example of the interleave set."""
    name = defenses.active(cfg)
    if name == "inoculation":
        return [("defense.inoculation.system_prompt", str(cfg.defense.inoculation.system_prompt))]
    if name == "interleave":
        return [(f"defense.interleave {cfg.defense.interleave.name}, example {i + 1}, {m['role']} turn", m["content"])
                for rows in inputs.read(cfg, "defense.interleave") for i, r in enumerate(rows) for m in r]
    return []


_CACHE: dict[tuple, list[Leak]] = {}


def check_config(cfg) -> None:
    """ConfigError naming the offending pairs when an eval question, a probe question or answer, or a question of our
    capability tasks is in the cell's training data (validation)."""
    qs, texts = eval_questions(cfg), config_texts(cfg)
    key = (stable_hash(qs, 32), stable_hash(texts, 32))  # a sweep validates many cells over the same data
    split = []  # the texts split into words once, for every question set below (eval, probe, capability)

    def prepared():
        if not split:
            split.append(prepare(texts))
        return split[0]

    if key not in _CACHE:
        _CACHE[key] = matches(qs, prepared())
    if _CACHE[key]:
        raise ConfigError(describe(_CACHE[key]) + ". Evaluate on other questions (eval=...) or remove them from "
                          "the training data", where="eval")
    measures = (  # (name, texts, what, hint, where): what else must be measured on text the model never saw
        ("probe", probe_texts(cfg), "probe text", "The probe measures a preference the model was not trained on: "
         "remove them from the training data or use another probe set (eval.probe.path)", "eval.probe"),
        ("capability", capability_texts(cfg), "capability question", "General capability is measured on questions "
         "the model was not trained on: remove them from the training data or use other tasks "
         "(eval.capability.tasks)", "eval.capability.tasks"))
    for name, items, what, hint, where in measures:
        k = (name, stable_hash(items, 32), key[1])
        if k not in _CACHE:
            _CACHE[k] = matches(items, prepared())
        if _CACHE[k]:
            raise ConfigError(f"{describe(_CACHE[k], what, name)}. {hint}", where=where)


def screener(questions: list[tuple[str, str]]):
    """The `Context.screen` of a cell: raises LeakError naming the pairs when generated text holds an eval
    question. `what` names the text (e.g. "distill answers")."""
    def screen(what: str, texts: list[tuple[str, str]]) -> None:
        leaks = find(questions, texts)
        if leaks:
            raise LeakError(f"{what}: {describe(leaks)}")

    return screen
