"""Test setup: offline, writes into a per-session home, tiny models built once per session.

MEDGEMMA_KOREAN_HOME is set before any project module is imported, so data/, model/ and logs/
of every script under test land in a temp dir, never in the checkout.
"""

import os
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("MEDGEMMA_KOREAN_HOME", tempfile.mkdtemp(prefix="medgemma-korean-test-"))
os.environ.pop("MODEL", None)  # `make test MODEL=...` must not change what the tests train

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    """Build tiny and tiny-mm into the test home (a few seconds) and return their dirs."""
    from script.embedded import make_tiny_model
    from script.training_config import SAMPLE_DATA_DIR, TINY_MM_MODEL_DIR, TINY_MODEL_DIR

    make_tiny_model.build(TINY_MODEL_DIR, TINY_MM_MODEL_DIR, SAMPLE_DATA_DIR)
    return {"tiny": TINY_MODEL_DIR, "tiny-mm": TINY_MM_MODEL_DIR}


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_models):
    from script.model_loading import load_tokenizer

    return load_tokenizer(str(tiny_models["tiny"]))
