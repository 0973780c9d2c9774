"""The package carries the exporter's version: VERSION at the repository's root, the
[project] version of pyproject.toml and dbpool_stats.__version__ are one and the same."""

import os
import re
import unittest

import dbpool_stats

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # integrations/python
ROOT = os.path.dirname(os.path.dirname(PACKAGE))


def pyproject_version():
    with open(os.path.join(PACKAGE, "pyproject.toml"), "rb") as f:
        data = f.read()
    try:
        import tomllib  # Python 3.11+
    except ImportError:
        # Older Pythons: the version line of the [project] table.
        table = re.search(rb"^\[project\]\n(.*?)(?=^\[|\Z)", data, re.M | re.S)
        m = table and re.search(rb'^version\s*=\s*"([^"]+)"', table.group(1), re.M)
        if not m:
            raise AssertionError("pyproject.toml: no version in [project]")
        return m.group(1).decode()
    return tomllib.loads(data.decode())["project"]["version"]


class VersionTest(unittest.TestCase):
    def test_one_version(self):
        with open(os.path.join(ROOT, "VERSION")) as f:
            want = f.read().strip()
        self.assertRegex(want, r"^\d+\.\d+\.\d+$")
        self.assertEqual(pyproject_version(), want, "pyproject.toml's version is not VERSION's")
        self.assertEqual(dbpool_stats.__version__, want, "dbpool_stats.__version__ is not VERSION's")


if __name__ == "__main__":
    unittest.main()
