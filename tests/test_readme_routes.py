"""The README's route index lists every operation the server serves, each with its summary.

The index is generated from the same OpenAPI document the server serves (the handlers'
docstrings and models), so it cannot drift from the code: this test fails when a route is
added, removed or re-described without regenerating it. Regenerate with
`python -m tests.test_readme_routes > /tmp/index.md` and paste it under "## Route index".
"""
from __future__ import annotations

import re
from pathlib import Path

from handlers.docs import build_openapi
from handlers.routes import all_routes

README = Path(__file__).resolve().parent.parent / "README.md"
METHODS = ("get", "post", "put", "patch", "delete")


def route_index() -> str:
    doc = build_openapi(all_routes(None))
    groups: dict[str, list[str]] = {}
    for path, ops in doc["paths"].items():
        for method in METHODS:
            op = ops.get(method)
            if op is None:
                continue
            tag = (op.get("tags") or ["other"])[0]
            summary = " ".join((op.get("summary") or "").split()).replace("|", "\\|")
            groups.setdefault(tag, []).append(f"| `{method.upper()} {path}` | {summary} |")
    out = []
    for tag, rows in groups.items():
        out += [f"**{tag}**", "", "| Operation | What it does |", "|---|---|", *rows, ""]
    return "\n".join(out).rstrip() + "\n"


def readme_index() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Route index\n(.*?)^<!-- end of route index -->", text, re.S | re.M)
    assert m, "README.md has no '## Route index' section ending with '<!-- end of route index -->'"
    body = m.group(1)
    start = body.index("**")  # the generated part starts at the first group's title
    return body[start:]


def test_the_readme_route_index_is_the_served_route_table():
    expected, found = route_index(), readme_index()
    missing = sorted(set(expected.splitlines()) - set(found.splitlines()))
    stale = sorted(set(found.splitlines()) - set(expected.splitlines()))
    assert not missing and not stale, (
        "README route index out of date (regenerate: python -m tests.test_readme_routes)\n"
        f"missing: {missing[:10]}\nstale: {stale[:10]}")


if __name__ == "__main__":
    print(route_index(), end="")
