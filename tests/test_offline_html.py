"""The HTML book reads offline: no page loads a script from the network, and
MathJax comes from the copy `make setup` puts in .cache/html_static/."""
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from lorabook.config import REPO_ROOT

NETWORK = re.compile(r"^\s*(https?:)?//", re.I)


def sphinx_config() -> dict:
    return yaml.safe_load((REPO_ROOT / "_config.yml").read_text())["sphinx"]["config"]


class _Scripts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        src = dict(attrs).get("src")
        if tag == "script" and src:
            self.sources.append(src)


def script_sources(html: str) -> list[str]:
    parser = _Scripts()
    parser.feed(html)
    return parser.sources


def test_script_sources_are_read():
    page = ('<script src="_static/a.js?v=1"></script><script>var x;</script>'
            '<script defer="defer" src="https://cdn.example.org/m.js"></script>'
            "<SCRIPT SRC='//cdn.example.org/n.js'></SCRIPT>")
    sources = script_sources(page)
    assert sources == ["_static/a.js?v=1", "https://cdn.example.org/m.js",
                       "//cdn.example.org/n.js"]
    assert [bool(NETWORK.match(s)) for s in sources] == [False, True, True]


def test_mathjax_is_configured_local_and_installed():
    cfg = sphinx_config()
    path = cfg["mathjax_path"]
    assert not NETWORK.match(path), path
    # Relative to _static/, which receives the html_static_path folders
    # (relative to book/, the folder of the book's _config.yml).
    static = [REPO_ROOT / "book" / p for p in cfg["html_static_path"]]
    assert any((d / path).is_file() for d in static), (
        f"no {path} in {static}: run `make setup` (it fetches MathJax)")


@pytest.mark.slow
def test_built_pages_load_no_script_from_the_network(built):
    html = built / "html"
    pages = sorted(html.glob("*.html"))
    assert pages
    mathjax = sphinx_config()["mathjax_path"]
    with_math = 0
    for page in pages:
        sources = script_sources(page.read_text())
        remote = [s for s in sources if NETWORK.match(s)]
        assert not remote, f"{page.name} loads {remote}"
        for src in sources:
            local = (page.parent / src.split("?", 1)[0]).resolve()
            assert local.is_file(), f"{page.name}: {src} is not in the build"
        with_math += any(s.split("?", 1)[0] == f"_static/{mathjax}"
                         for s in sources)
    assert with_math, "no page loads the local MathJax"
