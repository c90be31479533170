"""The machine description every speed and wall-time figure is reported with."""

from __future__ import annotations

from dissect_monai.utils import cpu_has_amx, machine_state


def test_machine_state_reports_amx_from_the_cpu_flags():
    state = machine_state()
    with open("/proc/cpuinfo") as f:
        assert state["amx"] is cpu_has_amx() is ("amx_bf16" in f.read().split())
    assert len(state["load_average"]) == 3 and state["cpu_count"] >= 1 and state["cpu"]
