import hashlib
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Tests that use what this machine has only once (the Docker engine and its registry, the engine lane's control
# plane, the browser) run one after another on one pytest-xdist worker; the mocks tests spread over the others.
MACHINE_MARKERS = ("docker", "browser")
ENGINE_LANE = Path(__file__).resolve().parent / "engine"


# As each test is collected: pytest-xdist's `pytest_collection_modifyitems` turns the groups into the test ids it
# schedules by, so a group added in that hook after it (as a `trylast` hook did) grouped nothing, and two lane tests
# ran at once on two workers. The lane's tests are known by their directory, since tests/engine/conftest.py marks
# them `engine` only later.
def pytest_itemcollected(item):
    in_lane = Path(str(item.fspath)).is_relative_to(ENGINE_LANE)
    if in_lane or any(item.get_closest_marker(marker) for marker in MACHINE_MARKERS):
        item.add_marker(pytest.mark.xdist_group("this-machine"))


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
