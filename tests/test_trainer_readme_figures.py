"""The demo tables quoted in README.md and trainer/README.md are the table ``python -m trainer --demo`` prints.

The values need the five-minute demo run; what is checked here is the format: the same header and alignment row as
:func:`trainer.report.scores_table` writes for the demo (L1, SWD, NLL excess, L1 relative to DPM-Solver++(3M)), the
same rows in the same order (GS, GAS, then the baselines of :data:`trainer.baselines.BASELINES`), the demo's NFE,
and every number written as the table writes it (4 significant digits, the ratio with 3 decimals). Each quoted table
must also say which command printed it, with how many threads, on which machine and torch version.
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO_ROOT
from trainer.baselines import BASELINES
from trainer.config import DEFAULT_RECIPE, RECIPES, DistillConfig
from trainer.demo import DEMO_DEFAULTS
from trainer.report import BASELINE_REFERENCE, scores_table

DEMO_NFE = DistillConfig().nfe
DEMO_ROWS = ["GS", "GAS", *BASELINES]


def demo_table_format() -> tuple[str, str]:
    """Header and alignment lines of the demo's table (from the table function itself, on placeholder numbers)."""
    methods = {name: {"l1": 1.0, "swd": 1.0, "nll": 1.0} for name in DEMO_ROWS}
    lines = scores_table(methods, DEMO_NFE).splitlines()
    return lines[0], lines[1]


#: Where each README quotes the demo's table.
SECTIONS = {"trainer/README.md": "## The demo", "README.md": "## Results"}


def quoted_demo_table(name: str) -> tuple[list[str], str]:
    """The demo table a README quotes (its lines) and the text of its section before the table."""
    text = (REPO_ROOT / name).read_text()
    start = SECTIONS[name]
    section = text[text.index(start):]
    section = section[:section.index("\n## ", len(start))]
    lines = section.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("| method |")), None)
    assert first is not None, f"{name}: no table starting '| method |' in its {start!r} section"
    count = next((j for j, line in enumerate(lines[first:]) if not line.startswith("|")), len(lines) - first)
    return lines[first:first + count], "\n".join(lines[:first])


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_quoted_demo_table_has_the_printed_format(name):
    table, _ = quoted_demo_table(name)
    header, align = demo_table_format()
    assert table[0] == header and table[1] == align, "the header differs from what the demo prints"
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in table[2:]]
    assert [row[0] for row in cells] == DEMO_ROWS
    for row in cells:
        assert len(row) == header.count("|") - 1, row
        assert row[1] == str(DEMO_NFE), row
        for value in row[2:-1]:
            assert f"{float(value):.4g}" == value, f"{row[0]}: {value} is not written as the table writes it"
        assert f"{float(row[-1]):.3f}" == row[-1], row
    ref = next(row for row in cells if row[0] == BASELINE_REFERENCE)
    assert ref[-1] == "1.000"


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_quoted_demo_table_names_its_command_threads_and_machine(name):
    _, before = quoted_demo_table(name)
    context = before[-900:]
    assert "python -m trainer --demo" in context
    assert re.search(r"OMP_NUM_THREADS=\d", context), "the command must fix its thread count"
    assert "2-core CPU" in context and "torch 2.14.1" in context


def test_the_demo_is_what_the_tables_describe():
    """The demo's settings quoted around the tables (NFE 4, the default recipe's 1800 iterations, 512 held-out
    seeds)."""
    assert DEMO_NFE == 4 and "iters" not in DEMO_DEFAULTS and DEMO_DEFAULTS["val_size"] == 512
    assert RECIPES[DEFAULT_RECIPE]["iters"] == 1800
