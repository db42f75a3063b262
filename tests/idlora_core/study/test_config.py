"""Study folders read back through the bounded YAML loader."""

import pytest

from idlora_core.config import ConfigError


def test_a_study_folder_with_a_hostile_study_file_is_one_config_error(tmp_path):
    from idlora_core.study.storage import META_FILE, STUDY_FILE, read_study_folder

    (tmp_path / META_FILE).write_text("{}")
    (tmp_path / STUDY_FILE).write_text("base: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="python"):
        read_study_folder(tmp_path)
