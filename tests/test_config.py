import os
import stat

import pytest

from kachery_tasks.config import Config, init_node_dir, node_dir
from kachery_tasks.errors import ConfigError


def test_created_on_first_use_with_config(node_path):
    assert not node_path.exists()
    node = node_dir()
    assert node.path == node_path
    assert (node_path / "config.toml").is_file()
    assert node.config.chunk_size == 20 * 2**20


def test_config_values_are_read(node_path):
    node_path.mkdir()
    (node_path / "config.toml").write_text('[store]\nchunk_size = "1MiB"\n')
    assert node_dir().config.chunk_size == 2**20


@pytest.mark.parametrize(
    "text", ["[store\n", '[store]\nchunk_size = "huge"\n', "[store]\nchunk_size = 10\n"]
)
def test_bad_config_is_a_config_error(text):
    with pytest.raises(ConfigError) as e:
        Config.from_toml(text, "x.toml")
    assert "x.toml" in str(e.value)


def test_node_dir_that_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("")
    with pytest.raises(ConfigError):
        init_node_dir(f)


def test_shared_init_is_setgid_group_writable(tmp_path):
    node = init_node_dir(tmp_path / "shared", shared=True)
    mode = os.stat(node.path).st_mode
    assert node.shared
    assert mode & stat.S_ISGID and mode & stat.S_IWGRP
