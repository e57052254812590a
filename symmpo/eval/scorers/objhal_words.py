"""Object HalBench's word handling: how the released scorer reads words out of a text.

- ``Vocabulary``: the released synonym file (``synonyms_refine.txt``) and the two-word phrases
  the matcher collapses ("home plate", "baby dog" -> dog, "toilet seat" -> toilet, ...);
- ``Lemmatizer``: WordNet's noun lemmatizer, with the WordNet 3.0 facts it needs;
- ``word_tokenize``: ``nltk.word_tokenize`` (Punkt sentences, then the Treebank rules);
- ``Matcher``: the rule-based matcher (a caption's mentions of COCO categories) and the GPT
  route's reading of extracted object names, with spaCy's tagger and lemmatizer approximated.

``symmpo.eval.scorers.objhal`` describes the rules; this is where they differ from the
released code, which needs nltk (Punkt, WordNet) and spaCy (``en_core_web_trf``), none of which
is installed here:

- WordNet: only the WordNet 3.0 facts the released synonym vocabulary needs are written here
  (``_NOT_NOUNS``, ``_OTHER_NOUNS``, ``_EXCEPTIONS``); a synonym file with other words gets them
  taken as WordNet nouns. The lemmatizer is nltk's before 3.9 (the released README downloads
  ``punkt``, not 3.9's ``punkt_tab``): when one step of suffix rules finds no noun it keeps
  applying them, which nltk 3.9 no longer does ("skises" -> ski here, unchanged there).
- Punkt: a period closing a word ends a sentence when white space, the text's end or one of
  ``?!)";}]*:@'({[`` follows (closing quotes and brackets before white space go with it); Punkt
  would keep a known abbreviation's period on it, which changes no COCO word.
- spaCy (GPT route only): its tagger and lemmatizer are approximated: an object name's last word
  is a noun, a word before it is a noun unless a closed-class word, a number or adjective-like
  (a list, and -ed/-ous/-ful/... endings); a plural's lemma is spaCy's rule (an exception form,
  else the first suffix rule giving a noun). Names like "red car", "tennis ball" (dropped: no
  synonym), "baby elephant" read as spaCy reads them; unusual phrasing may not.
"""

from __future__ import annotations

import re

from . import WORDNET_NOUN_SUFFIXES

# -- the synonym vocabulary ----------------------------------------------------------------------

_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra")
_ANIMALS += ("giraffe", "animal", "cub")


class Vocabulary:
    """The released synonym file and the two-word phrases the matcher looks for.

    ``objects``: every synonym (categories included); ``category``: synonym -> its line's first
    entry (a synonym on two lines keeps the later); ``pairs``: two-word phrase -> the word it
    stands for; ``words``: every single word of those, lower-cased (what WordNet facts cover)."""

    def __init__(self, lines):
        self.objects: set[str] = set()
        self.category: dict[str, str] = {}
        for line in lines:
            names = [name.strip() for name in line.strip().split(", ")]
            self.objects.update(names)
            for name in names:
                self.category[name] = names[0]
        multi = [name for name in self.category if len(name.strip().split(" ")) >= 2]
        self.pairs = {phrase: phrase for phrase in [*multi, "home plate", "train track"]}
        for animal in _ANIMALS:
            self.pairs[f"baby {animal}"] = animal
            self.pairs[f"adult {animal}"] = animal
        for vehicle in ("jet", "train"):
            self.pairs[f"passenger {vehicle}"] = vehicle
        self.pairs["bow tie"] = "tie"
        self.pairs["toilet seat"] = "toilet"
        self.pairs["wine glas"] = "wine glass"  # kept from the original CHAIR code; never fires
        self.words = {w for text in [*self.objects, *self.pairs] for w in text.lower().split()}

    @classmethod
    def load(cls, path) -> Vocabulary:
        with open(path, encoding="utf-8") as f:
            return cls(f.readlines())

    def collapse_pairs(self, words: list[str], keep_others: bool = True) -> list[str]:
        """Left to right, a word and the next that form a known phrase become what the phrase
        stands for; other words stay (``keep_others``) or are dropped."""
        out, i = [], 0
        while i < len(words):
            phrase = " ".join(words[i : i + 2])
            if phrase in self.pairs:
                out.append(self.pairs[phrase])
                i += 2
            else:
                if keep_others:
                    out.append(words[i])
                i += 1
        return out

    def mentions(self, words: list[str]) -> list[tuple[str, str]]:
        """(word, category) for each word that is a synonym, in order, repeats kept; "seat" is
        not one when "toilet" is there too."""
        if "toilet" in words and "seat" in words:
            words = [w for w in words if w != "seat"]
        return [(w, self.category[w]) for w in words if w in self.objects]


# -- WordNet's noun lemmatizer -------------------------------------------------------------------

# WordNet 3.0 facts for the released synonyms' words: those that are no noun in WordNet (their
# plurals are left alone: "bikers", "iphones"), other nouns that can win over a synonym as the
# shorter (or earlier) candidate ("men", "teeth", "vas" from "vases", "sport" from "sports"),
# and the exception list's irregular plurals that lead to or from such words.
_NOT_NOUNS = frozenset(
    "biker bluejay brindle children coworker firetruck glas hairdryer hot iphone knive lenovo "
    "longboard macbook netbook paddleboat pitbull potted riverboat sailboard shortboard skimboard "
    "skis smartphone solider sports stovetop teddybear televison".split()
)
_OTHER_NOUNS = frozenset(
    "airs bikers bowls brethren buss ca clocks copse cows glasses goo manse men peoples ramses "
    "seats sport stops taxis teeth va vas".split()
)
_EXCEPTIONS = {
    "brethren": ("brother",),
    "buffaloes": ("buffalo",),
    "busses": ("bus",),
    "calves": ("calf",),
    "children": ("child",),
    "feet": ("foot",),
    "flamingoes": ("flamingo",),
    "geese": ("goose",),
    "grandchildren": ("grandchild",),
    "knives": ("knife",),
    "men": ("man",),
    "mice": ("mouse",),
    "oxen": ("ox",),
    "pocketknives": ("pocketknife",),
    "taxies": ("taxi",),
    "teeth": ("tooth",),
    "thieves": ("thief",),
}


class Lemmatizer:
    """WordNet's noun lemmatizer (as nltk's ``WordNetLemmatizer().lemmatize(word)``), with
    WordNet's noun list known only as far as ``vocabulary`` needs it."""

    def __init__(self, vocabulary: Vocabulary):
        self.vocabulary_words = vocabulary.words
        self.cache: dict[str, str] = {}

    def is_noun(self, word: str) -> bool:
        if word in _OTHER_NOUNS:
            return True
        return word in self.vocabulary_words and word not in _NOT_NOUNS

    @staticmethod
    def reductions(forms: list[str]) -> list[str]:
        return [
            f[: len(f) - len(old)] + new
            for f in forms
            for old, new in WORDNET_NOUN_SUFFIXES
            if f.endswith(old)
        ]

    def nouns(self, forms: list[str]) -> list[str]:
        seen: list[str] = []
        for form in forms:
            if self.is_noun(form) and form not in seen:
                seen.append(form)
        return seen

    def candidates(self, word: str) -> list[str]:
        """The WordNet nouns the word may be a form of, in WordNet's order."""
        if word in _EXCEPTIONS:
            return self.nouns([word, *_EXCEPTIONS[word]])
        forms = self.reductions([word])
        found = self.nouns([word, *forms])
        while not found and forms:  # the older lemmatizer keeps reducing
            forms = self.reductions(forms)
            found = self.nouns(forms)
        return found

    def __call__(self, word: str) -> str:
        if word not in self.cache:
            found = self.candidates(word)
            self.cache[word] = min(found, key=len) if found else word
        return self.cache[word]

    def spacy_noun(self, word: str) -> str:
        """spaCy's lemma of a plural noun: an exception form, else the first suffix rule that
        gives a noun; a word with neither is taken as singular and kept."""
        forms = []
        for old, new in WORDNET_NOUN_SUFFIXES:
            if word.endswith(old):
                form = word[: len(word) - len(old)] + new
                if form and self.is_noun(form) and form not in forms:
                    forms.append(form)
        for form in _EXCEPTIONS.get(word, ()):
            if form not in forms:
                forms.insert(0, form)
        return forms[0] if forms else word


# -- nltk.word_tokenize --------------------------------------------------------------------------

# Punkt ends a sentence at a period closing a word when white space, the end or one of
# ?!)";}]*:@'({[ follows; closing quotes and brackets that white space follows go with it.
_SENTENCE_END = re.compile(r"(?<=[^\s.]\.)(?:[\"')\]}]+(?=\s|--|$)|(?=[\s?!)\";}\]*:@'({\[]|$))")

# The Treebank rules nltk's word tokenizer applies to one sentence, in order: (pattern, spaced).
_OPENING = [
    (r"([\u00ab\u201c\u2018\u201e]|`+)", r" \1 "),
    (r'^"', "``"),
    (r"(``)", r" \1 "),
    (r"([ (\[{<])(\"|'')", r"\1 `` "),
    (r"(?i)(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)", r"\1 "),
]
_PUNCTUATION = [
    (r"([^.])(\.)([\]\)}>\"'\u00bb\u201d\u2019 ]*)\s*$", r"\1 \2 \3 "),
    (r"([:,])([^\d])", r" \1 \2"),
    (r"([:,])$", r" \1 "),
    (r"\.{2,}", r" \g<0> "),
    (r"[;@#$%&]", r" \g<0> "),
    (r"[\u2012-\u2015]", r" \g<0> "),
    (r"([^.])(\.)([\]\)}>\"']*)\s*$", r"\1 \2\3 "),
    (r"[?!]", r" \g<0> "),
    (r"([^'])' ", r"\1 ' "),
    (r"[*]", r" \g<0> "),
    (r"[\]\[(){}<>]", r" \g<0> "),
    (r"--", r" -- "),
]
_CLOSING = [
    (r"([\u00bb\u201d\u2019])", r" \1 "),
    (r"''", " '' "),
    (r'"', " '' "),
    (r"\s+", " "),
    (r"([^' ])('[sS]|'[mM]|'[dD]|') ", r"\1 \2 "),
    (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", r"\1 \2 "),
]
_SPLIT_WORDS = [
    r"(?i)\b(can)(not)\b",
    r"(?i)\b(d)('ye)\b",
    r"(?i)\b(gim)(me)\b",
    r"(?i)\b(gon)(na)\b",
    r"(?i)\b(got)(ta)\b",
    r"(?i)\b(lem)(me)\b",
    r"(?i)\b(more)('n)\b",
    r"(?i)\b(wan)(na)(?=\s)",
    r"(?i) ('t)(is)\b",
    r"(?i) ('t)(was)\b",
]
_TREEBANK = [(re.compile(p), r) for p, r in _OPENING + _PUNCTUATION]
_TREEBANK_CLOSING = [(re.compile(p), r) for p, r in _CLOSING]
_TREEBANK_CLOSING += [(re.compile(p), r" \1 \2 ") for p in _SPLIT_WORDS]


def sentences(text: str) -> list[str]:
    """Sentences as Punkt cuts them where it matters here (the period ending each, which the
    Treebank rules split off)."""
    cuts = [m.end() for m in _SENTENCE_END.finditer(text)]
    pieces = [text[a:b].strip() for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    return [p for p in pieces if p]


def treebank_words(sentence: str) -> list[str]:
    for pattern, spaced in _TREEBANK:
        sentence = pattern.sub(spaced, sentence)
    sentence = f" {sentence} "
    for pattern, spaced in _TREEBANK_CLOSING:
        sentence = pattern.sub(spaced, sentence)
    return sentence.split()


def word_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize``: Punkt sentences, then the Treebank rules in each."""
    return [word for sentence in sentences(text) for word in treebank_words(sentence)]


# -- the rule-based matcher ----------------------------------------------------------------------


class Matcher:
    """The released rule-based matcher and the GPT route's reading of extracted names."""

    def __init__(self, vocabulary: Vocabulary):
        self.vocabulary = vocabulary
        self.lemma = Lemmatizer(vocabulary)

    def caption_words(self, caption: str) -> list[str]:
        """The caption's words after lemmatizing and the two-word phrases."""
        words = [self.lemma(w) for w in word_tokenize(caption.lower())]
        return self.vocabulary.collapse_pairs(words)

    def mentions(self, caption: str) -> list[tuple[str, str]]:
        """(word, category) of each COCO object the caption names, repeats kept."""
        return self.vocabulary.mentions(self.caption_words(caption))

    # GPT route

    def name_objects(self, name) -> list[str]:
        """The objects spaCy reads in "a <name>": the two-word phrases among its lemmas, else
        its runs of nouns."""
        tokens = _spacy_tokens(f"a {name}")
        lemmas, nouns = [], []
        for index, token in enumerate(tokens):
            noun = _is_noun(tokens, index)
            lemmas.append(self._spacy_lemma(token, noun))
            nouns.append(noun)
        phrases = self.vocabulary.collapse_pairs(lemmas, keep_others=False)
        if phrases:
            return phrases
        runs, run = [], []
        for lemma, noun in zip(lemmas, nouns, strict=True):
            if noun:
                run.append(lemma)
            elif run:
                runs.append(" ".join(run))
                run = []
        if run:
            runs.append(" ".join(run))
        return runs

    def _spacy_lemma(self, token: str, noun: bool) -> str:
        if noun and not token.isupper() and any(c.isupper() for c in token[1:]):
            return token  # a proper noun ("iPhone") keeps its spelling
        word = token.lower()
        if noun and word != self.lemma.spacy_noun(word):
            return self.lemma.spacy_noun(word)
        return word

    def extracted_mentions(self, names) -> list[tuple[str, str]]:
        """(object, category) of an answer's extracted names: every name's objects, each
        object once, the synonyms among them."""
        objects: list[str] = []
        for name in names:
            for obj in self.name_objects(name):
                if obj not in objects:
                    objects.append(obj)
        return self.vocabulary.mentions(objects)


# -- spaCy, approximated (GPT route) -------------------------------------------------------------

_SPACY_TOKEN = re.compile(r"'[sS]\b|[A-Za-z0-9]+(?:'(?![sS]\b)[A-Za-z]+)?|[^\sA-Za-z0-9]")

_CLOSED_CLASS = frozenset(
    """a an the this that these those some any each every no another other all both either
    neither my your his her its our their of in on at with by for from to into onto near under
    over behind beside between above below and or but nor as 's""".split()
)
_NUMBERS = frozenset(
    """one two three four five six seven eight nine ten eleven twelve several many few multiple
    various numerous""".split()
)
_ADJECTIVES = frozenset(
    """red blue green yellow white black brown gray grey pink purple orange silver golden beige
    tan dark bright pale colorful colourful small large big little tiny huge giant tall short
    long wide narrow thick thin old young new modern ancient round square rectangular oval
    flat empty full open closed clean dirty wet dry fresh ripe raw cooked fried whole half
    single double different same wooden plastic glass metallic electric electronic digital
    stuffed sliced striped spotted fluffy furry hairy shiny wild domestic adult baby cute
    pretty beautiful nice good bad hot cold warm cool soft hard heavy light middle front back
    left right top bottom upper lower inner outer main several""".split()
)
_NOMINAL_ING = frozenset("dining ceiling building parking clothing wedding".split())
_ADJECTIVE_ENDINGS = ("ous", "ful", "ive", "ish", "less", "able", "ible", "ic", "ical")


def _spacy_tokens(text: str) -> list[str]:
    """Words, with punctuation, hyphens and a possessive 's as tokens of their own."""
    return _SPACY_TOKEN.findall(text)


def _is_content(token: str) -> bool:
    return token[0].isalpha() and token.lower() not in _CLOSED_CLASS


def _is_noun(tokens: list[str], index: int) -> bool:
    """Approximately: is spaCy's tag of ``tokens[index]`` a noun tag? The last word of a run of
    words is (the phrase's head), unless a number; a word before it is unless it looks like a
    number or an adjective (a modifying -ing word too, but "dining", "parking", ...)."""
    token = tokens[index]
    word = token.lower()
    if not _is_content(token):
        return False
    if index + 1 == len(tokens) or not _is_content(tokens[index + 1]):
        return word not in _NUMBERS
    if word in _NUMBERS or word in _ADJECTIVES or word.endswith(_ADJECTIVE_ENDINGS):
        return False
    if len(word) > 4 and word.endswith("ed"):
        return False
    return not word.endswith("ing") or word in _NOMINAL_ING
