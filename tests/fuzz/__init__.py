"""Property-based fuzzing of what Ursa parses from the network.

``targets`` holds the properties (a hypothesis strategy and a check per
target); ``tests/unit/fuzz`` runs each briefly and deterministically in
CI, ``tools/fuzz`` (``runner``) runs them for as long as asked.
"""
