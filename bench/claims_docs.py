"""Regenerate docs/results.md's claims summary from a `diffdisc claims` directory (never edited by hand).

    .venv/bin/python bench/claims_docs.py runs/claims-quick [--doc docs/results.md] [--command "diffdisc claims ..."]

Replaces the text between `<!-- claims:begin -->` and `<!-- claims:end -->` with the table of
`ClaimsResult.markdown()` and the command that made it.
"""

import argparse
from pathlib import Path

from diffdisc.results.claims import ClaimsResult

BEGIN, END = "<!-- claims:begin -->", "<!-- claims:end -->"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--doc", type=Path, default=Path("docs/results.md"))
    p.add_argument("--command", default=None, help="the command that made RUN, printed above the table")
    a = p.parse_args()
    text = a.doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{a.doc} has no {BEGIN} ... {END} section")
    r = ClaimsResult.load(a.run)
    body = (f"\n    {a.command}\n\n" if a.command else "\n") + r.markdown()
    head, rest = text.split(BEGIN, 1)
    a.doc.write_text(head + BEGIN + "\n" + body + END + rest.split(END, 1)[1])
    print(f"{a.doc}: claims section from {a.run} ({len(r.rows)} claims, size {r.size})")


if __name__ == "__main__":
    main()
