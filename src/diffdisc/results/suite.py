"""A `diffdisc suite` directory read back: one table, a column per model, a row per (task, metric) with its 95 %
interval, the chance level and the U-Net calls per item; skipped tasks with the path their data was expected at.
The Markdown is what docs/results.md prints; the report's suite section shows the same rows."""

from __future__ import annotations

from pathlib import Path

from ..errors import DiffdiscError
from .base import Result

TABLE = "suite_table.json"  # written by tasks.suite.run_suite


def points(m: dict | None) -> str:
    """'62.5 [50.0, 75.0]' (percent, 95 % interval), or '–'."""
    if not m or m.get("mean") is None or m["mean"] != m["mean"]:
        return "–"
    ci = m.get("ci95") or []
    text = f"{100 * m['mean']:.1f}"
    if len(ci) == 2 and all(x == x for x in ci):
        text += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return text


def calls_text(cell: dict, kind: str) -> str:
    if cell.get("status") != "done":
        return "–"
    c = cell.get("calls_per_item", 0)
    return "1 pass" if not c and kind == "contrastive" else f"{c:,.0f}"


class SuiteResult(Result):
    marker = TABLE
    depth = 0

    def __init__(self, table: dict, path: Path):
        self.path, self.table, self.problems = Path(path), table, []
        if not isinstance(table.get("tasks"), list) or not isinstance(table.get("models"), list):
            raise DiffdiscError(f"{self.path / TABLE} has no tasks / models lists")
        self.models = [m for m in table["models"] if isinstance(m, dict)]
        self.tasks = [t for t in table["tasks"] if isinstance(t, dict)]

    @classmethod
    def load(cls, run_dir: str | Path) -> SuiteResult:
        run_dir = Path(run_dir)
        return cls(cls.marker_object(run_dir, "suite"), run_dir)

    def metrics(self) -> dict:
        return {t["task"]: {label: c.get("metrics") for label, c in t.get("cells", {}).items()}
                for t in self.tasks if t.get("status") == "done"}  # fmt: skip

    @property
    def labels(self) -> list[str]:
        return [str(m.get("label")) for m in self.models]

    def rows(self) -> list[dict]:
        """Table rows: {task, metric, n, chance, scores: [per model], calls: [per model], first} for finished
        tasks (first: the task's first row, where n and calls are shown)."""
        out = []
        kinds = {str(m.get("label")): str(m.get("kind", "")) for m in self.models}
        for t in self.tasks:
            if t.get("status") != "done":
                continue
            cells = t.get("cells", {})
            names = list(t.get("rows") or [])
            extra = [k for c in cells.values() for k in (c.get("metrics") or {}) if k not in names]
            for i, metric in enumerate(names + sorted(set(extra), key=extra.index)):
                chance = next((c.get("chance", {}).get(metric) for c in cells.values() if c.get("chance", {}).get(metric)), None)
                values = []
                for label in self.labels:
                    c = cells.get(label, {})
                    if c.get("status") == "done":
                        values.append(points((c.get("metrics") or {}).get(metric)))
                    else:
                        values.append(str(c.get("status", "–")))
                out.append({"task": t["task"], "metric": metric, "n": t.get("n", ""), "first": i == 0,
                            "chance": f"{100 * chance:.1f}" if chance else "–", "scores": values,
                            "calls": [calls_text(cells.get(lb, {}), kinds[lb]) for lb in self.labels],
                            "notes": [f"{lb}: {c.get('status')}: {c.get('reason')}" for lb, c in cells.items()
                                      if c.get("status") in ("n/a", "error")] if i == 0 else []})  # fmt: skip
        return out

    @property
    def skipped(self) -> list[dict]:
        return [t for t in self.tasks if t.get("status") == "skipped"]

    @property
    def errors(self) -> list[dict]:
        """Tasks that failed, and (task, model) cells that failed: what the CLI's exit status reports."""
        out = [{"task": t["task"], "reason": t.get("reason")} for t in self.tasks if t.get("status") == "error"]
        out += [{"task": f"{t['task']} / {lb}", "reason": c.get("reason")} for t in self.tasks
                for lb, c in t.get("cells", {}).items() if c.get("status") == "error"]  # fmt: skip
        return out

    def markdown(self) -> str:
        """The table as docs/results.md prints it (generated, never edited by hand)."""
        s = self.table.get("settings", {})
        models = "; ".join(f"`{m.get('label')}` ({m.get('kind')}, {str(m.get('fingerprint', ''))[:8]})" for m in self.models)
        head = [f"Suite `{self.table.get('suite')}`, generated {self.table.get('generated', '?')}; models: {models}; "
                f"{s.get('timesteps')} timesteps per candidate (diffusion), noise seed {s.get('seed')}"
                + (f", at most {s['limit']} items per task" if s.get("limit") else "") + "."]  # fmt: skip
        if self.table.get("command"):
            head.append(f"Command: `{self.table['command']}`")
        head.append("Values in percent with 95 % bootstrap intervals; calls = U-Net calls per item (image or group).")
        cols = ["task", "metric", "n", "chance", *self.labels, *(f"calls/item: {lb}" for lb in self.labels)]
        lines = [*head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in self.rows():
            cells = [f"`{r['task']}`" if r["first"] else "", r["metric"], str(r["n"]) if r["first"] else "", r["chance"],
                     *r["scores"], *(r["calls"] if r["first"] else [""] * len(r["calls"]))]  # fmt: skip
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        notes = [n for r in self.rows() for n in r["notes"]]
        if notes:
            lines += ["", "Not run: " + "; ".join(_cell(n) for n in notes) + "."]
        if self.skipped:
            lines += ["", "Skipped (nothing is downloaded; put the data at the expected path):", ""]
            lines += [f"- `{t['task']}`: {_cell(t.get('reason', ''))}" for t in self.skipped]
        if self.errors:
            lines += ["", "Errors:", ""] + [f"- `{e['task']}`: {_cell(e['reason'] or '')}" for e in self.errors]
        return "\n".join(lines) + "\n"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
