"""User and tokenizer text is data: figures (PNG, SVG, PDF) and HTML pages show nasty tokens literally."""

import dataclasses
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from onejump.lenses import LogitLens
from onejump.model.loading import from_pretrained_model
from onejump.textsafe import figure_text, html_text, visible
from onejump.trajectory import save_trajectories, trajectories

from .tiny import tiny_model, tiny_tokenizer

NASTY = ["$$", "$x^2$", "$", "\\$", "\\frac{a}{b}", "\\", "{}", "{0}", "%s", "%(prog)s", "%%",
         "<script>alert(1)</script>", "&amp;", "&lt;", "'", '"',
         "a\x00b", "\x07", "\x1b[31m", "\n", "\r\n", "\u202eabc", "\u200f", "\u2066x\u2069",
         "\ufeff", "\u2028", "x" * 5000, "$" * 101, "^_", "\ud7ff", "\U0001f600", "\u0645\u0631\u062d\u0628\u0627"]


def test_visible_escapes_every_hidden_character():
    for ch in ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\u200b", "\u202e", "\u2066", "\ufeff", "\u2028"]:
        shown = visible(f"a{ch}b")
        assert ch not in shown and shown.startswith("a\\") and shown.endswith("b")
    assert visible("a\nb\tc") == "a\\nb\\tc"
    assert visible("x" * 50, 10) == "x" * 9 + "\u2026" and len(visible("\x00" * 1000, 10)) == 10
    assert visible("\u0645\u0631\u062d\u0628\u0627 \U0001f600") == "\u0645\u0631\u062d\u0628\u0627 \U0001f600"


def _unescape_like_matplotlib(s: str) -> str:
    return s.replace("\\$", "$")


@pytest.mark.parametrize("text", NASTY)
def test_figure_text_never_enters_mathtext(text):
    from matplotlib import cbook

    shown = figure_text(text, None)
    assert not cbook.is_math_text(shown)
    assert _unescape_like_matplotlib(shown) == visible(text)


def test_html_text_is_inert():
    for text in NASTY:
        shown = html_text(text)
        assert not re.search(r"[<>\"'\x00-\x08]", shown) and "&amp;amp;" not in html_text("&")
    assert html_text("&amp;") == "&amp;amp;"


@pytest.fixture(scope="module")
def traj():
    lm = from_pretrained_model(tiny_model("llama"), tiny_tokenizer(), name="tiny-llama")
    return trajectories([LogitLens(lm)], lm, "the cat sat on the mat")[0]


def _nasty(traj, offset):
    """The trajectory with every cell, input token and the lens name replaced by nasty text."""
    n = len(NASTY)
    tops = [[NASTY[(offset + r * 7 + c) % n] for c in range(traj.num_tokens)] for r in range(traj.num_levels)]
    topk = [[[NASTY[(offset + r + c + j) % n] for j in range(len(cell))] for c, cell in enumerate(row)]
            for r, row in enumerate(traj.topk_tokens)]
    inputs = [NASTY[(offset + c * 3) % n] for c in range(traj.num_tokens)]
    return dataclasses.replace(traj, lens_name=NASTY[offset % n] + " $lens$", top_tokens=tops, topk_tokens=topk,
                               input_tokens=inputs)


@pytest.mark.parametrize("offset", [0, 5, 11])
@pytest.mark.parametrize("suffix", ["png", "svg", "pdf"])
def test_nasty_tokens_in_figures(traj, tmp_path, offset, suffix):
    path = save_trajectories([_nasty(traj, offset), _nasty(traj, offset + 1)], tmp_path / f"t.{suffix}",
                             title="In LaTeX you write $$x^2$$ for display math <b>%s{}</b>")
    data = path.read_bytes()
    assert len(data) > 1000
    if suffix == "svg":
        ET.fromstring(data)  # well-formed XML: no control character reached it


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs = set(), set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs.update(name for name, _ in attrs)


def test_nasty_tokens_in_html(traj, tmp_path):
    path = save_trajectories([_nasty(traj, 0), _nasty(traj, 3)], tmp_path / "t.html",
                             title="<script>alert('x')</script> $$ &amp; \u202e")
    page = path.read_text(encoding="utf-8")
    parser = _Tags()
    parser.feed(page)
    assert parser.tags <= {"html", "head", "meta", "title", "style", "body", "h2", "h3", "p", "table", "tr", "td",
                           "th"}
    assert parser.attrs <= {"charset", "style", "title"}
    assert "<script" not in page and "\u202e" not in page and "\x00" not in page
    assert "&lt;script&gt;" in page and "&amp;amp;" in page and "\\u202e" in page
    assert len(page) < 400_000  # a 5000-character token is cut, not repeated in full
