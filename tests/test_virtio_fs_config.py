"""vfscluster.virtio.fs_config: the virtio-fs config space and its tag rule, on both sides."""

from __future__ import annotations

import errno
import struct

import pytest

from vfscluster.guest.device import DeviceConfig
from vfscluster.host.device import FsBackendDevice
from vfscluster.virtio.fs_config import CONFIG_SIZE, NOTIFY_CONFIG_SIZE, TAG_MAX, check_tag, config_space

BAD_TAGS = ["", "x" * 37, "é" * 19, "a\nb", "a\0b", "\udcff", None, b"bytes"]


@pytest.mark.parametrize("tag", ["a", "x" * 36, "é" * 18, "my share", "😀"])
def test_good_tags(tag):
    assert check_tag(tag) == tag.encode()


@pytest.mark.parametrize("tag", BAD_TAGS)
def test_bad_tags_are_einval(tag):
    with pytest.raises(OSError) as ei:
        check_tag(tag)
    assert ei.value.errno == errno.EINVAL


@pytest.mark.parametrize("tag", BAD_TAGS)
def test_neither_side_takes_a_bad_tag(tag):
    """The guest's device config and the host's device refuse the same tags (a host would
    otherwise advertise one no guest accepts, or cut a UTF-8 character in two)."""
    with pytest.raises(OSError):
        DeviceConfig(tag)
    if tag is not None:
        with pytest.raises(OSError):
            FsBackendDevice("g", tag=tag)


def test_layout():
    assert (TAG_MAX, CONFIG_SIZE, NOTIFY_CONFIG_SIZE) == (36, 40, 44)
    space = config_space(b"fs", 3)
    assert len(space) == CONFIG_SIZE and space[:3] == b"fs\0" and struct.unpack_from("<I", space, 36) == (3,)
    assert config_space(b"fs", 3, 48)[40:] == struct.pack("<I", 48)
    host = FsBackendDevice("g", tag="fs", num_request_queues=3, notifications=True)
    assert host.config_space() == DeviceConfig("fs", num_request_queues=3).config_space() + host.config_space()[40:]
    assert FsBackendDevice("g", tag=None, notifications=False).config_space()[:TAG_MAX] == bytes(TAG_MAX)
