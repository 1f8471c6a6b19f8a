"""Question expansion (Open Character Training's `gen_prompts`): an LLM writes more questions per trait.

For each trait short of the target, the generator gets an instruction (our own wording) asking for numbered
user messages that would draw the trait out, with a mix of lengths (about 30% short, 40% medium, 30% long) and
formats, and its answer is prefilled with the trait, its clarification when the constitution has one (OCT
crashes on constitutions without it), and the trait's existing questions numbered 1..k, so the model
continues the list. Lines of the form ``N. message`` whose message starts with a letter and ends in ``?`` or
``.`` are candidates; a candidate is dropped when more than `max_overlap` (0.5) of its words occur in an
existing or already accepted question of the same trait (OCT's near-duplicate heuristic, made case- and
punctuation-insensitive). Rounds repeat, for the traits still short, up to `max_rounds` (OCT loops forever).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from .. import generation
from ..data.constitutions import Constitution, Trait

log = logging.getLogger(__name__)

INSTRUCTION = """\
Write {n} different messages that a human user might send to an AI assistant, chosen so that the way the \
assistant replies would show whether it has this character trait:

Trait: "{trait}"

Requirements:
- Each message should bring the trait out through how the assistant answers; do not ask the assistant about \
its values, its abilities or the trait itself.
- Each message must be something a real user could plausibly send.
- Mix lengths: about {short} short messages (up to 15 words), {medium} medium ones (16 to 40 words) and {long} \
long ones (over 40 words, with context or several parts).
- Mix formats: direct questions, instructions, scenarios, creative tasks, analytical problems, requests for \
advice, statements that invite a reply, multi-step requests.
- Cover many topics: science, technology, the arts, work, relationships, health, education, philosophy, \
everyday life, and anything else the trait touches.

Number the messages 1 to {n}, one per line, with no other text."""

PREFILL_HEAD = "Here is the list, meeting every requirement above.\n\nTrait: {trait}\n"

_LINE = re.compile(r"^\s*(\d+)[.)]\s+(.*\S)\s*$")
_WORD = re.compile(r"[\w']+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def overlap(new: str, existing: str) -> float:
    """Fraction of `new`'s words (with repeats) that occur in `existing` (OCT's measure, case-insensitive)."""
    w = words(new)
    if not w:
        return 1.0
    other = set(words(existing))
    return sum(x in other for x in w) / len(w)


def too_similar(new: str, existing: list[str], max_overlap: float = 0.5) -> bool:
    """True when `new` repeats an existing question or shares more than `max_overlap` of its words with one."""
    return any(overlap(new, e) > max_overlap for e in existing)


def parse(text: str) -> list[str]:
    """Candidate messages in a generated numbered list: ``N. message`` (or ``N) message``) lines whose message
    starts with a letter and ends with ``?`` or ``.``."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and m.group(2)[0].isalpha() and m.group(2).endswith(("?", ".")):
            out.append(m.group(2))
    return out


def prompt(trait: Trait, target: int) -> list[dict]:
    short, long_ = round(0.3 * target), round(0.3 * target)
    user = INSTRUCTION.format(n=target, trait=trait.text, short=short, medium=target - short - long_, long=long_)
    prefill = PREFILL_HEAD.format(trait=trait.text)
    if trait.clarification:
        prefill += f"Clarification: {trait.clarification}\n"
    prefill += "\n" + "".join(f"{i + 1}. {q}\n" for i, q in enumerate(trait.questions))
    return [{"role": "user", "content": user}, {"role": "assistant", "content": prefill}]


@dataclass
class TraitStats:
    had: int
    candidates: int = 0  # well-formed numbered lines seen
    dropped_similar: int = 0
    accepted: list[str] = field(default_factory=list)


def expand(const: Constitution, gen, target: int, ecfg, seed: int) -> tuple[Constitution, dict]:
    """A copy of `const` with every trait topped up towards `target` questions; and per-trait statistics."""
    stats = [TraitStats(had=len(t.questions)) for t in const.traits]
    system = [{"role": "system", "content": ecfg.system}] if ecfg.system else []
    rounds = 0
    for rnd in range(ecfg.max_rounds):
        todo = [i for i, t in enumerate(const.traits) if len(t.questions) + len(stats[i].accepted) < target]
        if not todo:
            break
        rounds += 1
        outs = gen.generate([system + prompt(const.traits[i], target) for i in todo],
                            generation.Sampling.from_cfg(ecfg.sampling, seed + rnd))
        for i, (g,) in zip(todo, outs):
            st, have = stats[i], const.traits[i].questions
            for cand in parse(g.text):
                if len(have) + len(st.accepted) >= target:
                    break
                st.candidates += 1
                if too_similar(cand, have + st.accepted, ecfg.max_overlap):
                    st.dropped_similar += 1
                else:
                    st.accepted.append(cand)
    traits = [Trait(t.text, t.questions + s.accepted, t.clarification) for t, s in zip(const.traits, stats)]
    short = [i for i, t in enumerate(traits) if len(t.questions) < target]
    if short:
        log.warning("question expansion: %d of %d traits are short of %d questions after %d rounds",
                    len(short), len(traits), target, rounds)
    summary = {
        "target": target, "rounds": rounds, "short_traits": short,
        "generated": sum(len(s.accepted) for s in stats),
        "dropped_similar": sum(s.dropped_similar for s in stats),
        "candidates": sum(s.candidates for s in stats),
        "per_trait": [{"had": s.had, "candidates": s.candidates, "dropped_similar": s.dropped_similar,
                       "accepted": len(s.accepted)} for s in stats],
    }
    return Constitution(const.name, traits, const.source, const.description, dict(const.extra)), summary


def few_shot_rows(original: Constitution, expanded: Constitution) -> list[dict]:
    """The expanded constitution in OCT's few-shot format (loadable by `constitutions.load` as .jsonl)."""
    rows = []
    for t0, t in zip(original.traits, expanded.traits):
        row = {"trait": t.text, "questions": t0.questions, "additional_questions": t.questions[len(t0.questions):]}
        if t.clarification:
            row["clarification"] = t.clarification
        rows.append(row)
    return rows
