"""`make test` runs the tests marked serial from the files its SERIAL variable names, without collecting the rest of
the suite again: a serial test in another file would never run in CI."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_file_with_serial_tests_is_in_the_makefiles_serial_list():
    listed = set(re.search(r"^SERIAL := (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1).split())
    marked = {str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("test_*.py")
              if re.search(r"pytest\.mark\.serial\b", path.read_text(encoding="utf-8"))}
    assert marked and marked <= listed, f"add to SERIAL in the Makefile: {sorted(marked - listed)}"
    assert all((ROOT / name).is_file() for name in listed)
