"""The documentation against the code: every JSON answer example in README.md and docs/*.md is
checked against a real answer of the handler (keys, nesting, value types; not the exact floats),
README.md stays a short front door, and every relative link points at a file (and heading) that exists.

An answer example is a ```json block right after a marker line:

    <!-- answer-example: NAME -->            the block is the whole answer NAME
    <!-- answer-example: NAME path=KEY -->   the block is answer NAME's value at KEY (dotted)

NAME is one of ``REAL_ANSWERS`` below. A ```json block without a marker fails the test: mark it, or
show it as another kind of block if it is not an answer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import ROOT
from test_handler import FakeContext, handler, model_dir  # noqa: F401  (module fixtures, reused)

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250
MARKER = re.compile(r"<!--\s*answer-example:\s*(?P<name>[\w-]+)(?:\s+path=(?P<path>[\w.]+))?\s*-->")
FENCE = re.compile(r"^(```|~~~)")
# dicts whose keys are data, not schema (a file's tags, the kind head's classes): only their type is checked
FREE_FORM = {"tags", "probabilities", "text", "exif", "xmp"}
# strings compared exactly: what the example claims, not a measurement
EXACT = {"media", "label", "error", "declared", "rule", "container", "validation", "action"}
# keys a real answer may have that an example may leave out: `kind` depends on the weights (a kind
# head), and is shown by its own example
OPTIONAL = {"kind"}


# ---------------------------------------------------------------- reading the markdown


def json_examples(path: Path) -> list[tuple[str | None, str | None, int, str]]:
    """(name, path, line, text) of every ```json block in the file; name None when unmarked."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].strip().startswith("```json"):
            start = i
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            marker = MARKER.search(lines[k]) if k >= 0 else None
            found.append((marker["name"] if marker else None, marker["path"] if marker else None, start + 1,
                          "\n".join(lines[start + 1 : j])))
            i = j + 1
        else:
            i += 1
    return found


def all_examples() -> list[tuple[Path, str | None, str | None, int, str]]:
    return [(path, *example) for path in DOCS for example in json_examples(path)]


def without_code(text: str) -> str:
    """The markdown without its fenced code blocks and inline code (links there are not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            base = slug(m[1])
            n = seen.get(base, 0)
            seen[base] = n + 1
            result.add(base if n == 0 else f"{base}-{n}")
    return result


def links(path: Path) -> list[str]:
    return re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", without_code(path.read_text(encoding="utf-8")))


# ---------------------------------------------------------------- comparing structure


def kind_of(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    raise TypeError(type(value))


def structure_differences(example, real, where: str = "$") -> list[str]:
    """Where the example's keys, nesting or value types differ from the real answer's."""
    key = where.rsplit(".", 1)[-1].split("[", 1)[0]
    if kind_of(example) != kind_of(real):
        return [f"{where}: the example has {kind_of(example)}, the real answer {kind_of(real)}"]
    if isinstance(example, str) and key in EXACT and example != real:
        return [f"{where}: the example says {example!r}, the real answer {real!r}"]
    problems = []
    if isinstance(example, dict) and key not in FREE_FORM:
        for missing in sorted(set(real) - set(example) - OPTIONAL):
            problems.append(f"{where}.{missing}: in the real answer, not in the example")
        for extra in sorted(set(example) - set(real)):
            problems.append(f"{where}.{extra}: in the example, not in the real answer")
        for name in sorted(set(example) & set(real)):
            problems += structure_differences(example[name], real[name], f"{where}.{name}")
    elif isinstance(example, list):
        if real and not example:
            problems.append(f"{where}: the example's list is empty, the real answer's is not")
        for i, (a, b) in enumerate(zip(example, real)):
            problems += structure_differences(a, b, f"{where}[{i}]")
    return problems


def test_structure_differences_catch_keys_types_and_claims():
    real = {"label": "fake", "p": 0.9, "face": {"box": [1.0, 2.0], "score": 0.9}, "faces": [], "kind": {}}
    assert structure_differences({"label": "fake", "p": 0.1, "face": {"box": [3.0, 4.0], "score": 1}, "faces": []}, real) == []
    assert structure_differences({"label": "real", "p": 0.9, "face": None, "faces": [], "extra": 1}, real) == [
        "$.extra: in the example, not in the real answer",
        "$.face: the example has null, the real answer object",
        "$.label: the example says 'real', the real answer 'fake'",
    ]
    assert structure_differences({"label": "fake", "face": {"box": ["x"], "score": 1}, "faces": []}, real) == [
        "$.p: in the real answer, not in the example",
        "$.face.box[0]: the example has string, the real answer number",
    ]


# ---------------------------------------------------------------- real answers


@pytest.fixture(scope="module")
def real_answers(handler, model_dir):  # noqa: F811
    from provenance_files import c2pa_signed
    from video_clips import mixed_clip

    fake = (ROOT / "examples/fake/00MZYXAT77.jpg").read_bytes()
    clip, _ = mixed_clip("mp4")
    image, video, signed, refused = handler.handle(
        [{"body": fake}, {"body": clip}, {"body": c2pa_signed(fake)}, {"body": b"not an image"}], FakeContext(model_dir, {}))
    assert "kind" in image  # the default weights have the kind head, and this example is a fake verdict
    return {"image": image, "video": video, "image-c2pa": signed, "error": refused, "image-kind": image}


# ---------------------------------------------------------------- the tests


EXAMPLES = all_examples()


def test_every_json_block_is_a_marked_answer_example():
    unmarked = [f"{path.relative_to(ROOT)}:{line}" for path, name, _, line, _ in EXAMPLES if name is None]
    assert not unmarked, f"```json blocks without an answer-example marker: {unmarked}"
    assert any(path.name == "README.md" for path, *_ in EXAMPLES), "README.md shows no answer example"


@pytest.mark.parametrize("path, name, at, line, text", EXAMPLES,
                         ids=[f"{p.relative_to(ROOT)}:{line}-{name}" for p, name, _, line, _ in EXAMPLES])
def test_answer_example_has_the_real_answers_structure(real_answers, path, name, at, line, text):
    assert name in real_answers, f"{path.name}:{line}: unknown answer example {name!r}; known: {sorted(real_answers)}"
    try:
        example = json.loads(text)
    except json.JSONDecodeError as error:
        pytest.fail(f"{path.name}:{line}: the {name!r} example is not valid JSON: {error}")
    real = real_answers[name]
    for key in at.split(".") if at else []:
        assert key in real, f"{path.name}:{line}: the real {name!r} answer has no {at!r}"
        real = real[key]
    problems = structure_differences(example, real, f"${'.' + at if at else ''}")
    assert not problems, f"{path.name}:{line}: the {name!r} example is stale:\n" + "\n".join(problems)


def test_readme_is_a_short_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"
    assert "## How well it detects" in lines


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_relative_links_point_at_existing_files_and_headings(path):
    broken = []
    for target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no such heading in {resolved.relative_to(ROOT)})")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {broken}"
