"""lorabook.speed.alloc: which C allocator a new process runs under."""
import os
import subprocess
import sys

import pytest

from lorabook.speed import alloc


def test_child_env_adds_and_removes_tcmalloc_keeping_other_preloads(monkeypatch):
    monkeypatch.setattr(alloc, "tcmalloc_path", lambda: "/x/libtcmalloc_minimal.so.4")
    env = {"LD_PRELOAD": "/y/libother.so", "A": "1"}
    on = alloc.child_env(env, "tcmalloc")
    assert on["LD_PRELOAD"].split() == ["/x/libtcmalloc_minimal.so.4", "/y/libother.so"]
    assert on["A"] == "1" and env["LD_PRELOAD"] == "/y/libother.so"  # copy
    off = alloc.child_env(on, "system")
    assert off["LD_PRELOAD"] == "/y/libother.so"
    assert "LD_PRELOAD" not in alloc.child_env({"LD_PRELOAD": "/x/libtcmalloc.so.4"},
                                               "system")
    with pytest.raises(ValueError, match="allocator"):
        alloc.child_env(env, "jemalloc")


def test_unavailable_tcmalloc_leaves_the_system_allocator(monkeypatch):
    monkeypatch.setattr(alloc, "tcmalloc_path", lambda: None)
    assert "LD_PRELOAD" not in alloc.child_env({}, "tcmalloc")


def test_opt_out_by_environment(monkeypatch):
    monkeypatch.setenv("LORABOOK_ALLOCATOR", "system")
    assert alloc.tcmalloc_path() is None


@pytest.mark.skipif(alloc.tcmalloc_path() is None, reason="no tcmalloc here")
def test_a_child_really_runs_under_the_chosen_allocator():
    code = "from lorabook.speed.alloc import active; print(active())"
    for name in ("tcmalloc", "system"):
        env = alloc.child_env(dict(os.environ), name)
        out = subprocess.run([sys.executable, "-c", code], env=env,
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == name


@pytest.mark.skipif(alloc.tcmalloc_path() is None, reason="no tcmalloc here")
def test_release_free_memory_uses_the_running_allocator():
    # Under tcmalloc glibc's malloc_trim would release nothing: tcmalloc's
    # own call must be the one made.
    code = ("import ctypes\n"
            "lib = ctypes.CDLL(None)\n"
            "from lorabook import model\n"
            "print(model.release_free_memory(),"
            " hasattr(lib, 'MallocExtension_ReleaseFreeMemory'))")
    env = alloc.child_env(dict(os.environ), "tcmalloc")
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
    env = alloc.child_env(dict(os.environ), "system")
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "False"      # glibc: malloc_trim
