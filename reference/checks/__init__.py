"""The checking tools: lockstep verification of a candidate against the reference (verify.py), the
classic bugs as mutants of the reference (mutants.py), `--candidate` specs (candidates.py) and the
pytest conformance suite (conformance/). They use the core; the core never uses them."""
