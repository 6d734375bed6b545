"""The RTL top as the packaged IP sees it, elaborated by Verilator without simulating it.

The block designs (hw/boards/build.tcl) join every AXI4 master through an AXI
SmartConnect, which connects 32- to 1024-bit buses only (PG247), so every
master must be at least 32 bits wide for every legal LANES; and parameters
outside what the RTL supports must stop elaboration with a message naming
them (generate-level `$fatal`, as taxi does) rather than build a broken IP.
"""

from __future__ import annotations

import pytest
from rtl_build import lint, port_widths, verilator_missing

from hetadam import regmap

WHY = verilator_missing()
needs_verilator = pytest.mark.skipif(WHY is not None, reason=WHY or "")
LEGAL_LANES = [1, 2, 4, 8, 16]


@needs_verilator
@pytest.mark.parametrize("lanes", LEGAL_LANES)
def test_every_axi4_master_is_32_to_1024_bits_wide(lanes: int) -> None:
    widths = port_widths({"LANES": lanes})
    for array, bundle in regmap.M_AXI_BUNDLES.items():
        bits = regmap.axi_data_bits(array, lanes)
        for port in ("RDATA", "WDATA"):
            assert widths[f"m_axi_{bundle}_{port}"] == bits, (array, port)
        assert widths[f"m_axi_{bundle}_WSTRB"] == bits // 8, array
        assert 32 <= bits <= 1024 and bits & (bits - 1) == 0, (array, bits)
        assert widths[f"m_axi_{bundle}_ARADDR"] == widths[f"m_axi_{bundle}_AWADDR"] == 64, array


def test_the_bus_width_rule_matches_the_element_sizes() -> None:
    assert regmap.axi_data_bits("g", 1) == 32, "two gradients a beat at one lane"
    assert [regmap.axi_data_bits("g", n) for n in LEGAL_LANES] == [32, 32, 64, 128, 256]
    assert [regmap.axi_data_bits("p", n) for n in LEGAL_LANES] == [32, 64, 128, 256, 512]
    assert {regmap.axi_data_bits("ex", n) for n in LEGAL_LANES} == {32}
    assert max(regmap.axi_data_bits(a, 16) for a in regmap.ELEMENT_BITS) // 8 == regmap.BASE_ALIGN


@needs_verilator
@pytest.mark.parametrize("lanes", LEGAL_LANES)
def test_legal_parameters_lint_clean(lanes: int) -> None:
    done = lint({"LANES": lanes})
    assert done.returncode == 0, done.stderr


@needs_verilator
@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"LANES": 3}, "LANES = 3; it must be 1, 2, 4, 8 or 16"),
        ({"LANES": 32}, "LANES = 32; it must be 1, 2, 4, 8 or 16"),
        ({"BURST_LOG2": 9, "RD_FIFO_LOG2": 9}, "BURST_LOG2 = 9; AXI4 bursts are 1 to 256 beats"),
        ({"BURST_LOG2": 6, "RD_FIFO_LOG2": 5}, "RD_FIFO_LOG2 = 5 is below BURST_LOG2 = 6"),
    ],
    ids=["lanes-3", "lanes-32", "burst-512", "fifo-below-burst"],
)
def test_an_illegal_parameter_stops_elaboration_with_its_name(parameters: dict[str, int], message: str) -> None:
    done = lint(parameters)
    assert done.returncode != 0
    assert f"Error: {message}" in done.stderr, done.stderr


@needs_verilator
@pytest.mark.parametrize(("top", "data_w"), [("adam_axi_rd", 16), ("adam_axi_wr", 16), ("adam_axi_rd", 2048)])
def test_a_mover_refuses_a_bus_smartconnect_cannot_take(top: str, data_w: int) -> None:
    done = lint({"DATA_W": data_w}, top=top)
    assert done.returncode != 0
    assert f"Error: DATA_W = {data_w}; AXI SmartConnect takes 32 to 1024-bit buses" in done.stderr, done.stderr
