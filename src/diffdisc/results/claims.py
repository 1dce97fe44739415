"""A `diffdisc claims` directory read back: the claims table (claim, paper's figure, ours with its 95 % interval,
verdict), as the report shows it and as docs/results.md prints it."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DiffdiscError
from .base import DictResult

TABLE = "claims_table.json"  # written by tasks.claims.run_claims
VERDICTS = ("holds", "does not hold", "inconclusive")


def fmt_value(row: dict) -> str:
    """'+3.5 [−1.0, 8.0]' (points), or '–' when the stage could not measure it."""
    v, ci = row.get("value"), row.get("ci")
    if v is None or v != v:
        return "–"
    text = f"{v:+.1f}"
    if ci and all(x == x for x in ci):
        text += f" [{ci[0]:+.1f}, {ci[1]:+.1f}]"
    return text


class ClaimsResult(DictResult):
    """The claims table; `run_claims` returns it, and it is also that table as a dict (claims_table.json's keys)."""

    marker = TABLE
    depth = 0

    def __init__(self, table: dict, path: Path):
        super().__init__(table, path)
        rows = table.get("claims")
        if not isinstance(rows, list):
            raise DiffdiscError(f"{path / TABLE} has no claims list")
        self.rows = [r for r in rows if isinstance(r, dict)]
        for r in self.rows:
            if r.get("verdict") not in VERDICTS:
                self.problems.append(f"claim {r.get('id')!r} has no verdict")

    @classmethod
    def load(cls, run_dir: str | Path) -> ClaimsResult:
        run_dir = Path(run_dir)
        return cls(cls.marker_object(run_dir, "claims"), run_dir)

    @property
    def table(self) -> dict:
        return self

    @property
    def size(self) -> str:
        return str(self.table.get("size", "?"))

    def metrics(self) -> dict:
        return {r["id"]: {"value": r.get("value"), "ci95": r.get("ci"), "verdict": r.get("verdict")} for r in self.rows}

    def robustness_points(self) -> list[dict]:
        """(model, shift, clean, shifted) points of the effective-robustness stage, if it ran."""
        for r in self.rows:
            if r.get("id") == "effective_robustness":
                return list(r.get("details", {}).get("points", []))
        return []

    def markdown(self) -> str:
        """The table as docs/results.md prints it (generated, never edited by hand)."""
        models = self.table.get("models", {})
        lines = [f"Size `{self.size}`, seed {self.table.get('seed', 0)}, generated {self.table.get('generated', '?')}; "
                 "models: " + ", ".join(f"{k} `{v.get('name')}` ({str(v.get('fingerprint', ''))[:8]})"
                                        for k, v in models.items()) + ".",  # fmt: skip
                 *(["Knobs changed from the size's: " + "; ".join(f"{st} {json.dumps(k)}" for st, k in self.table["knobs"].items())
                    + ".", ""] if self.table.get("knobs") else [""]),  # fmt: skip
                 "| claim | source | paper's figure | ours: metric | ours: difference [95 % CI] | n | verdict |",
                 "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in self.rows:
            cells = [f"`{r['id']}`: {r.get('claim', '')}", r.get("source", ""), r.get("paper", ""), r.get("metric", ""),
                     fmt_value(r), str(r.get("n", "")), f"**{r.get('verdict')}**" + (f" ({r['note']})" if r.get("note") else "")]  # fmt: skip
            lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        return "\n".join(lines) + "\n"
