"""The composed config printed as a tree and saved in the run dir."""

from __future__ import annotations

from hydra import compose, initialize_config_dir

from lens_train.cli import config_dir
from lens_train.experiments.config_tree import config_tree, write_config_tree


def test_tree_of_the_default_config_resolves_values_and_orders_groups(tmp_path) -> None:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path}"])
    lines = config_tree(cfg).splitlines()
    assert lines[0] == "CONFIG"
    tops = [line[4:] for line in lines if line[:4] in ("├── ", "└── ")]
    assert tops[:7] == ["data", "model", "lens", "callbacks", "logger", "trainer", "paths"]
    assert "│   ├── num_classes: 10" in lines  # ${data.num_classes} resolved
    assert "├── tags: [digits]" in lines
    path = write_config_tree(cfg, tmp_path, echo=False)
    assert path.read_text().splitlines() == lines
