"""The memory the fit's check counts on is the process's own: its address-space limit
(RLIMIT_AS) and its cgroup's limit, not only the machine's free memory (issue #27)."""

import resource

import pytest

from cxr_estimators import _validation


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_cgroup_room_reads_limit_less_working_set(tmp_path, version):
    proc = tmp_path / "cgroup"
    if version == "v2":
        _write(proc, "0::/ci/job\n")
        folder = tmp_path / "sys/ci/job"
        _write(folder / "memory.max", f"{12 << 30}\n")
        _write(folder / "memory.current", f"{5 << 30}\n")
    else:
        _write(proc, "5:cpu:/\n4:memory:/ci/job\n")
        folder = tmp_path / "sys/memory/ci/job"
        _write(folder / "memory.limit_in_bytes", f"{12 << 30}\n")
        _write(folder / "memory.usage_in_bytes", f"{5 << 30}\n")
    _write(folder / "memory.stat", f"anon 1\ninactive_file {1 << 30}\n")
    room = _validation._cgroup_room(str(proc), str(tmp_path / "sys"))
    assert room == (12 - 5 + 1) << 30  # page cache the kernel can drop is room


def test_cgroup_without_limit_is_none(tmp_path):
    _write(tmp_path / "cgroup", "0::/\n")
    _write(tmp_path / "sys/memory.max", "max\n")
    assert _validation._cgroup_room(str(tmp_path / "cgroup"), str(tmp_path / "sys")) is None


def test_available_memory_respects_rlimit_as():
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    size = _validation._proc_status_bytes("VmSize")
    if size is None:
        pytest.skip("no /proc/self/status here")
    cap = size + (1 << 30)
    if hard != resource.RLIM_INFINITY and hard < cap:
        pytest.skip("the hard limit is lower than the test's")
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        assert _validation.available_memory() <= 1 << 30
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
