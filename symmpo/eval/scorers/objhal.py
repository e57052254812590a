"""Object HalBench (CHAIR on 300 COCO images), scored as the released SymMPO evaluation scores it.

The benchmark folder holds the released files:

- ``obj_halbench_300_with_image.jsonl``: the questions, one JSON object a line with
  ``image_id`` (COCO), ``question`` and ``image`` (the JPEG, base64);
- ``synonyms_refine.txt``: the COCO categories, one a line: the category, then its synonyms,
  separated by ``", "``;
- ``annotations/``: COCO 2014's ``instances_{train,val}2014.json`` and
  ``captions_{train,val}2014.json`` (the folder itself may also hold them).

The answers file is the JSONL the released generation script writes: ``question_id`` (the
question's line), ``image_id``, ``prompt`` (the question), ``text`` (the answer), ``model_id``.

How an answer is scored (the released ``eval_gpt_obj_halbench.py`` and its summary):

- Ground truth of an image: the categories of its COCO instance annotations, plus the categories
  the rule-based matcher below finds in its five COCO captions.
- Rule-based matcher (``mentions``): the answer lower-cased, cut into words as
  ``nltk.word_tokenize`` cuts them (Punkt sentences, then the Treebank rules: so a hyphenated
  word stays one word), each word reduced by WordNet's noun lemmatizer (the shortest WordNet noun
  among the word, its exception-list forms or its suffix-rule forms; the word itself when none is
  a noun: "dogs" -> dog, "children" -> child, "mice" -> mouse, but "men", "teeth" and "vases"
  (-> "vas") stay what they are and name nothing). Then two-word phrases, left to right: every
  synonym of two words, "home plate" and "train track" stand for themselves, "baby X" / "adult X"
  for the animal X, "passenger jet/train" for jet/train, "bow tie" for tie, "toilet seat" for
  toilet. When "toilet" and "seat" are both left, every "seat" is dropped. Each remaining word
  that is a synonym is one mention of its category, repeats included ("train tracks" names no
  train: "train track" is no synonym).
- GPT route (with a judge): each answer of more than three words goes to the judge with the
  released extraction prompt as a system message; the reply is a JSON list of object names (or a
  text whose last line is one). Each name is read as spaCy reads "a <name>": if its lemmas hold
  one of the two-word phrases above, those phrases are its objects, else each run of nouns
  (lemmas joined) is one. An answer's objects are kept once each; those that are synonyms (after
  the toilet/seat rule) are its mentions. Shorter answers have none.
- ``objhal_resp`` (Response hallucination, ``CHAIRs_refine``): answers with a mention whose
  category is not in the image's ground truth / answers with at least one mention, in percent.
  ``objhal_ment`` (Object hallucination, ``CHAIRi``): such mentions / all mentions, in percent.

Where this differs from the released code:

- The released code needs nltk (Punkt, WordNet) and spaCy (``en_core_web_trf``), none of which
  is installed here; the word handling, and how it approximates them, is in
  ``symmpo.eval.scorers.objhal_words``.
- An answers file whose path contains "coh" is not rewritten (the released loader strips
  "coh" prompt scaffolding then); no answer with a mention raises ``ValueError`` (the released
  summary divides by zero).
"""

from __future__ import annotations

import base64
import json
import pathlib

from . import Question, read_jsonl
from .objhal_words import Matcher, Vocabulary

QUESTION_FILE = "obj_halbench_300_with_image.jsonl"
SYNONYMS_FILE = "synonyms_refine.txt"
ANNOTATIONS_DIR = "annotations"

#: The released extraction prompt (``{question}`` and ``{answer}`` are filled in, in that order).
PROMPT_TEMPLATE = (
    "You are an expert in image objects extraction according to a question answer pair. "
    "We asked an examiner to answer a question about a picture.\n"
    "\n"
    "[Start of Question]\n"
    "\n"
    "<image> {question}\n"
    "\n"
    "[End of Question]\n"
    "\n"
    "[Start of Examiner's Answer]\n"
    "\n"
    "{answer}\n"
    "\n"
    "[End of Examiner's Answer]\n"
    "\n"
    "\n"
    "Assume that the answer is correct, please identify all visible objects that are directly "
    "shown in the image. Please following the instructions in below:\n"
    "\n"
    "1. You should only mention objects that are explicitly mentioned in the examiner's answer.\n"
    "2. You should only extract the object names without the attributes of the objects.\n"
    "3. You should not include the properties of the object, like the color, material, etc. as "
    "part of the object name in your result.\n"
    '4. Make your answer precise. Present the results in a JSON list format: ["object_1", ..., '
    '"object_n"].\n'
    "5. You should return an empty JSON list () if no visible objects can be found.\n"
)

#: How often the released script asks again when a reply is no JSON list.
ASK_LIMIT = 10

# -- questions and answers -----------------------------------------------------------------------


def load_questions(benchmark_dir) -> list[Question]:
    """The 300 questions; a question's id is its line (the released answers' ``question_id``)
    and its image the decoded JPEG bytes (or a path, for a line with ``image_path``)."""
    questions = []
    for index, row in enumerate(read_jsonl(pathlib.Path(benchmark_dir) / QUESTION_FILE)):
        if "image" in row:
            image = base64.b64decode(row["image"])
        elif "image_path" in row:
            image = row["image_path"]
        else:
            raise ValueError(f"{QUESTION_FILE} line {index + 1} has no image")
        image_id = row["image_id"] if "image_id" in row else row["image_url"]
        questions.append(Question(index, image, row["question"], {"image_id": image_id}))
    return questions


def answer_row(question: Question, answer: str) -> dict:
    """One line of the answers file, as the released generation script writes it."""
    return {
        "question_id": question.id,
        "image_id": question.fields["image_id"],
        "prompt": question.prompt,
        "text": answer,
        "model_id": "symmpo",
    }


def write_answers(rows, path) -> None:
    """The answers file: JSONL (the released scorer wants a ``.jsonl`` name)."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_answers(answers, benchmark_dir=None) -> list[dict]:
    """``[{"image_id", "question", "caption"}]`` from an answers file (or its rows), as the
    released loader reads it: ``prompt`` else ``question``; ``text`` else ``answer``, with
    "Assistant:" removed and stripped; a row without ``image_id`` takes that of the question on
    the same line of the question file."""
    if isinstance(answers, (str, pathlib.PurePath)):
        answers = read_jsonl(pathlib.Path(answers))
    rows, questions = list(answers), None
    caps = []
    for index, row in enumerate(rows):
        if "image_id" in row:
            image_id = int(row["image_id"])
        else:
            if questions is None:
                if benchmark_dir is None:
                    raise ValueError("answers without image_id need the question file")
                questions = read_jsonl(pathlib.Path(benchmark_dir) / QUESTION_FILE)
            image_id = int(questions[index]["image_id"])
        question = row["prompt"] if "prompt" in row else row.get("question")
        if question is None:
            raise ValueError(f"answer {index} has neither 'prompt' nor 'question'")
        text = row["text"] if "text" in row else row.get("answer")
        if text is None:
            raise ValueError(f"answer {index} has neither 'text' nor 'answer'")
        caption = text.replace("Assistant:", "").strip()
        caps.append({"image_id": image_id, "question": question, "caption": caption})
    return caps


# -- ground truth --------------------------------------------------------------------------------


def ground_truth(image_ids, benchmark_dir, matcher: Matcher) -> dict[int, set[str]]:
    """{image id: categories}: its COCO instances', plus those the matcher finds in its COCO
    captions (train and val 2014, as the released script reads both)."""
    folder = pathlib.Path(benchmark_dir) / ANNOTATIONS_DIR
    if not folder.is_dir():
        folder = pathlib.Path(benchmark_dir)
    truth: dict[int, set[str]] = {int(i): set() for i in image_ids}
    for split in ("val", "train"):
        instances = _load_annotations(folder, "instances", split)
        names = {c["id"]: c["name"] for c in instances["categories"]}
        for note in instances["annotations"]:
            if note["image_id"] in truth:
                truth[note["image_id"]].add(matcher.vocabulary.category[names[note["category_id"]]])
    for split in ("val", "train"):
        for note in _load_annotations(folder, "captions", split)["annotations"]:
            if note["image_id"] in truth:
                truth[note["image_id"]].update(c for _, c in matcher.mentions(note["caption"]))
    return truth


def _load_annotations(folder: pathlib.Path, kind: str, split: str) -> dict:
    path = folder / f"{kind}_{split}2014.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: Object HalBench needs COCO 2014 {kind} (train and val)"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# -- GPT route -----------------------------------------------------------------------------------


def judge_messages(question: str, answer: str) -> list[dict]:
    """The released extraction request for one answer."""
    prompt = PROMPT_TEMPLATE.replace("{question}", question).replace("{answer}", answer)
    return [{"role": "system", "content": prompt}]


def parse_object_list(reply: str):
    """The reply's JSON, or else its last line's when the reply has '["' in it."""
    try:
        return json.loads(reply)
    except json.JSONDecodeError:
        if '["' not in reply:
            raise ValueError("reply is no JSON") from None
        try:
            return json.loads(reply.strip().split("\n")[-1])
        except json.JSONDecodeError:
            raise ValueError("reply is no JSON") from None


def extract_objects(caps: list[dict], judge) -> list[list]:
    """Each answer's extracted object names: none for an answer of three words or fewer, else
    the judge's JSON reply (asked again, up to ``ASK_LIMIT`` times in all, while a reply is no
    JSON; an offline judge's replies are read once)."""
    names: list = [[] for _ in caps]
    pending = {i: judge_messages(c["question"], c["caption"]) for i, c in enumerate(caps)}
    pending = {i: m for i, m in pending.items() if len(caps[i]["caption"].strip().split()) > 3}
    rounds = ASK_LIMIT if getattr(judge, "url", None) else 1
    for _ in range(rounds):
        if not pending:
            break
        replies = judge.ask(pending)
        failed = {}
        for key, messages in pending.items():
            try:
                names[key] = parse_object_list(replies[key])
            except ValueError:
                failed[key] = messages
        pending = failed
    if pending:
        key = next(iter(pending))
        raise ValueError(
            f"the judge's reply to answer {key} is no JSON object list: {replies[key]!r}"
        )
    for key, value in enumerate(names):
        if not isinstance(value, (list, str, dict)):
            raise ValueError(f"the judge's reply to answer {key} is no object list: {value!r}")
    return names


# -- scoring -------------------------------------------------------------------------------------


def chair(mentions: list[list[tuple[str, str]]], truths: list[set[str]]) -> dict[str, float]:
    """Resp. and Ment. in percent from each answer's mentions and its image's ground truth."""
    answers_with_objects = hallucinating = mentioned = hallucinated = 0
    for found, truth in zip(mentions, truths, strict=True):
        bad = sum(category not in truth for _, category in found)
        mentioned += len(found)
        hallucinated += bad
        hallucinating += bad > 0
        answers_with_objects += len(found) > 0
    if not answers_with_objects:
        raise ValueError("no answer names a COCO object: Object HalBench's rates are undefined")
    return {
        "objhal_resp": 100.0 * hallucinating / answers_with_objects,
        "objhal_ment": 100.0 * hallucinated / mentioned,
    }


def score(answers, benchmark_dir, judge=None) -> dict[str, float]:
    """Object HalBench's Resp. and Ment. (percent) of ``answers`` (the answers file's path, or
    its rows): rule-based, or, with a ``judge`` (``symmpo.eval.judge.Judge``), by the GPT
    extraction route; request ids are the answers' positions in the file."""
    caps = read_answers(answers, benchmark_dir)
    matcher = Matcher(Vocabulary.load(pathlib.Path(benchmark_dir) / SYNONYMS_FILE))
    truth = ground_truth({c["image_id"] for c in caps}, benchmark_dir, matcher)
    if judge is None:
        mentions = [matcher.mentions(c["caption"]) for c in caps]
    else:
        mentions = [matcher.extracted_mentions(names) for names in extract_objects(caps, judge)]
    return chair(mentions, [truth[c["image_id"]] for c in caps])
