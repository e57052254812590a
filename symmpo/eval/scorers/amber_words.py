"""The word handling of the AMBER scorer (``amber``): how the generative task reads an answer
into the lemmas of its nouns and decides whether two words are near synonyms.

``language_tools`` gives nltk's tokenizer, tagger and WordNet lemmatiser and spaCy's
``en_core_web_lg`` similarity where they load, and in place of each one missing (of both when
asked to approximate) an approximation:

- tagging: a rule (``approximate_nouns``): a word is a noun unless it is "hot", the modal "can",
  or a verb by its neighbours (after a subject pronoun, "to", a modal or "do"/"not"; an -ing word
  after a form of "be"; a word right before "a"/"the"/a possessive/an object pronoun with no
  determiner before it, as in "watches the birds");
- lemmas (``approximate_lemma``): WordNet's noun rules (the same suffix substitutions and the
  same shortest-lemma choice) with AMBER's vocabulary standing in for WordNet's word list, plus a
  table of the forms where that differs from WordNet 3.0 (irregular plurals such as "children",
  "mice", "leaves" -> "leaf", "men" kept as "men");
- similarity: a word is similar only to itself, so nothing is covered or marked by a near
  synonym.

The approximation can change all four generative metrics (a tagging or lemma difference adds or
drops a mention); the similarity part only ever raises CHAIR and Hal and lowers Cover and Cog.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from . import WORDNET_NOUN_SUFFIXES

#: spaCy similarity a noun must exceed to count as a near synonym (the official default).
SIMILARITY_THRESHOLD = 0.8

# -- the approximate language tools ---------------------------------------------------------

_TOKEN = re.compile(
    r"[A-Za-z]+(?=n't\b)|n't|[A-Za-z0-9]+(?:[-/][A-Za-z0-9]+)*|'[A-Za-z]+|[^\sA-Za-z0-9]"
)
_DETERMINERS = frozenset(
    "a an the this that these those each every another some any no many several few both all "
    "his her its their our my your one two three four five six seven eight nine ten".split()
)
_SUBJECTS = frozenset("i you he she it we they who".split())
_MODALS = frozenset("can could will would shall should may might must".split())
_VERB_BEFORE = _SUBJECTS | _MODALS | frozenset("to do does did not n't 'll".split())
_BE = frozenset("am is are was were be been being 're 'm".split())
_OBJECT_START = frozenset("a an the his her its their our my your him them me us it".split())
_NEVER_NOUN = frozenset({"hot"})

#: Forms whose WordNet 3.0 noun lemma (as nltk's WordNetLemmatizer gives it) differs from what
#: the suffix rules over AMBER's vocabulary give: irregular plurals, and plurals of AMBER
#: words whose WordNet lemma is another word (found by comparing the two over the singular and
#: plural forms of AMBER's vocabulary and WordNet's noun exception list). A form mapped to
#: itself is left as it is.
_IRREGULAR = {
    "children": "child",
    "mice": "mouse",
    "geese": "goose",
    "leaves": "leaf",
    "knives": "knife",
    "shelves": "shelf",
    "bookshelves": "bookshelf",
    "scarves": "scarf",
    "wolves": "wolf",
    "feet": "foot",
    "oxen": "ox",
    "lice": "louse",
    "women": "woman",
    "men": "men",
    "teeth": "teeth",
    "people": "people",
    "tomatoes": "tomato",
    "potatoes": "potato",
    "vases": "vas",
    "sunglasses": "sunglass",
    "slippers": "slipper",
    "chopsticks": "chopstick",
    "earrings": "earring",
}

#: AMBER vocabulary words that WordNet does not list as nouns: their plurals do not lemmatise to
#: them (the word itself still matches, as WordNet leaves an unknown word as it is).
_NOT_WORDNET_NOUNS = frozenset(
    "air-conditioning baconic bedsheet cann cathole chopsticks closestool cooktop doghole e-book "
    "earing earrings ebook electrombile hot kiwifruit paraglider pissoir rpoe sanitizer scoon "
    "seegull showerpuff slippers streetlamp waterfont".split()
)


def approximate_lemma(word: str, vocabulary) -> str:
    """``word``'s noun lemma as WordNet would give it, with ``vocabulary`` standing in for
    WordNet's word list (and ``_IRREGULAR`` for where the two differ): the word and its suffix
    substitutions that are known words, the shortest one (the first among equals), the
    substitutions applied again while none is known; the word itself when none ever is.
    Case-sensitive: WordNet's words are lower-case, so "Dogs" stays "Dogs"."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]

    def known(form):
        return form in vocabulary and form.islower() and form not in _NOT_WORDNET_NOUNS

    def substitute(forms):
        return [
            f[: len(f) - len(old)] + new
            for f in forms
            for old, new in WORDNET_NOUN_SUFFIXES
            if f.endswith(old)
        ]

    forms = substitute([word])
    hits = [f for f in [word, *forms] if known(f)]
    while not hits and forms:
        forms = substitute(forms)
        hits = [f for f in forms if known(f)]
    return min(hits, key=len) if hits else word


def approximate_nouns(text: str) -> list[str]:
    """The tokens of ``text`` a part-of-speech tagger would call nouns, by rule. Tokens: words
    (letters and digits with inner hyphens or slashes kept, as nltk keeps them), punctuation,
    and "'s", "n't" and the like split off as nltk splits them. Every word is a noun except
    "hot" (an adjective), "can" unless a determiner precedes it (the modal), and a word its
    neighbours show to be a verb: one after a subject pronoun, "to", a modal, "do"/"does"/"did"
    or "not"; an -ing word after a form of "be"; a word right before "a", "an", "the", a
    possessive or an object pronoun ("watches the birds", "sailing a boat") unless a determiner
    or number precedes it."""
    tokens = _TOKEN.findall(text)
    lowered = [t.lower() for t in tokens]
    nouns = []
    for i, (token, low) in enumerate(zip(tokens, lowered, strict=True)):
        if not token[0].isalpha() or "'" in token or low in _NEVER_NOUN:
            continue
        before = lowered[i - 1] if i else ""
        after = lowered[i + 1] if i + 1 < len(tokens) else ""
        if low == "can" and before not in _DETERMINERS:
            continue
        if before in _VERB_BEFORE or (low.endswith("ing") and before in _BE):
            continue
        if after in _OBJECT_START and before not in _DETERMINERS:
            continue
        nouns.append(token)
    return nouns


# -- the language tools ----------------------------------------------------------------------


@dataclass
class LanguageTools:
    """How the generative task reads an answer: ``nouns(text, vocabulary)`` -> the lemmas of
    its nouns, in order; ``similar(a, b)`` -> whether two words are near synonyms;
    ``approximations``: what stands in for a missing nltk or spaCy (empty when exact)."""

    nouns: Callable[[str, frozenset], list[str]]
    similar: Callable[[str, str], bool]
    approximations: tuple[str, ...]


def _nltk_nouns():
    try:
        import nltk
        from nltk.stem import WordNetLemmatizer

        lemmatizer = WordNetLemmatizer()
        nltk.pos_tag(nltk.word_tokenize("A dog sits."))
        lemmatizer.lemmatize("dogs")
    except Exception:  # not installed, or its data missing (LookupError)
        return None

    def nouns(text, vocabulary):
        tagged = nltk.pos_tag(nltk.word_tokenize(text))
        return [lemmatizer.lemmatize(word) for word, tag in tagged if tag.startswith("NN")]

    return nouns


def _spacy_similar():
    try:
        import spacy

        nlp = spacy.load("en_core_web_lg")
    except Exception:  # not installed, or the model missing (OSError)
        return None
    doc = functools.cache(nlp)

    def similar(a, b):
        return doc(a).similarity(doc(b)) > SIMILARITY_THRESHOLD

    return similar


@functools.cache
def language_tools(approximate: bool | None = None) -> LanguageTools:
    """The tools ``score`` reads answers with: nltk's and spaCy's where they load, unless
    ``approximate``; the approximation in place of each one missing (of both when
    ``approximate``)."""
    nouns = None if approximate else _nltk_nouns()
    similar = None if approximate else _spacy_similar()
    notes = []
    if nouns is None:
        notes.append(
            "nltk tagger/WordNet -> rule-based noun filter and suffix-rule lemmas "
            "(with an irregular-plural table)"
        )

        def nouns(text, vocabulary):
            return [approximate_lemma(word, vocabulary) for word in approximate_nouns(text)]

    if similar is None:
        notes.append("spaCy similarity -> identical words only")

        def similar(a, b):
            return a == b

    return LanguageTools(nouns, similar, tuple(notes))
