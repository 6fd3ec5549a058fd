"""A fixed-seed sample of the fuzzing run (bench/fuzz.py runs 10^5 inputs per surface):
every surface takes its corpus and mutants with no unhandled exception, no traceback in the
log, and leaves no call, port, socket, stream, push, recording or viewer behind."""
import os

import pytest

from mutate import run
from surfaces import SURFACES

EXAMPLES = int(os.environ.get("SIPGW_FUZZ_EXAMPLES", "500"))


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_fuzzed_inputs_raise_only_documented_errors_and_leak_nothing(name):
    """0 crashes and 0 leaks on a fixed-seed sample of mutants of the surface's corpus."""
    result = run(SURFACES[name](), EXAMPLES, seed=1)
    crashes = "\n\n".join(f"input {data[:200]!r}:\n{trace}" for data, trace in result.crashes[:3])
    assert not result.crashes, f"{len(result.crashes)} crashes, the first:\n{crashes}"
    assert not result.leaks, result.leaks
    assert result.inputs == EXAMPLES
