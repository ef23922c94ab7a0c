"""A minimal JUnit XML writer (the schema CI systems read: testsuites/testsuite/testcase with
failure and skipped children), built with ElementTree so every string is escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from dp_audit.safetext import xml_text


@dataclass(frozen=True)
class TestCase:
    __test__ = False  # not a pytest class

    classname: str
    name: str
    failure: str | None = None
    skipped: str | None = None


def render(suite: str, cases: list[TestCase]) -> str:
    failures = sum(c.failure is not None for c in cases)
    skipped = sum(c.skipped is not None for c in cases)
    root = ET.Element("testsuites", name=suite, tests=str(len(cases)), failures=str(failures))
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cases)), failures=str(failures),
                       errors="0", skipped=str(skipped))
    for c in cases:  # names and messages hold untrusted text: no character XML cannot carry
        tc = ET.SubElement(ts, "testcase", classname=xml_text(c.classname), name=xml_text(c.name), time="0")
        if c.failure is not None:
            ET.SubElement(tc, "failure", message=xml_text(c.failure.splitlines()[0][:500] if c.failure else ""),
                          type="PrivacyClaimRefuted").text = xml_text(c.failure)
        if c.skipped is not None:
            ET.SubElement(tc, "skipped", message=xml_text(c.skipped))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
