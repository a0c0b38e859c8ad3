"""docs/RELIABILITY.md names real tests: every `tests/<file>::<test>` it cites exists."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_cited_test_exists():
    with open(os.path.join(REPO, "docs", "RELIABILITY.md")) as f:
        doc = f.read()
    cited = set(re.findall(r"`(test_\w+\.py)::(test_\w+)", doc))
    assert len(cited) >= 30, sorted(cited)
    missing = []
    for file, name in sorted(cited):
        with open(os.path.join(REPO, "tests", file)) as f:
            if not re.search(rf"^def {name}\(", f.read(), re.MULTILINE):
                missing.append(f"{file}::{name}")
    assert not missing, f"docs/RELIABILITY.md cites tests that do not exist: {missing}"
