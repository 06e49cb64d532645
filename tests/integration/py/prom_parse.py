"""Parses Prometheus text exposition format (stdin) with prometheus_client's own parser and
prints the families as JSON: {name: {"type": ..., "samples": [[name, labels, value], ...]}}.
Exits non-zero (with the parser's message) when the text does not parse."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

text = sys.stdin.read()
out = {}
try:
    for fam in text_string_to_metric_families(text):
        if fam.name in out:
            raise ValueError(f"family {fam.name} appears twice")
        out[fam.name] = {
            "type": fam.type,
            "help": fam.documentation,
            "samples": [[s.name, s.labels, s.value] for s in fam.samples],
        }
except Exception as e:  # the parser raises ValueError and friends on bad input
    print(f"prometheus_client could not parse the text: {e!r}", file=sys.stderr)
    sys.exit(1)
json.dump(out, sys.stdout)
