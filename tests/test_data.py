"""Tests of onejump.data: cleaning, splitting, loading, the offline corpus and the train/test split."""

from __future__ import annotations

import bz2
import dataclasses
import hashlib
import json
import os
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onejump.corpus import cleaning, offline, wikitext
from onejump.corpus.cleaning import clean_text, is_clean_sentence, split_into_sentences
from onejump.corpus.loaders import CorpusSplit, Sentence, load_sentences, split_sentences
from onejump.corpus.offline import prepare_offline_corpus
from onejump.corpus.wikitext import wikitext_to_paragraphs
from onejump.errors import CorpusError, OneJumpError

# --------------------------------------------------------------------------------------------
# Cleaning
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Marks &amp; Spencer sells food.", "Marks & Spencer sells food."),
        ("Fish &amp;amp; chips are sold here.", "Fish & chips are sold here."),
        ("He said &quot;yes&quot; to it.", 'He said "yes" to it.'),
        ("It decodes TrueHD.&lt;br&gt;", "It decodes TrueHD."),
        ("Results.&lt;onlyinclude&gt;&lt;/onlyinclude&gt;", "Results."),
        ("A&nbsp;B and&#160;C are here.", "A B and C are here."),
        ("Abu Mikhnaf () was a historian.", "Abu Mikhnaf was a historian."),
        ("Lut al-Azdi (), more commonly known as Abu, wrote.", "Lut al-Azdi, more commonly known as Abu, wrote."),
        ("The term oneiric ( , adjective; dreamlike) is used.", "The term oneiric (adjective; dreamlike) is used."),
        ('Nannawa Adama (; ; "Greater Adama") is a woreda.', 'Nannawa Adama ("Greater Adama") is a woreda.'),
        ("The town (born ; ) is old.", "The town (born) is old."),
        ("Gap ( ) and gap (, ) and [ ] vanish.", "Gap and gap and vanish."),
        ("Too   many \t spaces\u00a0here.", "Too many spaces here."),
        ("common name : the golden mitre.", "common name: the golden mitre."),
        ("Is it true ? Yes !", "Is it true? Yes!"),
        ("It honours Martin Luther King, Jr..", "It honours Martin Luther King, Jr."),
        ("Zero\u200bwidth soft\u00adhyphen.", "Zerowidth softhyphen."),
        ("Control\x07char here.", "Control char here."),
    ],
)
def test_clean_text(raw: str, expected: str) -> None:
    assert clean_text(raw) == expected


def test_clean_text_keeps_gap_before_comma_and_full_stop() -> None:
    # A space before "," or "." marks a removed value: kept, so the sentence filter can drop it.
    assert clean_text("The CDP has an area of , all land.") == "The CDP has an area of , all land."
    assert not is_clean_sentence(clean_text("The CDP has an area of , all land."))


@pytest.mark.parametrize(
    "sentence",
    [
        "The cat sat on the mat near the door.",
        "He hit .316 in 1920 for the Giants that season.",
        '"I was terrified," he said about the move.',
        "(Blais was elected one of two vice presidents.)",
        "Émile Barbier was a Belgian fencer in the 1920s.",
        "1967 was a bad year for the British travel industry.",
        'She answered "no" and left the room!',
        "Was it the best audition they had ever seen?",
        "The album was released worldwide by the Dutch label CCM.",
    ],
)
def test_is_clean_sentence_accepts_prose(sentence: str) -> None:
    assert is_clean_sentence(sentence)


@pytest.mark.parametrize(
    "sentence",
    [
        "",
        "The CDP has an area of , all land.",  # removed area value
        "The complex has about of space in its towers.",  # removed conversion
        "Information can be found at . An English translation.",
        "It is approximately , by road, north-east of Garissa.",
        "The template {{cite web}} stayed behind here.",
        "See [[Anarchism]] for more about this topic.",
        "The table row | has a pipe in the middle.",
        "The value x = 5 appears in this sentence.",
        "The tag <br> was left in the sentence here.",
        "The website http://example.com is the source.",
        "The heading without a final full stop",
        "became the switchboard operator until 1922.",  # removed subject
        "The band (formed in 1990 is from London.",  # unbalanced
        'He appeared in "" as Corporal Rostok in 2016.',  # removed title
        "They stole a total of $208,000 ($ in current dollar terms).",
        "He staged a royal coup in the year c.",
        "The leaves are commonly long (sometimes up to ), flat and green.",
        "It had a population of 478 at the 2000 census..",
        "Pistol 12.1, 13.4, 15.6, 17.8, 19.0, 20.1.",  # mostly digits
        "Ohio High School Athletic Association State Championships.",  # no lowercase word
        "Markup ''italic'' survived in this sentence.",
        "Poisoned \x00 sentence with a formula in it.",
    ],
)
def test_is_clean_sentence_rejects_broken(sentence: str) -> None:
    assert not is_clean_sentence(sentence)


def test_split_into_sentences_uses_pysbd_and_keeps_abbreviations() -> None:
    text = "He was born in 1950. He moved to the U.S. in 1970. Then he died."
    assert split_into_sentences(text) == [
        "He was born in 1950.",
        "He moved to the U.S. in 1970.",
        "Then he died.",
    ]
    # pysbd ends a sentence after "c." / "approx."; the piece is glued back on.
    assert split_into_sentences("He ruled from 1530 to c. 1537. He died in 1548.") == [
        "He ruled from 1530 to c. 1537.",
        "He died in 1548.",
    ]
    assert split_into_sentences("One sentence with a decimal 28.6% only.") == [
        "One sentence with a decimal 28.6% only."
    ]
    assert split_into_sentences("   ") == []


# --------------------------------------------------------------------------------------------
# Wikitext and the two raw formats
# --------------------------------------------------------------------------------------------

WIKITEXT = """{{Infobox person
| name = Ada
| birth_date = {{birth date|1815|12|10}}
}}
'''Ada Lovelace''' was an [[England|English]] [[mathematician]] and writer.<ref>{{cite web|url=http://x.org}}</ref> \
She worked on the [[Analytical Engine|analytical engine]].<!-- hidden comment -->
[[File:Ada.jpg|thumb|right|Ada in 1840 [[portrait]]]]
== Early life ==
She was born in London and lived about {{convert|5|km|mi}} from the river.
* A list item that must go away.
# A numbered item that must go away too.
: An indented line that must go away.
{| class="wikitable"
|-
| Cell one || Cell two
|}
Her notes include a formula <math>x^2</math> that is not prose.
She spoke {{lang|fr|français}} well and read ''many'' books.
[[Category:Mathematicians]]
[[de:Ada Lovelace]]
"""


def test_wikitext_to_paragraphs_strips_markup() -> None:
    paragraphs = [clean_text(p) for p in wikitext_to_paragraphs(WIKITEXT)]
    text = "\n".join(paragraphs)
    assert "Ada Lovelace was an English mathematician and writer." in text
    assert "She worked on the analytical engine." in text
    assert "She was born in London and lived about 5 kilometres from the river." in text
    assert "She spoke français well and read many books." in text
    for gone in ("Infobox", "cite", "http", "thumb", "Early life", "list item", "numbered", "indented",
                 "Cell", "Category", "de:", "hidden comment", "[[", "{{", "''"):
        assert gone not in text, gone
    sentences = [s for p in paragraphs for s in cleaning._sentences_from_paragraph(p)]
    assert not any("formula" in s for s in sentences)  # <math> poisons its sentence
    assert all(is_clean_sentence(s) for s in sentences)


def _mediawiki_xml(namespace: bool = True) -> bytes:
    xmlns = ' xmlns="http://www.mediawiki.org/xml/export-0.10/"' if namespace else ""

    def page(title: str, ns: int, text: str, redirect: str | None = None, rev: int = 1) -> str:
        red = f'<redirect title="{redirect}" />' if redirect else ""
        return (
            f"<page><title>{title}</title><ns>{ns}</ns><id>{rev}</id>{red}"
            f"<revision><id>{rev + 100}</id><text xml:space=\"preserve\">{text}</text></revision></page>"
        )

    pages = [
        page("AccessibleComputing", 0, "#REDIRECT [[Computer accessibility]]", redirect="Computer accessibility"),
        page("Wikipedia:About", 4, "The project page is written for editors of the site."),
        page("Mercury (disambiguation)", 0, "Mercury may refer to many different things in the world."),
        page(
            "Albedo",
            0,
            "'''Albedo''' is the measure of the diffuse reflection of solar radiation.&lt;ref&gt;Ref "
            "text here.&lt;/ref&gt; Fresh snow has a very high albedo of about ninety percent.",
            rev=7,
        ),
    ]
    return f"<mediawiki{xmlns}><siteinfo><sitename>W</sitename></siteinfo>{''.join(pages)}</mediawiki>".encode()


@pytest.mark.parametrize("namespace", [True, False])
def test_gensim_dump_parsing_skips_redirects_and_other_namespaces(namespace: bool) -> None:
    got = list(wikitext._gensim_sentences(bz2.compress(_mediawiki_xml(namespace))))
    assert [(s, t) for s, t, _ in got] == [
        ("Albedo is the measure of the diffuse reflection of solar radiation.", "Albedo"),
        ("Fresh snow has a very high albedo of about ninety percent.", "Albedo"),
    ]
    assert got[0][2] == {"oldid": "107"}


def test_gensim_dump_errors_are_corpus_errors() -> None:
    with pytest.raises(CorpusError, match="bz2"):
        list(wikitext._gensim_sentences(b"not bz2 at all"))
    with pytest.raises(CorpusError, match="XML"):
        list(wikitext._gensim_sentences(bz2.compress(b"<mediawiki><page><title>x</title>")))


WIKI_UTF8 = """<doc id="1" url="https://en.wikipedia.org/wiki?curid=1" title="Christian Tarr">
Christian Tarr

Christian Tarr (May 25, 1765 &ndash; February 24, 1833) was a member of the U.S. House of Representatives.
Early life.
Tarr was born in Baltimore, Maryland. He moved to Westmoreland County, Pennsylvania, in 1794.
The following parties contested the elections:
The Phippsburg CDP has an area of , all land.

</doc>
<doc id="2" url="https://en.wikipedia.org/wiki?curid=2" title="US v Microsoft">
US v Microsoft


</doc>
<doc id="3" url="https://en.wikipedia.org/wiki?curid=3" title="Marks &amp; Spencer">
Marks &amp; Spencer

Marks &amp; Spencer is a major British retailer with stores in many countries.
</doc>
"""


def test_exllamav2_parsing_titles_headings_and_gaps() -> None:
    got = list(wikitext._exllamav2_sentences(WIKI_UTF8))
    assert [(s, t) for s, t, _ in got] == [
        (
            "Christian Tarr (May 25, 1765 \u2013 February 24, 1833) was a member of the U.S. House of Representatives.",
            "Christian Tarr",
        ),
        ("Tarr was born in Baltimore, Maryland.", "Christian Tarr"),
        ("He moved to Westmoreland County, Pennsylvania, in 1794.", "Christian Tarr"),
        ("Marks & Spencer is a major British retailer with stores in many countries.", "Marks & Spencer"),
    ]
    assert got[0][2] == {"curid_url": "https://en.wikipedia.org/wiki?curid=1"}


def test_heading_heuristic() -> None:
    assert wikitext._looks_like_heading("Pre-election situation.")
    assert wikitext._looks_like_heading("Community Coalition and the crack cocaine epidemic.")
    assert not wikitext._looks_like_heading("He died in 1950.")
    assert not wikitext._looks_like_heading("The tornado resulted in three injuries.")
    assert not wikitext._looks_like_heading("Tarr was born in Baltimore, Maryland.")
    assert not wikitext._looks_like_heading("Offiong left Carlisle by mutual consent on 4 January 2011.")
    assert not wikitext._looks_like_heading("Highway 745 passes near the community of Kristnes.")
    assert not wikitext._looks_like_heading("It forms part of the Southampton Urban Area.")
    assert not wikitext._looks_like_heading("The shell size varies between 10 mm and 36 mm.")
    assert wikitext._looks_like_heading("Temporary withdrawal of UK domestic services.")


# --------------------------------------------------------------------------------------------
# Loading local files
# --------------------------------------------------------------------------------------------


def test_load_txt(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(
        "\ufeffThe cat sat on the mat. It was warm.\r\n\nDogs bark at night in the old town.\nnot a sentence\n",
        encoding="utf-8",
    )
    got = load_sentences(str(path))
    assert [s.text for s in got] == [
        "The cat sat on the mat.",
        "It was warm.",
        "Dogs bark at night in the old town.",
    ]
    assert all(s.source == str(path) and s.title is None for s in got)
    assert [s.text for s in load_sentences(path, max_documents=1)] == ["The cat sat on the mat.", "It was warm."]


def test_load_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    rows = [
        {"body": "The cat sat on the mat. It was warm.", "title": "Cats"},
        {"body": "Dogs bark at night.\nThey guard the old house well."},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    got = load_sentences(str(path), text_field="body")
    assert got == [
        Sentence("The cat sat on the mat.", str(path), "Cats"),
        Sentence("It was warm.", str(path), "Cats"),
        Sentence("Dogs bark at night.", str(path), None),
        Sentence("They guard the old house well.", str(path), None),
    ]
    assert len(load_sentences(str(path), text_field="body", max_documents=1)) == 2


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (b"", ".txt", "empty"),
        (b"\n\n  \n", ".txt", "empty"),
        (b"", ".jsonl", "empty"),
        (b"The cat sat on the mat.\x00\x01\x02", ".txt", "binary"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ".txt", "binary"),
        (b"The caf\xe9 is open today.\n", ".txt", "UTF-8"),
        (b'{"text": "caf\xe9"}\n', ".jsonl", "UTF-8"),
        (b'{"text": "ok line here."}\n{"text": broken\n', ".jsonl", r":2: not valid JSON"),
        (b'{"title": "x"}\n', ".jsonl", "missing field 'text'"),
        (b'{"text": 42}\n', ".jsonl", "not a string"),
        (b'["a list"]\n', ".jsonl", "expected a JSON object"),
        (b"[" * 100000 + b"\n", ".jsonl", "not valid JSON"),
        (b"no sentence here\nnor here\n", ".txt", "no usable sentences"),
        (b"The cat sat on the mat.\n", ".csv", "unsupported corpus file type"),
    ],
)
def test_load_file_errors(tmp_path: Path, content: bytes, suffix: str, message: str) -> None:
    path = tmp_path / f"corpus{suffix}"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        load_sentences(str(path))


def test_load_missing_directory_unknown(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no such file"):
        load_sentences(str(tmp_path / "missing.txt"))
    with pytest.raises(CorpusError, match="directory"):
        load_sentences(str(tmp_path))
    with pytest.raises(CorpusError, match="unknown corpus source 'wikipedia'"):
        load_sentences("wikipedia")
    with pytest.raises(CorpusError, match="corpus source must be"):
        load_sentences("  ")
    with pytest.raises(CorpusError, match="max_documents"):
        load_sentences("wikipedia-offline", max_documents=0)
    with pytest.raises(CorpusError, match="text_field"):
        load_sentences("wikipedia-offline", text_field="")
    with pytest.raises(CorpusError, match="empty Hugging Face dataset name"):
        load_sentences("hf:")
    assert issubclass(CorpusError, OneJumpError)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=400), suffix=st.sampled_from([".txt", ".jsonl"]))
def test_fuzz_random_bytes_give_sentences_or_corpus_error(tmp_path: Path, content: bytes, suffix: str) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(content)
    try:
        got = load_sentences(str(path))
    except CorpusError:
        return
    assert got and all(isinstance(s, Sentence) and is_clean_sentence(s.text) for s in got)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(
        st.text(alphabet=st.sampled_from(list("abcXY .,!?\"'()[]{}|=<>\u00e9\u2013&;#\n\t")), max_size=80),
        max_size=6,
    ),
    as_json=st.booleans(),
)
def test_fuzz_text_like_input(tmp_path: Path, lines: list[str], as_json: bool) -> None:
    path = tmp_path / ("fuzz.jsonl" if as_json else "fuzz.txt")
    if as_json:
        path.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines), encoding="utf-8")
    else:
        path.write_text("\n".join(lines), encoding="utf-8")
    try:
        got = load_sentences(str(path))
    except CorpusError:
        return
    assert all(is_clean_sentence(s.text) for s in got)


_WIKI_TOKENS = [*"ab Xy.,!?'\"[]{}|=<>:;*#&/-\n", "[[", "]]", "{{", "}}", "<ref>", "</ref>", "{|", "|}", "==", "'''",
                "[[File:", "<math>", "{{convert|5|km}}", "Word is here. ", "The cat sat on the mat."]


@settings(max_examples=150, deadline=None)
@given(wikitext=st.lists(st.sampled_from(_WIKI_TOKENS), max_size=40).map("".join))
def test_fuzz_wikitext_never_raises(wikitext: str) -> None:
    for paragraph in wikitext_to_paragraphs(wikitext):
        for sentence in cleaning._sentences_from_paragraph(paragraph):
            assert is_clean_sentence(sentence)


# --------------------------------------------------------------------------------------------
# Hugging Face datasets (offline, through datasets.load_dataset on a local folder)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def hf_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    datasets = pytest.importorskip("datasets")
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    for attr in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if hasattr(datasets.config, attr):
            monkeypatch.setattr(datasets.config, attr, True)
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    rows = [
        {"text": "The cat sat on the mat near the door. It was a sunny day.", "title": "Cats"},
        {"text": "Dogs\nDogs are loyal animals that live with people.", "title": "Dogs"},
        {"text": "Birds sing early in the morning in spring.", "title": "Birds"},
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


def test_hf_local_dataset_through_load_dataset(hf_offline: Path) -> None:
    got = load_sentences(f"hf:{hf_offline}", max_documents=2)
    assert got == [
        Sentence("The cat sat on the mat near the door.", f"hf:{hf_offline}", "Cats"),
        Sentence("It was a sunny day.", f"hf:{hf_offline}", "Cats"),
        Sentence("Dogs are loyal animals that live with people.", f"hf:{hf_offline}", "Dogs"),
    ]
    with pytest.warns(UserWarning, match="max_documents"):
        assert len(load_sentences(f"hf:{hf_offline}")) == 4


def test_hf_errors(hf_offline: Path) -> None:
    with pytest.raises(CorpusError, match="no field 'body'"):
        load_sentences(f"hf:{hf_offline}", text_field="body", max_documents=1)
    with pytest.raises(CorpusError, match="split 'test'"):
        load_sentences(f"hf:{hf_offline}", hf_split="test", max_documents=1)
    with pytest.raises(CorpusError, match="could not read Hugging Face dataset"):
        load_sentences("hf:no-such-user/no-such-dataset-onejump", max_documents=1)


# --------------------------------------------------------------------------------------------
# split_sentences
# --------------------------------------------------------------------------------------------


def _corpus(n: int, words: int = 10) -> list[Sentence]:
    return [Sentence(" ".join(["word"] * (words - 1) + [f"s{i}."]), "test") for i in range(n)]


def test_split_sizes_disjoint_reproducible() -> None:
    sentences = _corpus(100)
    split = split_sentences(sentences, 60, 30, seed=3)
    assert isinstance(split, CorpusSplit) and split.seed == 3
    assert len(split.train) == 60 and len(split.test) == 30
    assert not {s.text for s in split.train} & {s.text for s in split.test}
    assert split_sentences(sentences, 60, 30, seed=3) == split
    other = split_sentences(sentences, 60, 30, seed=4)
    assert other.train != split.train
    # The defaults are the paper's sizes.
    big = split_sentences(_corpus(12000), seed=0)
    assert (len(big.train), len(big.test)) == (9000, 3000)


def test_split_word_filter_and_dedup() -> None:
    short = Sentence("Too short to use.", "t")
    long_ = Sentence(" ".join(["word"] * 61) + ".", "t")
    dup_a = Sentence("The very same sentence appears here twice in the corpus.", "a")
    dup_b = Sentence("The  very same sentence appears here twice in the corpus. ", "b")
    sentences = [short, long_, dup_a, dup_b, *_corpus(5)]
    split = split_sentences(sentences, 4, 2, seed=0)
    texts = [s.text for s in split.train + split.test]
    assert short.text not in texts and long_.text not in texts
    assert texts.count(dup_a.text) == 1
    kept = next(s for s in split.train + split.test if s.text == dup_a.text)
    assert kept.source == "a"  # first occurrence wins
    assert len(split_sentences(sentences, 1, 1, min_words=4, max_words=61).train) == 1
    with pytest.raises(CorpusError, match="only 6 usable"):
        split_sentences(sentences, 6, 1)


def test_split_errors() -> None:
    with pytest.raises(CorpusError, match=r"only 5 usable sentences .* but 12000 were asked for"):
        split_sentences(_corpus(5))
    with pytest.raises(CorpusError, match="n_train"):
        split_sentences(_corpus(5), 0, 1)
    with pytest.raises(CorpusError, match="n_test"):
        split_sentences(_corpus(5), 1, 0)
    with pytest.raises(CorpusError, match="seed"):
        split_sentences(_corpus(5), 1, 1, seed=-1)
    with pytest.raises(CorpusError, match="max_words"):
        split_sentences(_corpus(5), 1, 1, min_words=10, max_words=5)
    with pytest.raises(CorpusError, match="n_train"):
        split_sentences(_corpus(5), True, 1)  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(
    texts=st.lists(st.integers(min_value=0, max_value=40), max_size=60),
    lengths=st.lists(st.integers(min_value=1, max_value=70), min_size=1, max_size=60),
    n_train=st.integers(min_value=1, max_value=30),
    n_test=st.integers(min_value=1, max_value=30),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_split_property(texts: list[int], lengths: list[int], n_train: int, n_test: int, seed: int) -> None:
    sentences = [
        Sentence(" ".join([f"w{t}"] * lengths[i % len(lengths)]), "p") for i, t in enumerate(texts)
    ]
    usable = {s.text for s in sentences if 8 <= len(s.text.split()) <= 60}
    if len(usable) < n_train + n_test:
        with pytest.raises(CorpusError):
            split_sentences(sentences, n_train, n_test, seed=seed)
        return
    split = split_sentences(sentences, n_train, n_test, seed=seed)
    train, test = [s.text for s in split.train], [s.text for s in split.test]
    assert len(train) == n_train and len(test) == n_test
    assert len(set(train)) == n_train and len(set(test)) == n_test
    assert not set(train) & set(test)
    assert set(train) | set(test) <= usable
    assert split_sentences(sentences, n_train, n_test, seed=seed) == split


# --------------------------------------------------------------------------------------------
# prepare_offline_corpus with small fake wheels (no network)
# --------------------------------------------------------------------------------------------


def _fake_wheel(path: Path, member: str, payload: bytes) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, payload)
        zf.writestr("dist-info/METADATA", "Name: fake\n")
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache holding two small wheels that stand in for the pinned ones (checksums patched)."""
    wheel_dir = tmp_path / "cache" / "corpus" / "wheels"
    wheel_dir.mkdir(parents=True)
    payloads = {
        "_EXLLAMAV2": WIKI_UTF8.encode(),
        "_GENSIM": bz2.compress(_mediawiki_xml()),
    }
    for attr, payload in payloads.items():
        pinned = getattr(offline, attr)
        sha = _fake_wheel(wheel_dir / pinned.wheel, pinned.member, payload)
        monkeypatch.setattr(
            offline, attr,
            dataclasses.replace(pinned, wheel_sha256=sha, member_sha256=hashlib.sha256(payload).hexdigest()),
        )

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip must not run when the wheels are cached")

    monkeypatch.setattr(subprocess, "run", no_pip)
    return tmp_path / "cache"


def test_prepare_offline_corpus_with_fake_wheels(fake_wheels: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = prepare_offline_corpus(fake_wheels, progress=False)
    assert path == fake_wheels / "corpus" / "wikipedia-offline.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(set(r) == {"text", "source", "title"} for r in records)
    assert {r["source"] for r in records} == {"exllamav2:wiki.utf8", "gensim:enwiki"}
    assert len(records) == 6
    attribution = (fake_wheels / "corpus" / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "CC BY-SA" in attribution and "modified" in attribution
    assert "https://en.wikipedia.org/wiki/Christian_Tarr" in attribution
    assert "https://en.wikipedia.org/wiki/Marks_%26_Spencer" in attribution
    assert "https://en.wikipedia.org/wiki/Albedo" in attribution and "oldid=107" in attribution
    assert "US_v_Microsoft" not in attribution  # no sentence used from it
    assert not list((fake_wheels / "corpus").glob(".*tmp"))

    # Second call: returns at once without rebuilding.
    def boom(*args: object) -> None:
        raise AssertionError("rebuilt")

    monkeypatch.setattr(offline, "_exllamav2_sentences", boom)
    mtime = path.stat().st_mtime_ns
    start = time.perf_counter()
    assert prepare_offline_corpus(fake_wheels, progress=False) == path
    assert time.perf_counter() - start < 0.5 and path.stat().st_mtime_ns == mtime
    with pytest.raises(AssertionError, match="rebuilt"):
        prepare_offline_corpus(fake_wheels, force=True, progress=False)

    # load_sentences("wikipedia-offline") reads the jsonl as is, with sources and titles.
    got = load_sentences("wikipedia-offline", cache_dir=fake_wheels)
    assert got[0] == Sentence(records[0]["text"], "exllamav2:wiki.utf8", "Christian Tarr")
    assert len(got) == 6
    assert {s.title for s in load_sentences("wikipedia-offline", cache_dir=fake_wheels, max_documents=1)} == {
        "Christian Tarr"
    }


def test_prepare_interrupted_write_is_not_taken_as_complete(
    fake_wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_dumps = json.dumps
    calls = {"n": 0}

    def failing_dumps(obj: object, **kwargs: object) -> str:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_dumps(obj, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(offline.json, "dumps", failing_dumps)
    with pytest.raises(KeyboardInterrupt):
        prepare_offline_corpus(fake_wheels, progress=False)
    corpus = fake_wheels / "corpus"
    assert not (corpus / "wikipedia-offline.jsonl").exists()
    assert not list(corpus.glob(".*tmp"))
    assert not offline._is_prepared(corpus)
    monkeypatch.setattr(offline.json, "dumps", real_dumps)
    assert prepare_offline_corpus(fake_wheels, progress=False).is_file()
    # A truncated jsonl (size no longer matches the metadata) is rebuilt.
    jsonl = corpus / "wikipedia-offline.jsonl"
    jsonl.write_text(jsonl.read_text(encoding="utf-8")[:50], encoding="utf-8")
    assert not offline._is_prepared(corpus)


def test_prepare_checksum_errors(fake_wheels: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pinned = offline._EXLLAMAV2
    monkeypatch.setattr(offline, "_EXLLAMAV2", dataclasses.replace(pinned, member_sha256="0" * 64))
    with pytest.raises(CorpusError, match=r"has sha256 .* expected 0000"):
        prepare_offline_corpus(fake_wheels, progress=False)


def test_prepare_downloads_with_pip_when_wheel_is_wrong(
    fake_wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = fake_wheels / "corpus" / "wheels" / offline._GENSIM.wheel
    good = wheel.read_bytes()
    wheel.write_bytes(b"corrupted")
    seen: list[list[str]] = []

    def fake_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        (dest / offline._GENSIM.wheel).write_bytes(good)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    assert prepare_offline_corpus(fake_wheels, progress=False).is_file()
    (cmd,) = seen
    assert cmd[1:4] == ["-m", "pip", "download"]
    for arg in ("--no-deps", "--only-binary=:all:", "gensim==4.4.0", "manylinux_2_28_x86_64", "3.11", "cp"):
        assert arg in cmd
    assert wheel.read_bytes() == good


def test_prepare_download_failures(fake_wheels: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = fake_wheels / "corpus" / "wheels" / offline._EXLLAMAV2.wheel
    wheel.unlink()

    def failing_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for exllamav2==0.3.2\n")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(CorpusError, match=r"could not download exllamav2==0\.3\.2 .*No matching distribution.*put"):
        prepare_offline_corpus(fake_wheels, progress=False)

    def wrong_file_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        dest = Path(cmd[cmd.index("--dest") + 1])
        (dest / offline._EXLLAMAV2.wheel).write_bytes(b"tampered")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", wrong_file_pip)
    with pytest.raises(CorpusError, match="downloaded from PyPI has sha256"):
        prepare_offline_corpus(fake_wheels, progress=False)
    assert not wheel.exists()
    assert [p.name for p in wheel.parent.iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------------------------------
# The real thing (downloads two wheels from PyPI the first time; uses the cache)
# --------------------------------------------------------------------------------------------


@pytest.mark.real
def test_real_offline_corpus() -> None:
    path = prepare_offline_corpus(progress=False)
    start = time.perf_counter()
    assert prepare_offline_corpus(progress=False) == path
    assert time.perf_counter() - start < 1.0
    sentences = load_sentences("wikipedia-offline")
    usable = [s for s in sentences if 8 <= len(s.text.split()) <= 60]
    by_source = {src: sum(s.source == src for s in usable) for src in offline.OFFLINE_SOURCES}
    assert len(usable) >= 12000, by_source
    assert all(n >= 5000 for n in by_source.values()), by_source
    assert all(is_clean_sentence(s.text) for s in sentences)
    assert len({s.text for s in sentences}) == len(sentences)
    attribution = (path.parent / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "CC BY-SA" in attribution and "modified" in attribution
    for title in ("Anarchism", "Christian_Tarr"):
        assert f"https://en.wikipedia.org/wiki/{title}" in attribution
    split = split_sentences(sentences, 9000, 3000, seed=0)
    assert len(split.train) == 9000 and len(split.test) == 3000
    assert not {s.text for s in split.train} & {s.text for s in split.test}
    assert split_sentences(sentences, 9000, 3000, seed=0) == split
    assert os.path.getsize(path) > 1_000_000
