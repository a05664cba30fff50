"""How results were produced: the code's git state and what changed between settings."""

import subprocess

from crossmodal.provenance import git_state, settings_changes


def test_settings_changes_lists_changed_added_and_dropped_leaves_in_order():
    old = {"train": {"max_steps": 1400, "seed": 0}, "name": "a", "gone": [1, 2]}
    new = {"name": "a", "train": {"max_steps": 2600, "seed": 0, "amp": "bf16"}}
    assert settings_changes(old, new) == [
        "train.max_steps 1400 (now 2600)", "train.amp unset (now bf16)",
        "gone [1, 2] (now unset)"]
    assert settings_changes(new, new) == []
    # None is a value, not the absence of one
    assert settings_changes({"a": None}, {}) == ["a None (now unset)"]
    assert settings_changes({"c": {"size": 64}}, {"c": {"size": 32}},
                            {"c.size": "--size"}) == ["--size 64 (now 32)"]


def test_git_state_names_this_repository_head():
    state = git_state()
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=__file__.rpartition("/")[0])
    if head.returncode:  # an installed copy without git: unknown, never a failure
        assert str(state) == "unknown"
    else:
        assert state.commit == head.stdout.strip()
        assert str(state) in (state.commit, f"{state.commit} dirty")
