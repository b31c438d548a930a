"""Request simulator: ambiguous shopper requests built from an item's own metadata.

Datasets without user-written text (amazon_clothing_2014_msl, movielens ratings without tags,
an item-only catalog) still need a request per interaction. Following product-search research
(Van Gysel et al., CIKM 2016; Ai et al., SIGIR 2017), a request is built from the target
item's metadata: its product type plus zero to two attributes, with brand, model-number and
size tokens removed. Such a request matches many items on purpose ("men's automatic watch"),
so that it is the user's taste that tells the items apart.

Three sources of words, in order of preference:
- a multi-valued category such as MovieLens genres ("Adventure|Animation|Comedy"): the type
  is one facet, the attributes other facets and the decade of a "(1995)" title;
- a single category path ("Tops/Knits" or "Women > Shoes > Boots"): the type is its leaf,
  the attributes generic words of the title;
- no category: the type is the title's head noun, the attributes other generic title words.

A title in a script written without spaces (Chinese, Japanese, Thai) is one "word" to this analysis; where it gives
no product word, the request is the title's leading characters, at most `UNSEGMENTED_REQUEST_CHARACTERS` of them.

Which title words are generic is learnt from the catalog (:class:`TitleVocabulary`): a word is
generic when it appears in titles of at least ``min_brands`` different brands and rarely opens
a title. Brand names ("Invicta", "Skechers") open most of the titles they appear in, and
product-line names ("Pro Diver", "Chuck Taylor") stay within one brand; both are left out.

Everything is seeded: :func:`fill_missing_requests` gives every (user, item) pair its own
``random.Random`` derived from the seed, so a request does not depend on row order.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import median

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from whisperlite.core.progress import bar_disabled
from whisperlite.core.text import clean_text

log = logging.getLogger(__name__)

# Scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, kana, Han): there a "word" found between
# spaces and punctuation is a whole phrase ("女士夏季碎花连衣裙"), which the title analysis cannot split.
_UNSEGMENTED_SCRIPT = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u19e0-\u19ff\u3005-\u3007\u3040-\u30ff\u31f0-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003ffff]+"
)
# At most this many characters of such a phrase make a request (combining marks not counted): a product title's
# words run together, and a request is a few words ("女士夏季碎花连衣裙", women's summer floral dress, is 9).
UNSEGMENTED_REQUEST_CHARACTERS = 10
# Where a title's main phrase ends and colour, size, pack count or materials begin.
_MAIN_PHRASE_END = re.compile(r",|\s[-\u2013\u2014]\s|\(|\[|\||;|\s(?:with|for|w/|featuring|by|in)\s", re.I)
_SENTENCE_END = re.compile(r"[.!?\n]\s")
TEXT_AS_TITLE_WORDS = 12
# The request of an item whose metadata names nothing generic (a brand and model codes).
NO_PRODUCT_WORD = "item"
_MOVIE_YEAR = re.compile(r"\((\d{4})\)\s*$")
_MULTI_VALUE_SEP = "|"
_PATH_SEP = re.compile(r"\s*(?:/|>)\s*")

STOPWORDS = frozenset(
    "a an and or of the for with without in on at by to from as is it its this that non".split()
)
# Size, fit-range and unit words: a shopper asks for a size separately from the request.
SIZE_WORDS = frozenset(
    """xxs xs s m l xl xxl xxxl xxxxl x-small xx-small small medium med large x-large xx-large
    xxx-large petite petites plus plus-size size sizes sized one-size tall big regular
    inch inches in cm mm oz ml ct cttw lb lbs us eu uk months month mos yrs years pair pairs
    pack pk pcs pc piece pieces count""".split()
)
# Who the product is for: an attribute ("men's watch"), never the product type.
AUDIENCE_WORDS = frozenset(
    """men's mens men man's women's womens women woman's ladies ladies' lady's boys boys' boy's
    girls girls' girl's kids kids' kid's children children's child's baby babies toddler toddlers
    infant infants junior juniors juniors' junior's unisex adult adults youth""".split()
)
# Words that describe the listing rather than the product.
FILLER_WORDS = frozenset(
    """new collection series edition style styles fashion design designer brand model
    variation parent assorted color colors colour colours genuine authentic official
    licensed quality premium deluxe classic original best great perfect gift gifts hot sale
    free shipping item multiple various made boxed up ii iii iv""".split()
)


@functools.cache
def _token_pattern() -> re.Pattern[str]:
    """Letters and digits of any script with their combining marks ("plissée", "連衣裙", "ผู้หญิง"): an ASCII-only
    pattern cut "crème" into "cr" and "me", and one without the marks cut Thai and Devanagari words at every vowel
    sign. Python's re has no class for marks, so it is built once from the Unicode database, over planes 0, 1 and 14
    (the planes that hold combining marks), when first needed: the scan takes some 50 ms."""
    mark_ranges: list[list[int]] = []  # as ranges: a class of the 2,400 marks one by one tokenized 5x slower
    for code in (c for c in [*range(0x20000), *range(0xE0000, 0xE1000)] if unicodedata.category(chr(c))[0] == "M"):
        if mark_ranges and mark_ranges[-1][1] == code - 1:
            mark_ranges[-1][1] = code
        else:
            mark_ranges.append([code, code])
    marks = "".join(f"{re.escape(chr(first))}-{re.escape(chr(last))}" for first, last in mark_ranges)
    word = rf"\w[\w{marks}]*"  # \w holds "_", which tokenize turns into a space first
    return re.compile(rf"{word}(?:['\-]{word})*'?")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens; hyphenated words ("t-shirt") and possessives ("men's") stay whole."""
    return _token_pattern().findall(clean_text(text).lower().replace("\u2019", "'").replace("_", " "))


_DIGIT = re.compile(r"\d")


def _is_word(token: str) -> bool:
    return len(token) > 1 and token not in STOPWORDS and not _DIGIT.search(token)


@dataclass(frozen=True)
class TitleVocabulary:
    """Which title words are generic product words, learnt from a catalog's titles.

    For the usual "Brand Gender Attributes Type, Colour, Size" title, the opening word stands
    for the brand. Per word ``w``, over the titles holding it:
    - ``opening_share``: the share that open with ``w`` (brands open most titles they are in);
    - ``brand_spread``: how many distinct opening words precede ``w``;
    - ``top_brand_share``: the largest share preceded by one and the same opening word
      (a brand's second word, "Nine *West*", or a product line, "Pro *Diver*");
    - ``head_share``: the share where ``w`` is the last word of the main phrase (nouns that
      name the product type: "watch", "sandal"; not "black" or "women's");
    and ``compounds``: heads that almost always follow the same word ("flip flop").
    """

    brand_spread: dict[str, int]
    opening_share: dict[str, float]
    top_brand_share: dict[str, float]
    head_share: dict[str, float]
    compounds: dict[str, str]
    min_brands: int = 5
    max_opening_share: float = 0.5
    max_top_brand_share: float = 0.5
    min_head_share: float = 0.2
    min_compound_share: float = 0.8

    @classmethod
    def from_titles(cls, titles: Iterable[str], min_brands: int = 5) -> TitleVocabulary:
        openers: dict[str, Counter[str]] = defaultdict(Counter)
        holding: Counter[str] = Counter()
        opening: Counter[str] = Counter()
        heading: Counter[str] = Counter()
        before_head: dict[str, Counter[str]] = defaultdict(Counter)
        for title in titles:
            tokens = tokenize(title)
            if not tokens:
                continue
            opening[tokens[0]] += 1
            for token in set(tokens):
                holding[token] += 1
                if token != tokens[0]:
                    openers[token][tokens[0]] += 1
            main = _main_phrase_tokens(title)
            words = [i for i, t in enumerate(main) if _is_product_word(t)]
            if words:
                head = main[words[-1]]
                heading[head] += 1
                if words[-1] > 0:
                    before_head[head][main[words[-1] - 1]] += 1
        vocabulary = cls(
            brand_spread={t: len(c) for t, c in openers.items()},
            opening_share={t: opening[t] / n for t, n in holding.items()},
            top_brand_share={t: max(c.values()) / holding[t] for t, c in openers.items()},
            head_share={t: heading[t] / n for t, n in holding.items()},
            compounds={},
            min_brands=min_brands,
        )
        for head, before in before_head.items():
            word, n = before.most_common(1)[0]
            if (
                heading[head] >= min_brands
                and n / heading[head] >= vocabulary.min_compound_share
                and vocabulary.is_generic(word)
                and word not in AUDIENCE_WORDS
                and vocabulary.head_share.get(word, 0.0) < vocabulary.min_head_share
            ):
                vocabulary.compounds[head] = word
        return vocabulary

    def is_brand_like(self, token: str) -> bool:
        """Opens most of its titles, or keeps to one brand's titles."""
        return (
            self.opening_share.get(token, 1.0) >= self.max_opening_share
            or self.top_brand_share.get(token, 1.0) >= self.max_top_brand_share
        )

    def is_generic(self, token: str) -> bool:
        return (
            _is_product_word(token)
            and self.brand_spread.get(token, 0) >= self.min_brands
            and not self.is_brand_like(token)
        )

    def product_type(self, main_phrase: Sequence[str]) -> str | None:
        """The main phrase's head noun, with its fixed first half when it has one."""
        candidates = [
            i
            for i, t in enumerate(main_phrase)
            if _is_product_word(t) and t not in AUDIENCE_WORDS and not self.is_brand_like(t)
        ]
        for i in reversed(candidates):
            token = main_phrase[i]
            if self.head_share.get(token, 0.0) >= self.min_head_share:
                first_half = self.compounds.get(token)
                if first_half and i > 0 and main_phrase[i - 1] == first_half:
                    return f"{first_half} {token}"
                return token
        generic = [main_phrase[i] for i in candidates if self.is_generic(main_phrase[i])]
        return generic[-1] if generic else None


def _is_product_word(token: str) -> bool:
    return _is_word(token) and token not in SIZE_WORDS and token not in FILLER_WORDS


def _main_phrase_tokens(title: str) -> list[str]:
    return tokenize(_MAIN_PHRASE_END.split(clean_text(title), maxsplit=1)[0])


@dataclass(frozen=True)
class RequestParts:
    """The words a request for one item may use: the product type (or, for facet lists, the
    facets any one of which may serve as the type) and attribute candidates."""

    product_type: str
    attributes: tuple[str, ...]
    type_choices: tuple[str, ...] = ()


def _generic_tokens(text: str, vocabulary: TitleVocabulary | None) -> list[str]:
    tokens = tokenize(text)
    if vocabulary is None:
        # Without catalog statistics the opening word is taken as the brand.
        return [t for t in tokens[1:] if _is_product_word(t)]
    return [t for t in tokens if vocabulary.is_generic(t)]


def _leading_characters(text: str, count: int) -> str:
    """The first ``count`` characters of ``text``, each with its combining marks (a Thai vowel sign stays on its
    consonant)."""
    characters = 0
    for index, char in enumerate(text):
        if unicodedata.category(char)[0] != "M":
            if characters == count:
                return text[:index]
            characters += 1
    return text


def _bounded(word: str) -> str:
    """A request word cut to `UNSEGMENTED_REQUEST_CHARACTERS` when it is a phrase of a script written without spaces."""
    return _leading_characters(word, UNSEGMENTED_REQUEST_CHARACTERS) if _UNSEGMENTED_SCRIPT.search(word) else word


def _first_unsegmented_run(title: str) -> str | None:
    """The title's first run of a script written without spaces, lower-cased as tokens are (digits, Latin brand names
    and punctuation around it left out: "【ZARA】2023夏季新款连衣裙" gives "夏季新款连衣裙")."""
    run = _UNSEGMENTED_SCRIPT.search(clean_text(title).lower())
    return run.group() if run else None


def _decade(title: str) -> tuple[str, ...]:
    """("1990s",) for a "Toy Story (1995)" title, else ()."""
    year = _MOVIE_YEAR.search(title)
    return (f"{year.group(1)[:3]}0s",) if year else ()


def _attributes(title_words: Iterable[str], product_type_words: Iterable[str]) -> tuple[str, ...]:
    """The title words other than the product type's, `_bounded`, each once, in title order."""
    excluded = {_bounded(w) for w in product_type_words}
    return tuple(dict.fromkeys(w for w in map(_bounded, title_words) if w not in excluded))


def request_parts(title: str, category: str = "", vocabulary: TitleVocabulary | None = None) -> RequestParts:
    """Split an item's metadata into a product type and attribute candidates (no randomness)."""
    title = clean_text(title)
    facets = [f for f in (clean_text(x) for x in clean_text(category).split(_MULTI_VALUE_SEP)) if f]
    decade = _decade(title)
    if len(facets) > 1 or (facets and decade):
        # A facet list, or a dated work ("Crumb (1994)") whose title is a name, not a description.
        words = tuple(_PATH_SEP.split(f)[-1].lower() for f in facets)  # "Ladieswear > Tops|Jersey": tops, jersey
        return RequestParts(product_type=words[0], attributes=decade + words[1:], type_choices=words)

    title_words = _generic_tokens(title, vocabulary)
    if facets:
        leaf = _PATH_SEP.split(facets[0])[-1].lower()
        return RequestParts(product_type=leaf, attributes=_attributes(title_words, tokenize(leaf)))

    main_phrase = _main_phrase_tokens(title)
    product_type = vocabulary.product_type(main_phrase) if vocabulary is not None else None
    if product_type is None:
        # No head noun recognised: the last generic word of the title; failing that (a title
        # of brand-only words, "iPlay Just Born Sunhat") the main phrase's last word after the
        # brand; failing that, a title in a script written without spaces ("女士夏季碎花连衣裙", one
        # "word" taken for the brand) is asked for by its leading characters; failing that (a title
        # that is a brand and model codes) "item", never a brand.
        main_words = [t for t in main_phrase[1:] if _is_product_word(t) and t not in AUDIENCE_WORDS]
        generic = [t for t in title_words if t not in AUDIENCE_WORDS]
        pool = (main_words or generic) if vocabulary is None else (generic or main_words)
        pool = pool or title_words
        product_type = pool[-1] if pool else _first_unsegmented_run(title) or NO_PRODUCT_WORD
    return RequestParts(product_type=_bounded(product_type), attributes=_attributes(title_words, product_type.split()))


def compose_request(parts: RequestParts, rng: random.Random | np.random.Generator, max_attributes: int = 2) -> str:
    """Product type plus 0..max_attributes attributes (uniform count, uniform choice), the
    attributes kept in the order the metadata lists them. With several type choices (facets)
    the type is drawn first and the attributes from the rest."""
    product_type, attributes = parts.product_type, parts.attributes
    if isinstance(rng, np.random.Generator):
        draw, pick = (lambda n: int(rng.integers(0, n + 1))), (lambda n, k: rng.choice(n, size=k, replace=False).tolist())
    else:
        draw, pick = (lambda n: rng.randint(0, n)), (lambda n, k: rng.sample(range(n), k))
    if len(parts.type_choices) > 1:
        product_type = parts.type_choices[draw(len(parts.type_choices) - 1)]
        attributes = tuple(a for a in attributes if a != product_type)
    n = draw(min(max_attributes, len(attributes)))
    chosen = sorted(pick(len(attributes), n)) if n else []
    return " ".join([attributes[i] for i in chosen] + [product_type])


def simulate_request(
    title: str,
    category: str,
    rng: random.Random | np.random.Generator,
    vocabulary: TitleVocabulary | None = None,
) -> str:
    """One simulated request for an item: e.g. "Invicta Men's 8926 Pro Diver Collection
    Automatic Watch" -> "men's automatic watch", "watch" or "diver watch".

    Pass ``vocabulary`` (``TitleVocabulary.from_titles(catalog_titles)``) to recognise brand
    and product-line words; without it the title's first word is taken as the brand.
    """
    return compose_request(request_parts(title, category, vocabulary), rng)


def _seed_for_pair(rng: random.Random, seed: int, user_id: object, item_id: object) -> random.Random:
    # A str seed is hashed with SHA-512 by random.Random: stable across runs and platforms.
    rng.seed(f"{seed}\x1f{user_id}\x1f{item_id}")
    return rng


def item_titles(items: pd.DataFrame) -> list[str]:
    """Each item's title, or where it has none the head of its text (its first sentence, at most
    `TEXT_AS_TITLE_WORDS` words): a catalog of descriptions only still has words to ask for."""
    titles = items["title"].fillna("").astype(str) if "title" in items else pd.Series([""] * len(items))
    texts = items["text"].fillna("").astype(str) if "text" in items else pd.Series([""] * len(items))
    return [title if title.strip() else _text_head(text) for title, text in zip(titles, texts)]


def _text_head(text: str) -> str:
    sentence = _SENTENCE_END.split(clean_text(text), maxsplit=1)[0]
    return " ".join(sentence.split()[:TEXT_AS_TITLE_WORDS])


def fill_missing_requests(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    seed: int = 0,
    vocabulary: TitleVocabulary | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Return a copy of ``interactions`` whose empty ``request`` cells hold a simulated request
    for the row's item, plus a boolean column ``request_simulated``. User-written requests are
    kept. Each (user, item) pair draws from its own seeded generator, so the result does not
    depend on row order or on which other rows are present."""
    out = interactions.copy()
    requests = out["request"].fillna("").astype(str)
    missing = requests.str.strip() == ""
    item_ids, item_title_list = items["item_id"].astype(str), item_titles(items)
    if vocabulary is None:
        vocabulary = TitleVocabulary.from_titles(item_title_list)
    titles = dict(zip(item_ids, item_title_list))
    categories = dict(zip(item_ids, items["category"].fillna("").astype(str))) if "category" in items else {}
    parts_cache: dict[str, RequestParts] = {}
    filled = requests.to_numpy(dtype=object, copy=True)
    rows = np.flatnonzero(missing.to_numpy())
    users = out["user_id"].astype(str).to_numpy()
    row_items = out["item_id"].astype(str).to_numpy()
    rng = random.Random()
    for row in tqdm(rows, desc="simulating requests", unit="req", disable=bar_disabled(progress), mininterval=1.0):
        item_id = row_items[row]
        parts = parts_cache.get(item_id)
        if parts is None:
            parts = request_parts(titles[item_id], categories.get(item_id, ""), vocabulary)
            parts_cache[item_id] = parts
        filled[row] = compose_request(parts, _seed_for_pair(rng, seed, users[row], item_id))
    nameless = sorted(item_id for item_id, parts in parts_cache.items() if parts.product_type == NO_PRODUCT_WORD)
    if nameless:
        log.warning(
            "%d of %d items requested have no product word in their title, text or category (e.g. %s): their simulated "
            "requests are the bare word %r",
            len(nameless), len(parts_cache), ", ".join(repr(i) for i in nameless[:3]), NO_PRODUCT_WORD,
        )
    out["request"] = filled
    out["request_simulated"] = missing.to_numpy()
    return out


class MatchIndex:
    """Which catalog items contain every word of a request (in title or category): the
    measure of a request's ambiguity."""

    def __init__(self, items: pd.DataFrame):
        titles = item_titles(items)
        categories = items["category"].fillna("").astype(str) if "category" in items else [""] * len(items)
        postings: dict[str, set[int]] = defaultdict(set)
        for row, (title, category) in enumerate(zip(titles, categories)):
            words = tokenize(f"{title} {category.replace(_MULTI_VALUE_SEP, ' ')}") + list(_decade(title))
            for token in words:
                postings[token].add(row)
        self._postings = postings
        self.n_items = len(items)

    def count(self, request: str) -> int:
        tokens = sorted(set(tokenize(request)), key=lambda t: len(self._postings.get(t, ())))
        if not tokens:
            return 0
        matched = self._postings.get(tokens[0], set())
        for token in tokens[1:]:
            if not matched:
                break
            matched = matched & self._postings.get(token, set())
        return len(matched)


def ambiguity(requests: Sequence[str], items: pd.DataFrame) -> dict[str, float]:
    """Summary of how many catalog items match each request (all request words present)."""
    index = MatchIndex(items)
    counts = np.array([index.count(r) for r in requests])
    return {
        "n_requests": int(len(counts)),
        "median_matching_items": float(median(counts)) if len(counts) else 0.0,
        "share_matching_one_item": float(np.mean(counts == 1)) if len(counts) else 0.0,
        "share_matching_over_10": float(np.mean(counts > 10)) if len(counts) else 0.0,
    }
