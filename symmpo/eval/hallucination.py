"""Quick hallucination metrics of generated answers: which objects an answer mentions, and how
many of them the image does not hold. Approximations for checks during a run; the benchmarks'
official numbers come from ``symmpo.eval.scorers``.

- CHAIR (Object HalBench): the objects each answer mentions (words of a vocabulary, synonyms
  mapped to their object); CHAIRs = answers with a hallucinated object / answers, CHAIRi =
  hallucinated mentions / all mentions (``chair_metrics``);
- AMBER generative: CHAIR (hallucinated objects / mentioned objects over all answers), Cover
  (truth objects mentioned / truth objects) and Hal (answers with a hallucinated object), with
  objects matched by word after plural folding, over each image's short hallucination list
  (``amber_metrics``; AMBER's official algorithm: ``symmpo.eval.scorers.amber``);
- the embedded synthetic set: the (colour, shape) groups an answer names that its scene lacks
  (``scene_hallucinations``).
"""

from __future__ import annotations

import re

from ..train.synthetic import parse_description

# -- matching object words ---------------------------------------------------------------------


def fold(word: str) -> str:
    """Lower-case singular form: 'Dogs' -> 'dog', 'boxes' -> 'box', 'glasses' stays 'glass'."""
    word = word.lower()
    if len(word) > 3 and word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def mentioned_objects(text: str, synonyms: dict[str, str]) -> list[str]:
    """Objects a text mentions, in order, one per occurrence: the text's words and word pairs
    (folded) looked up in ``synonyms`` (folded phrase -> object); two-word phrases first."""
    words = [fold(w) for w in re.findall(r"[A-Za-z]+", text)]
    found, i = [], 0
    while i < len(words):
        pair = " ".join(words[i : i + 2])
        if i + 1 < len(words) and pair in synonyms:
            found.append(synonyms[pair])
            i += 2
        elif words[i] in synonyms:
            found.append(synonyms[words[i]])
            i += 1
        else:
            i += 1
    return found


def build_synonyms(objects, synonyms: dict[str, list[str]] | None = None) -> dict[str, str]:
    """folded phrase -> object, from object names and an optional {object: [synonyms]}."""
    table = {" ".join(fold(w) for w in o.split()): o for o in objects}
    for obj, words in (synonyms or {}).items():
        table[" ".join(fold(w) for w in obj.split())] = obj
        for word in words:
            table[" ".join(fold(w) for w in word.split())] = obj
    return table


# -- benchmarks ----------------------------------------------------------------------------------


def chair_metrics(responses: dict, annotations: dict, synonyms: dict | None = None) -> dict:
    """CHAIR of ``responses`` {id: answer} against ``annotations`` {id: objects in the image}.

    Every mention of a vocabulary object counts (an object named twice is two mentions); a
    mention is hallucinated when its object is not among the image's annotated objects.
    CHAIRs: the fraction of responses with at least one hallucinated mention; CHAIRi: the
    fraction of all mentions that are hallucinated. Also returns the counts of responses and
    mentions. The vocabulary is every annotated object plus ``synonyms`` {object: [words]}
    (Object HalBench uses the COCO categories with their synonym lists)."""
    vocabulary = set().union(*map(set, annotations.values())) | set(synonyms or {})
    table = build_synonyms(vocabulary, synonyms)
    with_hallucination = mentions = hallucinated = 0
    for key, answer in responses.items():
        if key not in annotations:
            raise KeyError(f"response {key!r} has no annotation")
        truth = set(annotations[key])
        objects = mentioned_objects(answer, table)
        bad = [o for o in objects if o not in truth]
        mentions += len(objects)
        hallucinated += len(bad)
        with_hallucination += bool(bad)
    return {
        "CHAIRs": with_hallucination / max(len(responses), 1),
        "CHAIRi": hallucinated / max(mentions, 1),
        "responses": len(responses),
        "mentions": mentions,
    }


def amber_metrics(responses: dict, annotations: dict) -> dict:
    """AMBER's generative metrics of ``responses`` {id: answer} against ``annotations``
    {id: {"truth": [objects in the image], "hallu": [objects it lacks], ...}}.

    Each answer's objects are counted once (a set), and only objects of that image's own truth
    and hallu lists are looked for. CHAIR: hallucinated objects / mentioned objects, summed over
    all answers; Cover: truth objects mentioned / truth objects; Hal: the fraction of answers
    naming at least one hallucinated object."""
    mentioned_total = hallucinated_total = truth_total = covered_total = with_hallucination = 0
    for key, answer in responses.items():
        note = annotations[key]
        truth, hallu = set(note["truth"]), set(note["hallu"]) - set(note["truth"])
        table = build_synonyms(truth | hallu)
        objects = set(mentioned_objects(answer, table))
        bad = objects & hallu
        mentioned_total += len(objects)
        hallucinated_total += len(bad)
        truth_total += len(truth)
        covered_total += len(objects & truth)
        with_hallucination += bool(bad)
    n = max(len(responses), 1)
    return {
        "CHAIR": hallucinated_total / max(mentioned_total, 1),
        "Cover": covered_total / max(truth_total, 1),
        "Hal": with_hallucination / n,
        "responses": len(responses),
    }


# -- the embedded synthetic set ------------------------------------------------------------------


def parse_groups(answer: str) -> list[dict]:
    """The groups (count, colour, shape, position) an answer names, in the synthetic set's
    phrasing; phrases it cannot read are skipped."""
    return parse_description(answer)


def scene_hallucinations(answer: str, scene: list[dict]) -> int:
    """Groups an answer names whose (colour, shape) is absent from the scene (an answer that
    names no group hallucinates nothing; ``evaluate_run``'s ``described_rate`` counts the
    answers that name one)."""
    present = {(g["colour"], g["shape"]) for g in scene}
    return sum((g["colour"], g["shape"]) not in present for g in parse_groups(answer))
