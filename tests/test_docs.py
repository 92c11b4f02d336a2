"""The docs stay true to the repository: the recipe reference matches config/schema.yaml, and every relative link in
README.md, docs/*.md and the other folders' README.md points at a file that exists (and, for `#anchor`s into Markdown, at a
heading it has). Plain file reading: no torch, no workflow; runs in well under a second."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_generator():
    spec = importlib.util.spec_from_file_location("recipe_reference", REPO / "tools" / "recipe_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_reference_matches_the_schema():
    generator = load_generator()
    committed = (REPO / "docs" / "recipe-reference.md").read_text()
    assert committed == generator.render(REPO / "config" / "schema.yaml"), (
        f"docs/recipe-reference.md is out of date with config/schema.yaml: regenerate it with `{generator.COMMAND}`")


FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`]*`")
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The Markdown without fenced code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation other than - and _ dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", markdown.read_text())):
        slug = anchor(heading)
        out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)   # GitHub numbers repeats: x, x-1, x-2
        seen[slug] = seen.get(slug, 0) + 1
    return out


def broken_links(markdown: Path) -> list[str]:
    problems = []
    for target in LINK.findall(prose(markdown.read_text())):
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):   # https:, mailto: ...
            continue
        path, _, fragment = target.partition("#")
        resolved = (markdown.parent / path).resolve() if path else markdown
        if not resolved.exists():
            problems.append(f"{markdown.relative_to(REPO)}: {target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            problems.append(f"{markdown.relative_to(REPO)}: {target}: no heading #{fragment} in {resolved.name}")
    return problems


def documents() -> list[Path]:
    return [REPO / "README.md", *(REPO / folder / "README.md" for folder in ("bench", "data", "outputs")),
            *sorted((REPO / "docs").glob("*.md"))]


def test_every_relative_link_resolves():
    assert len(documents()) > 3
    problems = [problem for markdown in documents() for problem in broken_links(markdown)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_docs_page_is_in_the_index():
    index = (REPO / "docs" / "README.md").read_text()
    missing = [page.name for page in (REPO / "docs").glob("*.md") if page.name != "README.md" and
               f"]({page.name})" not in index]
    assert not missing, f"docs/README.md does not link: {missing}"


def test_the_anchor_rule():
    assert anchor("Competing: K-fold, ensembles, calibrated probabilities") == \
        "competing-k-fold-ensembles-calibrated-probabilities"
    assert anchor("The test suite's threads (2026-12-02, 00:10 UTC)") == "the-test-suites-threads-2026-12-02-0010-utc"
    assert anchor("What matches fastai 0.7, and where we differ on purpose") == \
        "what-matches-fastai-07-and-where-we-differ-on-purpose"
    assert anchor("`snapshots` and train_bn") == "snapshots-and-train_bn"


def test_the_link_check_finds_what_is_broken(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    (tmp_path / "other.md").write_text("# A heading\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-heading) [ok](other.md#twice-1) [ok](#here) [web](https://example.org/x.md)\n"
                    "`[not a link](missing.md)`\n```\n[nor this](missing.md)\n```\n# Here\n"
                    "[gone](missing.md) [no anchor](other.md#nowhere) [none here](#nowhere)\n")
    assert broken_links(page) == ["page.md: missing.md: no such file",
                                  "page.md: other.md#nowhere: no heading #nowhere in other.md",
                                  "page.md: #nowhere: no heading #nowhere in page.md"]
