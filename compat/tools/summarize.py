#!/usr/bin/env python3
"""Reads the suites' JUnit XML, applies compat/expected-failures.txt, prints the summary.

Why a separate step: the verdict (does this run fail CI?) depends on converge only. A scenario
that fails against converge must be listed in expected-failures.txt with a reason; a listed
scenario that passes must be taken off the list, so the list only ever shrinks as features land.
Failures against the official emulator never fail the run: they are the differential report.

Usage: summarize.py RESULTS_DIR EXPECTED_FAILURES_FILE
Inputs in RESULTS_DIR: <target>-<language>.xml (JUnit) and <target>-<language>.time (seconds).
Writes RESULTS_DIR/summary.json; exits 1 on an unexpected failure or pass, 2 on bad input.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

GATED_TARGET = "converge"
TARGETS = ("converge", "emulator")
LANGUAGES = ("python", "node")


@dataclass
class Suite:
    """The outcome of one language's suite against one target."""

    target: str
    language: str
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # id -> first line of the failure
    skipped: list[str] = field(default_factory=list)
    seconds: float | None = None
    missing: bool = False  # no XML: the suite did not run or crashed before reporting


def case_id(language: str, suite_name: str, case: ET.Element) -> str:
    """A stable id per test: pytest's node id for Python, `node/<describe>::<test>` for Node."""
    name = case.get("name", "?")
    if language == "python":
        module = case.get("classname", "").replace(".", "/")
        return f"python/{module}.py::{name}"
    return f"node/{suite_name}::{name}"


def failure_text(case: ET.Element) -> str | None:
    for tag in ("failure", "error"):
        el = case.find(tag)
        if el is not None:
            text = (el.get("message") or el.text or tag).strip().splitlines()
            return text[0][:200] if text else tag
    return None


def read_suite(results: Path, target: str, language: str) -> Suite | None:
    xml_path = results / f"{target}-{language}.xml"
    time_path = results / f"{target}-{language}.time"
    if not xml_path.exists() and not time_path.exists():
        return None  # this combination was not asked for
    suite = Suite(target, language)
    if time_path.exists():
        suite.seconds = float(time_path.read_text().strip() or 0)
    if not xml_path.exists() or xml_path.stat().st_size == 0:
        suite.missing = True
        return suite
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError:
        suite.missing = True
        return suite
    for ts in root.iter("testsuite"):
        for case in ts.findall("testcase"):
            cid = case_id(language, ts.get("name", "?"), case)
            failure = failure_text(case)
            if failure is not None:
                suite.failed[cid] = failure
            elif case.find("skipped") is not None:
                suite.skipped.append(cid)
            else:
                suite.passed.append(cid)
    return suite


def read_expected(path: Path) -> dict[str, str]:
    """Parses `test id | reason` lines; '#' starts a comment line. A reason is required."""
    expected: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "|" not in line:
            raise SystemExit(f"{path}:{number}: expected 'test id | reason', got: {line}")
        test_id, reason = (part.strip() for part in line.split("|", 1))
        if not test_id or not reason:
            raise SystemExit(f"{path}:{number}: both a test id and a reason are required")
        expected[test_id] = reason
    return expected


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    results, expected_path = Path(sys.argv[1]), Path(sys.argv[2])
    expected = read_expected(expected_path)
    suites = [s for t in TARGETS for lang in LANGUAGES if (s := read_suite(results, t, lang)) is not None]

    print()
    print(f"{'target':<10} {'language':<8} {'passed':>6} {'failed':>6} {'skipped':>7} {'time':>8}")
    for s in suites:
        secs = f"{s.seconds:.1f}s" if s.seconds is not None else "-"
        note = "  (no results: suite crashed)" if s.missing else ""
        print(f"{s.target:<10} {s.language:<8} {len(s.passed):>6} {len(s.failed):>6} {len(s.skipped):>7} {secs:>8}{note}")

    unexpected_failures: dict[str, str] = {}
    unexpected_passes: list[str] = []
    expected_failures: list[str] = []
    seen_ids: set[str] = set()
    gated = [s for s in suites if s.target == GATED_TARGET]
    for s in gated:
        if s.missing:
            unexpected_failures[f"{s.language}/*"] = "the suite produced no results"
        seen_ids.update(s.passed, s.failed, s.skipped)
        for cid, why in s.failed.items():
            if cid in expected:
                expected_failures.append(cid)
            else:
                unexpected_failures[cid] = why
        unexpected_passes.extend(cid for cid in s.passed if cid in expected)
    ran_languages = {s.language for s in gated}
    stale = sorted(
        cid for cid in expected if cid.split("/", 1)[0] in ran_languages and cid not in seen_ids
    )

    emulator_failures = {cid: why for s in suites if s.target == "emulator" for cid, why in s.failed.items()}
    if emulator_failures:
        print(f"\nemulator: {len(emulator_failures)} scenario(s) fail against the official emulator (reported, never fatal):")
        for cid, why in sorted(emulator_failures.items()):
            print(f"  {cid}: {why}")
    if gated:
        print(f"\nconverge: {len(expected_failures)} expected failure(s) listed in {expected_path.name}")
    if unexpected_failures:
        print(f"\nconverge: {len(unexpected_failures)} UNEXPECTED failure(s) (fix, or list with a reason):")
        for cid, why in sorted(unexpected_failures.items()):
            print(f"  {cid}: {why}")
    if unexpected_passes:
        print(f"\nconverge: {len(unexpected_passes)} listed scenario(s) now PASS: remove them from {expected_path.name}:")
        for cid in sorted(unexpected_passes):
            print(f"  {cid}")
    if stale:
        print(f"\nwarning: {len(stale)} listed id(s) matched no test (renamed?):")
        for cid in stale:
            print(f"  {cid}")

    summary = {
        "suites": [
            {**asdict(s), "counts": {"passed": len(s.passed), "failed": len(s.failed), "skipped": len(s.skipped)}}
            for s in suites
        ],
        "converge": {
            "expected_failures": sorted(expected_failures),
            "unexpected_failures": unexpected_failures,
            "unexpected_passes": sorted(unexpected_passes),
            "stale_expectations": stale,
        },
        "emulator_failures": emulator_failures,
    }
    (results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    # The closing line counts what gates the run: converge passes, unexpected outcomes as
    # failures, and expected failures and skips as skipped.
    if not gated:
        return 0  # emulator only: a report, never a verdict
    passed = sum(len(s.passed) for s in gated) - len(unexpected_passes)
    failed = len(unexpected_failures) + len(unexpected_passes)
    skipped = len(expected_failures) + sum(len(s.skipped) for s in gated)
    print(f"\ncompat: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
