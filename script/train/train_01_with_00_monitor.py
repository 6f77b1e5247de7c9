"""Step 2/4: dictionary training (train_01_medical_dict) while watching plain-text perplexity.

The same dictionary training as train_01_medical_dict.py (same data, format, steering-set
evaluation and output dir), plus a forgetting monitor: at the start and every --monitor-every
steps (default --show-samples-every), the perplexity of --monitor-samples held-out plain texts
(seeded; drawn from --monitor-data like train_00's held-out slice, so never trained on with the
same seed) goes to TensorBoard and training_info.json `plain_text_history`. A value more than
--forgetting-threshold above the starting one is warned about and flagged in the history.

    python -m script.train.train_01_with_00_monitor --model tiny --base-model model/00_trained/tiny/final
    python script/train/train_01_with_00_monitor.py --model medgemma-4b \\
        --base-model model/00_trained/medgemma-4b/final --epochs 3 --monitor-every 100

Output: model/01_trained/<MODEL>/{checkpoint-N/, final/, training_info.json, README.md}
"""

from __future__ import annotations

from script.cli import run_main
from script.train import train_01_medical_dict


def main(argv: list[str] | None = None) -> dict:
    return train_01_medical_dict.main(argv, monitor=True, script="train_01_with_00_monitor", description=__doc__)


if __name__ == "__main__":
    run_main(main)
