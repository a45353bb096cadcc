"""docs/agents.md is what scripts/agents_doc.py writes, and every test it cites exists."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.e2e.agent_readiness import COLUMNS

from .conftest import ROOT


def test_the_agents_doc_is_current():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "agents_doc.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_claim_names_a_test_that_exists():
    source = (ROOT / "tests" / "e2e" / "test_agent_sessions.py").read_text()
    defined = set(re.findall(r"^def (test_\w+)\(", source, re.M))
    cited = {test for _, test, _, _ in COLUMNS.values()}
    assert cited <= defined, cited - defined
