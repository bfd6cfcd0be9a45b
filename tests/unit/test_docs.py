"""The documentation in the repository stays usable from a clone: every relative link points to a
file that exists (and to a heading that exists, when it names one), the README links nowhere
outside the repository, and the architecture's topic table is the topology's."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from shared import topology

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted(
    [
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
        ROOT / "CHANGELOG.md",
        *ROOT.glob("docs/**/*.md"),
    ]
)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
BEGIN, END = "<!-- topics: python -m shared.topology -->\n", "<!-- /topics -->"


def prose(text: str) -> str:
    """The text without code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path.read_text(encoding="utf-8")))


def is_relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8")))}


def broken_links(doc: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of `doc` that names no file (or heading) inside `root`, and why."""
    broken = []
    for target in links(doc):
        if not is_relative(target):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (doc.parent / unquote(file_part)).resolve() if file_part else doc
        if not resolved.is_relative_to(root):
            broken.append(f"{target}: outside the repository")
        elif not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no such heading")
    return broken


def test_the_documents_exist():
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "CONTRIBUTING.md", "docs/architecture.md", "docs/wire-formats.md"} <= names
    assert any(n.startswith("docs/adr/0001-") for n in names)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc: Path):
    assert not broken_links(doc), f"{doc.relative_to(ROOT)}: {broken_links(doc)}"


def test_the_link_check_can_fail(tmp_path: Path):
    (tmp_path / "there.md").write_text("# A heading, with `code`\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "[ok](there.md#a-heading-with-code) [gone](missing.md) [no heading](there.md#nope)\n"
        "[out](../elsewhere.md) [web](https://example.com/x.md) `[span](span.md)`\n"
        "```\n[fenced](fenced.md)\n```\n"
    )
    assert broken_links(doc, root=tmp_path) == [
        "missing.md: no such file",
        "there.md#nope: no such heading",
        "../elsewhere.md: outside the repository",
    ]


def test_the_readme_links_only_inside_the_repository():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "../shared" not in readme
    outside = [t for t in links(ROOT / "README.md") if is_relative(t) and t.startswith("..")]
    assert not outside


def test_the_architecture_topic_table_is_the_topology_s():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "docs/architecture.md lost its generated topic table"
    table = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert table == topology.markdown_table(), (
        "run `python -m shared.topology` into docs/architecture.md"
    )


COMMAND = re.compile(r"tasleem ([a-z]+)(?: ([a-z][a-z-]*))?")


def test_the_commands_the_documents_name_exist():
    """`tasleem stock import`, `tasleem up`, … as the README and CONTRIBUTING spell them: each
    group and command is one the `tasleem` command has."""
    import typer.main

    from deploy.cli import app

    root = typer.main.get_command(app)
    named = {
        m for doc in ("README.md", "CONTRIBUTING.md", "docs/architecture.md")
        for m in COMMAND.findall((ROOT / doc).read_text(encoding="utf-8"))
    }  # fmt: skip
    missing = []
    for group, command in sorted(named):
        found = root.commands.get(group)  # type: ignore[attr-defined]
        if found is None:
            missing.append(group)
        elif command and hasattr(found, "commands") and command not in found.commands:
            missing.append(f"{group} {command}")
    assert not missing, f"named in the docs, not a command: {missing}"
