import json
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_tasks.config import Config, init_node_dir, node_dir
from kachery_tasks.errors import ConfigError
from kachery_tasks.sizes import MAX_SIZE


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


@pytest.mark.parametrize(
    "text,complaint",
    [
        ('[store]\nchunk_size = "1e400GiB"\n', "store.chunk_size: not a size"),
        ('[store]\nchunk_size = "' + "9" * 400 + '"\n', "store.chunk_size: size"),
        ("[store]\nchunk_size = " + "9" * 400 + "\n", "store.chunk_size: size"),
        ("[store]\nchunk_size = " + "9" * 5000 + "\n", "not valid TOML"),
        ("[store]\nchunk_size = 1e400\n", "store.chunk_size: not a size"),
        ("[store]\nchunk_size = [1]\n", "store.chunk_size: not a size"),
        ("[ui]\nprogress_threshold = true\n", "ui.progress_threshold: not a size"),
        ('[ui]\nprogress_threshold = "' + "9" * 400 + 'MB"\n', "too large"),
        ("store = 5\n", "store must be a table"),
        ('ui = "big"\n', "ui must be a table"),
        ("bucket = [1, 2]\n", "bucket must be a table"),
        ("[[store]]\nchunk_size = 1\n", "store must be a table"),
    ],
)
def test_every_section_and_size_is_validated(text, complaint):
    with pytest.raises(ConfigError, match=r"^x\.toml") as e:
        Config.from_toml(text, "x.toml")
    assert complaint in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_sections_are_left_alone():
    config = Config.from_toml('broker = 5\n[store]\nchunk_size = "1MiB"\n')
    assert config.chunk_size == 2**20 and config.raw["broker"] == 5


def test_config_that_is_not_utf8(node_path):
    node_path.mkdir()
    (node_path / "config.toml").write_bytes(b'[store]\nchunk_size = "1MiB" # caf\xe9\n')
    with pytest.raises(ConfigError, match="not UTF-8 text") as e:
        node_dir()
    assert str(node_path / "config.toml") in str(e.value)


_TOML_VALUES = st.one_of(
    st.integers().map(str),
    st.integers(min_value=-(10**500), max_value=10**500).map(str),
    st.floats().map(lambda f: "nan" if f != f else ("inf" if f == float("inf") else (
        "-inf" if f == float("-inf") else repr(f)))),
    st.booleans().map(lambda b: str(b).lower()),
    st.text(max_size=30).map(json.dumps),
    st.from_regex(r"\A[0-9]{1,450}(\.[0-9]*)?\s?(b|kb|MiB|GiB|EiB|tb|x)?\Z").map(json.dumps),
    st.just("[1, 2]"),
    st.just("{a = 1}"),
)
_TOML_DOCS = st.lists(
    st.tuples(
        st.sampled_from(["store", "ui", "bucket", "other"]),
        st.sampled_from(["chunk_size", "progress_threshold", "url", "transfer_threads", "x"]),
        _TOML_VALUES,
    ),
    max_size=6,
).map(lambda items: "".join(f"{s}.{k} = {v}\n" for s, k, v in items))


@settings(max_examples=300)
@given(st.one_of(_TOML_DOCS, st.text(max_size=200), st.sampled_from(["store = 5", "[[ui]]"])))
def test_any_config_text_is_a_config_or_a_config_error(text):
    try:
        config = Config.from_toml(text, "x.toml")
    except ConfigError as e:
        assert str(e).startswith("x.toml") and "\n" not in str(e).strip()
    else:
        assert 1024 <= config.chunk_size <= MAX_SIZE
        assert 0 <= config.progress_threshold <= MAX_SIZE
        assert 1 <= config.transfer_threads <= 256
        assert config.bucket_url is None or isinstance(config.bucket_url, str)


def test_node_dir_whose_name_is_too_long(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot use .* as a node directory: File name too long"):
        init_node_dir(tmp_path / ("n" * 300))
