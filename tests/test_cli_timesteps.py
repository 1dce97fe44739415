"""`--timesteps` means one thing in every command: N = N evenly spaced timesteps, T1,T2,... = exactly those."""

import pytest

from conftest import run_main
from diffdisc.errors import DiffdiscError
from diffdisc.scoring.schedule import dc_grid, parse_timesteps, timestep_count


def test_count_is_the_even_grid_and_a_comma_makes_a_list():
    assert parse_timesteps("20", 1000) == parse_timesteps(20, 1000) == dc_grid(1000, 20)
    assert parse_timesteps("3", 1000) == [166, 499, 832]
    assert parse_timesteps("100,200", 1000) == [100, 200] and parse_timesteps("100,", 1000) == [100]
    assert timestep_count("20", "classify") == 20
    with pytest.raises(DiffdiscError, match="give a count N"):
        timestep_count("100,200", "classify")
    for bad in ("x", "1,x", ","):
        with pytest.raises(DiffdiscError, match="bad --timesteps"):
            parse_timesteps(bad, 1000)


def test_count_only_commands_refuse_a_list_in_one_line(monkeypatch, capsys, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "classify", "--model", "no-such-model", "--data", tmp_path,
                            "--timesteps", "100,200", "--out", tmp_path / "r")  # fmt: skip
    assert code == 1 and err.startswith("error: classify --timesteps '100,200'") and err.strip().count("\n") == 0
    assert not (tmp_path / "r").exists()
