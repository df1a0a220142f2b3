"""Compares a run of ComfyUI's execution suite (pytest's JUnit XML) with EXPECTED.md.

Usage: compare.py JUNIT_XML EXPECTED_MD

EXPECTED.md lists the tests known to fail against comfyrs, one per line as
    - `tests/execution/FILE.py::Class::test[param]`: reason
(anything else in the file is prose and ignored). A line whose id ends in `*` matches every test
id that starts with the rest, for a whole parametrised family.

Prints pass/fail counts per file, then every difference from the list, and exits 1 when a test
not listed fails (a regression) or a listed test passes (the list must be updated), else 0.
Skipped tests (e.g. test_preview_method.py, which needs a server with models on port 8988) count
neither way.
"""

import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict

LINE = re.compile(r"^\s*[-*]\s+`(tests/[^`]+)`")


def expected(path):
    exact, prefixes = set(), []
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            tid = m.group(1)
            if tid.endswith("*"):
                prefixes.append(tid[:-1])
            else:
                exact.add(tid)
    return exact, prefixes


def results(path):
    """{test id: "passed" | "failed" | "skipped"}; an error in set-up or tear-down is a failure."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        cls, name = case.get("classname", ""), case.get("name", "")
        # JUnit writes "tests.execution.test_x.Class"; pytest ids are "tests/execution/test_x.py::Class".
        parts = cls.split(".")
        mod = next((i for i, p in enumerate(parts) if p.startswith("test_")), len(parts) - 1)
        tid = "/".join(parts[: mod + 1]) + ".py"
        if parts[mod + 1:]:
            tid += "::" + "::".join(parts[mod + 1:])
        tid += "::" + name
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            state = "failed"
        elif "skipped" in kinds:
            state = out.get(tid, "skipped")
        else:
            state = out.get(tid, "passed")
        # A test whose teardown errors appears twice: keep the worst.
        if out.get(tid) != "failed":
            out[tid] = state
    return out


def main():
    junit, md = sys.argv[1], sys.argv[2]
    exact, prefixes = expected(md)
    listed = lambda t: t in exact or any(t.startswith(p) for p in prefixes)  # noqa: E731
    res = results(junit)

    per_file = defaultdict(Counter)
    for tid, state in res.items():
        per_file[tid.split("::")[0]][state] += 1
    print("\nComfyUI execution suite against comfyrs:")
    for f in sorted(per_file):
        c = per_file[f]
        print(f"  {f}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped")
    total = Counter(s for s in res.values())
    print(f"  total: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")

    new_fail = sorted(t for t, s in res.items() if s == "failed" and not listed(t))
    now_pass = sorted(t for t, s in res.items() if s == "passed" and t in exact)
    # A family listed by prefix is stale when none of its members fail any more.
    stale = [p + "*" for p in prefixes
             if any(t.startswith(p) for t in res)
             and not any(t.startswith(p) and res[t] == "failed" for t in res)]
    missing = sorted(t for t in exact if t not in res)

    if missing:
        print(f"\nNote: {len(missing)} listed tests did not run in this run (deselected or renamed):")
        for t in missing:
            print("  ", t)
    if new_fail:
        print(f"\nREGRESSION: {len(new_fail)} tests failed that tests/comfyui-suite/EXPECTED.md does not list:")
        for t in new_fail:
            print("  ", t)
    if now_pass or stale:
        print(f"\nNOW PASSING: {len(now_pass) + len(stale)} listed entries passed; remove them from EXPECTED.md:")
        for t in now_pass + stale:
            print("  ", t)
    if new_fail or now_pass or stale:
        return 1
    print("\nEvery failure is a known one listed in tests/comfyui-suite/EXPECTED.md.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
