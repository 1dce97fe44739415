"""HTML pages for run directories: `load` (run dirs -> dataclasses), `stats`, `figures`, `html` (the page),
`simple` (the demo's one-screen page); templates ship in `templates/`."""
