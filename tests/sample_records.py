"""Small training records built from the shipped sample data, shared by the tests that train."""

from script import formats
from script.data_io import atomic_write_jsonl, iter_jsonl
from script.training_config import SAMPLE_DATA_DIR


def asan_type1_records() -> list[dict]:
    """Type-1 records rendered from the sample Asan-AMC-Healthinfo rows (instruction/input/output)."""
    source = next((SAMPLE_DATA_DIR / "ChuGyouk" / "Asan-AMC-Healthinfo").rglob("*.jsonl"))
    records = []
    for line, row in iter_jsonl(source):
        user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        records.append({"id": f"asan-{line}", "source": "asan", "type": formats.TYPE1_TEXT,
                        "messages": formats.type_messages(formats.TYPE1_TEXT, user, row["output"])})
    return records


def write_type1_data(data_dir) -> None:
    """train.jsonl (64 records) and validation.jsonl (8) of type 1 in ``data_dir``."""
    records = asan_type1_records()
    atomic_write_jsonl(data_dir / "train.jsonl", records[:64])
    atomic_write_jsonl(data_dir / "validation.jsonl", records[64:72])


def tiny_run(tmp_path, *flags, stage: str = "test", model: str = "tiny"):
    """A RunConfig for a tiny model writing under ``tmp_path/out`` (extra trainer flags appended)."""
    from script.training_utils import build_arg_parser, start_run

    args = build_arg_parser(None).parse_args(["--model", model, "--output", str(tmp_path / "out"), *flags])
    return start_run(args, stage=stage, script="test")
