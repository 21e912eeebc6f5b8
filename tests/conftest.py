import hashlib
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))



@pytest.fixture(scope="session")
def pinned_knative_release(tmp_path_factory) -> Path:
    """The Knative release from ../shared with every image pinned by a (made-up, stable) digest, as the upstream
    release pins them; the copy in ../shared refers to its images by tag."""
    from schemas import KNATIVE_MANIFESTS

    def pin(match: re.Match) -> str:
        digest = hashlib.sha256(match["image"].encode()).hexdigest()
        return f"{match['key']}{match['image'].rsplit(':', 1)[0]}@sha256:{digest}{match['quote']}"

    directory = tmp_path_factory.mktemp("knative-release")
    for manifest in KNATIVE_MANIFESTS.glob("*.yaml"):
        text = re.sub(r'(?P<key>(?:image|queue-sidecar-image): "?)(?P<image>[\w.-]+/[\w./-]+:[\w.-]+)(?P<quote>"?)$',
                      pin, manifest.read_text(), flags=re.MULTILINE)
        (directory / manifest.name).write_text(text)
    return directory
